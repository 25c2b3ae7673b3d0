"""chddl export: image folders, npz and DD-Ranking's files, read back and compared with the artifact."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from chddl_cli.app import app
from stages import export
from stages.condense import CondenseConfig
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.pretrain_experts import ExpertsConfig
from stages.pretrain_experts import run as experts_run
from tests.conftest import make_npz

runner = CliRunner()


@pytest.fixture
def sets(tmp_path, workspace):
    ds = load_dataset(
        ingest(str(make_npz(tmp_path / "d.npz", n=60, size=8)), build(DatasetConfig, {"size": 8}), workspace)[0]
    )
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    dm, _ = condense_run(
        ds, labels, build(CondenseConfig, {"ipc": 2, "iterations": 2, "batch_real": 8, "compile": "off"}), workspace
    )
    experts = experts_run(
        ds, labels, build(ExpertsConfig, {"num_experts": 1, "epochs": 3, "batch_size": 32}), workspace
    )[0]
    mtt, _ = condense_run(
        ds,
        labels,
        build(
            CondenseConfig,
            {
                "base": "mtt",
                "ipc": 1,
                "iterations": 2,
                "syn_steps": 2,
                "expert_epochs": 1,
                "max_start_epoch": 2,
                "lr_img": 100.0,
                "batch_real": 8,
            },
        ),
        workspace,
        experts=experts,
    )
    return ds, dm, mtt


def _expected_pixels(art) -> np.ndarray:
    x = art.tensor("images") * art.tensor("std").view(1, 3, 1, 1) + art.tensor("mean").view(1, 3, 1, 1)
    return (x.clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def test_an_image_folder_holds_each_image_in_its_class_folder(sets, tmp_path) -> None:
    ds, dm, _ = sets
    out = export.run(dm, tmp_path / "folder", "imagefolder", ds)
    expected = _expected_pixels(dm)
    for i, label in enumerate(dm.tensor("labels").tolist()):
        name = ds.class_names[label]
        k = dm.tensor("labels")[:i].tolist().count(label)
        png = np.asarray(Image.open(out / name / f"{name}_{k}.png"))
        assert png.shape == (8, 8, 3) and np.array_equal(png, expected[i])
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(ds.class_names)


def test_an_npz_holds_pixels_labels_names_and_the_normalised_tensors(sets, tmp_path) -> None:
    ds, dm, _ = sets
    data = np.load(export.run(dm, tmp_path / "npz", "npz", ds) / "condensed.npz")
    assert np.array_equal(data["images"], _expected_pixels(dm))
    assert np.array_equal(data["labels"], dm.tensor("labels").numpy()) and list(data["class_names"]) == ds.class_names
    assert np.array_equal(data["normalized"], dm.tensor("images").numpy())
    assert np.allclose(data["mean"], ds.mean) and not bool(data["zca"])


def test_the_ddranking_layout_carries_mtts_learned_lr(sets, tmp_path) -> None:
    ds, dm, mtt = sets
    out = export.run(mtt, tmp_path / "ddr", "ddranking", ds)
    assert torch.equal(torch.load(out / "images.pt"), mtt.tensor("images").float())
    assert torch.equal(torch.load(out / "labels.pt"), mtt.tensor("labels"))
    assert float(torch.load(out / "lr.pt")) == pytest.approx(mtt.info["eval_lr"])
    assert not (export.run(dm, tmp_path / "ddr_dm", "ddranking", ds) / "lr.pt").exists()


@pytest.mark.parametrize("problem", ["format", "not-empty", "not-condensed"])
def test_bad_exports_fail_in_one_line_and_change_nothing(sets, workspace, tmp_path, problem) -> None:
    ds, dm, _ = sets
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    args = {
        "format": [str(dm.path), "--format", "tiff", "--out", str(tmp_path / "new")],
        "not-empty": [str(dm.path), "--out", str(target)],
        "not-condensed": [str(ds.artifact.path), "--out", str(tmp_path / "new")],
    }[problem]
    result = runner.invoke(app, ["-w", str(workspace.root), "export", *args])
    assert result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: ")
    assert (target / "keep.txt").read_text() == "mine" and list(target.iterdir()) == [target / "keep.txt"]
    assert not (tmp_path / "new").exists()


def test_force_replaces_an_earlier_export(sets, tmp_path) -> None:
    ds, dm, _ = sets
    export.run(dm, tmp_path / "out", "npz", ds)
    with pytest.raises(ChddlError, match="not empty"):
        export.run(dm, tmp_path / "out", "imagefolder", ds)
    out = export.run(dm, tmp_path / "out", "imagefolder", ds, force=True)
    assert not (out / "condensed.npz").exists() and (out / "chddl_export.yaml").is_file()


def _tree(folder) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _export_cli(workspace, *args):
    return runner.invoke(app, ["-w", str(workspace.root), "export", *args])


def _refused_in_one_line(result) -> bool:
    return result.exit_code == 1 and result.output.count("\n") == 1 and result.output.startswith("error: ")


def test_force_into_the_current_folder_is_refused_and_deletes_nothing(sets, workspace, tmp_path, monkeypatch) -> None:
    _, dm, _ = sets
    here = tmp_path / "project"
    here.mkdir()
    (here / "notes.txt").write_text("mine")
    monkeypatch.chdir(here)
    for out in (".", str(here), str(tmp_path)):
        result = _export_cli(workspace, str(dm.path), "-o", out, "--force")
        assert _refused_in_one_line(result), result.output
        assert "current folder" in result.output
    assert _tree(here) == {"notes.txt": b"mine"}


def test_force_into_the_workspace_is_refused_and_leaves_it_intact(sets, workspace, tmp_path) -> None:
    _, dm, _ = sets
    before = _tree(workspace.root)
    for out in (workspace.root, workspace.root / "artifacts", workspace.root / "new-inside"):
        result = _export_cli(workspace, str(dm.path), "-o", str(out), "--force")
        assert _refused_in_one_line(result) and "workspace" in result.output, result.output
    assert _tree(workspace.root) == before and not (workspace.root / "new-inside").exists()


def test_force_onto_a_folder_of_other_files_is_refused(sets, workspace, tmp_path) -> None:
    _, dm, _ = sets
    docs = tmp_path / "mydocs"
    (docs / "sub").mkdir(parents=True)
    (docs / "thesis.tex").write_text("chapter 1")
    (docs / "sub" / "fig.png").write_bytes(b"png")
    result = _export_cli(workspace, str(dm.path), "-o", str(docs), "--force")
    assert _refused_in_one_line(result) and "not a chddl export" in result.output
    assert _tree(docs) == {"sub/fig.png": b"png", "thesis.tex": b"chapter 1"}


def test_an_earlier_export_with_a_users_file_added_is_not_replaced(sets, tmp_path) -> None:
    ds, dm, _ = sets
    out = export.run(dm, tmp_path / "out", "imagefolder", ds)
    (out / "my_notes.txt").write_text("keep")
    with pytest.raises(ChddlError, match="not a chddl export"):
        export.run(dm, out, "npz", ds, force=True)
    assert (out / "my_notes.txt").read_text() == "keep" and not (out / "condensed.npz").exists()


def test_an_export_written_before_files_were_listed_is_still_replaceable(sets, tmp_path) -> None:
    import yaml

    ds, dm, _ = sets
    out = export.run(dm, tmp_path / "out", "imagefolder", ds)
    meta = yaml.safe_load((out / "chddl_export.yaml").read_text())
    del meta["files"]
    (out / "chddl_export.yaml").write_text(yaml.safe_dump(meta))
    assert export.is_export(out)
    assert (export.run(dm, out, "npz", ds, force=True) / "condensed.npz").is_file()


def test_a_soft_labels_file_beside_an_export_written_before_files_were_listed_is_not_replaced(sets, tmp_path) -> None:
    import yaml

    ds, dm, _ = sets
    out = export.run(dm, tmp_path / "out", "ddranking", ds)
    meta = yaml.safe_load((out / "chddl_export.yaml").read_text())
    del meta["files"]  # as written before files were listed, when no export wrote soft_labels.pt
    (out / "chddl_export.yaml").write_text(yaml.safe_dump(meta))
    (out / "soft_labels.pt").write_text("the user's own")
    with pytest.raises(ChddlError, match="not a chddl export"):
        export.run(dm, out, "ddranking", ds, force=True)
    assert (out / "soft_labels.pt").read_text() == "the user's own"


def test_a_failed_replacement_leaves_the_earlier_export_intact(sets, tmp_path, monkeypatch) -> None:
    ds, dm, _ = sets
    out = export.run(dm, tmp_path / "out", "npz", ds)
    before = _tree(out)

    def broken(*_args) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(export, "_write", broken)
    with pytest.raises(ChddlError, match="cannot write"):
        export.run(dm, out, "imagefolder", ds, force=True)
    assert _tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out")) == []
