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
