"""A workspace no failed, concurrent or damaged command can mislead."""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from chddl_cli.app import app
from stages.artifacts import Workspace
from stages.config import build, list_presets, load_preset
from stages.data.ingest import DatasetConfig, ingest, source_fingerprint
from stages.errors import ChddlError
from tests.conftest import make_npz, make_tree

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[1]


def invoke(*args: str):
    return runner.invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def labelled(tmp_path) -> str:
    ws = str(tmp_path / "ws")
    npz = make_npz(tmp_path / "d.npz", n=60)
    assert invoke("-w", ws, "label", str(npz), "--size", "16", "-D", "2").exit_code == 0
    return ws


CONDENSE = ("condense", "--ipc", "1", "--iterations", "1", "--batch-real", "8", "--compile", "off")


# -- the index is a cache ------------------------------------------------------------
@pytest.mark.parametrize(
    "content",
    [
        "garbage: [",
        "- a list\n- not a mapping\n",
        "dataset: 3\n",
        "::: not yaml {{\n",  # parses, as {"::": "not yaml {{"}: a stage nobody knows
        "labels: labels-gone-000000000000\n",  # an artifact that does not exist
        None,
    ],
)
def test_a_damaged_or_missing_index_is_rebuilt_and_the_stage_runs(labelled, content, caplog) -> None:
    index = Path(labelled) / "latest.yaml"
    before = yaml.safe_load(index.read_text())
    if content is None:
        index.unlink()
    else:
        index.write_text(content)
    with caplog.at_level(logging.INFO, logger="chddl"):
        result = invoke("-w", labelled, *CONDENSE)
    assert result.exit_code == 0, result.output
    assert "rebuilt it from the artifacts" in caplog.text
    after = yaml.safe_load(index.read_text())
    assert after["labels"] == before["labels"] and after["dataset"] == before["dataset"]
    assert after["condensed"].startswith("condensed-")


def test_an_index_naming_a_deleted_artifact_falls_back_to_the_newest_valid_one(labelled, caplog) -> None:
    ws = Workspace(labelled)
    labels = ws.latest("labels")
    (Path(labelled) / "latest.yaml").write_text(yaml.safe_dump({"labels": "labels-gone-000000000000"}))
    with caplog.at_level(logging.INFO, logger="chddl"):
        assert ws.latest("labels").name == labels.name
    assert "was damaged; rebuilt it" in caplog.text


def test_a_stage_missing_from_the_index_falls_back_to_its_newest_valid_artifact(labelled) -> None:
    ws = Workspace(labelled)
    labels = ws.latest("labels")
    (Path(labelled) / "latest.yaml").write_text(yaml.safe_dump({"dataset": ws.latest("dataset").name}))
    assert ws.latest("labels").name == labels.name


def test_a_damaged_latest_set_stops_evaluate_in_one_line_instead_of_using_an_older_one(labelled) -> None:
    assert invoke("-w", labelled, *CONDENSE).exit_code == 0
    assert invoke("-w", labelled, *CONDENSE[:3], "--iterations", "2", *CONDENSE[5:]).exit_code == 0
    latest = Path(labelled) / "artifacts" / yaml.safe_load((Path(labelled) / "latest.yaml").read_text())["condensed"]
    tensors = latest / "tensors.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-64] + bytes(64))
    before = _snapshot(labelled)
    result = invoke("-w", labelled, "evaluate", "--runs", "1", "--epochs", "1")
    assert result.exit_code == 1 and result.output.count("\n") == 1, result.output
    assert result.output.startswith("error: ") and latest.name in result.output and "damaged" in result.output
    assert _snapshot(labelled) == before


def test_a_new_workspace_reads_an_empty_index_without_a_note(tmp_path, caplog) -> None:
    with caplog.at_level(logging.DEBUG, logger="chddl"):
        assert Workspace(tmp_path / "new").latest("labels") is None
    assert caplog.text == ""


# -- refusals change nothing -----------------------------------------------------------
def _snapshot(ws: str) -> tuple[str, list[str]]:
    return (Path(ws) / "latest.yaml").read_text(), sorted(p.name for p in (Path(ws) / "artifacts").iterdir())


@pytest.fixture
def other_dataset(tmp_path) -> str:
    """A dataset artifact (with labels) of another dataset, in its own workspace."""
    ws = str(tmp_path / "other")
    npz = make_npz(tmp_path / "o.npz", n=45, size=8)
    assert invoke("-w", ws, "label", str(npz), "--size", "8", "-D", "2").exit_code == 0
    return ws


def _only(ws: str, prefix: str) -> str:
    (path,) = (Path(ws) / "artifacts").glob(f"{prefix}-*")
    return str(path)


@pytest.mark.parametrize("command", ["label", "condense", "evaluate", "pretrain-experts"])
def test_a_refused_command_leaves_the_index_and_artifacts_as_they_were(labelled, other_dataset, command) -> None:
    assert invoke("-w", labelled, *CONDENSE).exit_code == 0
    before = _snapshot(labelled)
    other_data, other_labels = _only(other_dataset, "dataset"), _only(other_dataset, "labels")
    args = {
        "label": ["label", other_data, "-D", "1000"],  # too many domains, found after ingesting
        "condense": [*CONDENSE, "--labels", other_labels, "--dataset", _only(labelled, "dataset")],
        "evaluate": ["evaluate", "--dataset", other_data, "--runs", "1", "--epochs", "1"],
        "pretrain-experts": [
            "pretrain-experts",
            "--dataset",
            _only(labelled, "dataset"),
            "--labels",
            other_labels,
            "--num-experts",
            "1",
            "--epochs",
            "1",
        ],
    }[command]
    result = invoke("-w", labelled, *args)
    assert result.exit_code == 1, result.output
    latest, names = _snapshot(labelled)
    assert latest == before[0]
    assert set(before[1]) <= set(names)  # an input named explicitly may be adopted; nothing is lost or re-pointed


def test_an_explicitly_named_input_becomes_latest_when_the_command_succeeds(labelled, tmp_path) -> None:
    first = _only(labelled, "labels")
    assert invoke("-w", labelled, "label", _only(labelled, "dataset"), "-D", "3").exit_code == 0
    assert yaml.safe_load((Path(labelled) / "latest.yaml").read_text())["labels"] != Path(first).name
    assert invoke("-w", labelled, *CONDENSE, "--labels", first).exit_code == 0
    assert yaml.safe_load((Path(labelled) / "latest.yaml").read_text())["labels"] == Path(first).name


# -- locks ---------------------------------------------------------------------------------
def test_without_waiting_a_locked_artifact_names_the_process_holding_it(tmp_path) -> None:
    ws = Workspace(tmp_path / "ws", wait=False)
    with Workspace(tmp_path / "ws").lock("condensed-x-000000000000"):
        with pytest.raises(ChddlError, match=rf"being computed by process {os.getpid()}"):
            with ws.lock("condensed-x-000000000000"):
                pass
    with ws.lock("condensed-x-000000000000"):  # released: free again
        pass


def _chddl(ws: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "chddl_cli", "-w", ws, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=ROOT,
        env=os.environ | {"OMP_NUM_THREADS": "1"},
    )


def test_two_identical_condense_runs_do_the_work_once(labelled) -> None:
    args = ("condense", "--ipc", "1", "--iterations", "300", "--batch-real", "8", "--compile", "off", "--seed", "7")
    first = _chddl(labelled, *args)
    locks = Path(labelled) / "locks"
    deadline = time.monotonic() + 60
    while not (locks.is_dir() and any(p.read_text().strip() for p in locks.glob("condensed-*.lock"))):
        assert time.monotonic() < deadline and first.poll() is None, "the first run never took its lock"
        time.sleep(0.05)
    second = _chddl(labelled, *args)
    out1, out2 = first.communicate(timeout=300)[0], second.communicate(timeout=300)[0]
    assert first.returncode == 0 and second.returncode == 0, out1 + out2
    assert "done" in out1 and "waiting for it" in out2 and "cached - skipping" in out2
    assert len(list((Path(labelled) / "artifacts").glob("condensed-*"))) == 1


def test_no_wait_on_a_running_computation_is_a_one_line_error(labelled) -> None:
    args = ("condense", "--ipc", "1", "--iterations", "300", "--batch-real", "8", "--compile", "off", "--seed", "8")
    first = _chddl(labelled, *args)
    locks = Path(labelled) / "locks"
    deadline = time.monotonic() + 60
    while not (locks.is_dir() and any(p.read_text().strip() for p in locks.glob("condensed-*.lock"))):
        assert time.monotonic() < deadline and first.poll() is None
        time.sleep(0.05)
    second = subprocess.run(
        [sys.executable, "-m", "chddl_cli", "-w", labelled, "--no-wait", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    first.communicate(timeout=300)
    assert second.returncode == 1
    assert re.fullmatch(rf"error: condensed-\S+ is being computed by process {first.pid}; .*\n", second.stderr)


# -- content-keyed folders ---------------------------------------------------------------------
def test_a_byte_identical_folder_tree_is_the_same_dataset(tmp_path) -> None:
    tree = make_tree(tmp_path / "a", ["d0", "d1"], ["c0", "c1"], per=2)
    copy = tmp_path / "b"
    shutil.copytree(tree, copy)  # new modification times
    for f in copy.rglob("*.png"):
        os.utime(f, ns=(1, 1))
    assert source_fingerprint("folder", tree) == source_fingerprint("folder", copy)
    victim = next(copy.rglob("*.png"))
    victim.write_bytes(victim.read_bytes()[:-1] + b"\x00")
    assert source_fingerprint("folder", tree) != source_fingerprint("folder", copy)


def test_folder_hashes_are_reused_while_size_and_mtime_hold(tmp_path, monkeypatch) -> None:
    from stages.data import ingest as ingest_module

    tree = make_tree(tmp_path / "a", None, ["c0", "c1"], per=3)
    cache = tmp_path / "digests.json"
    first = source_fingerprint("folder", tree, cache)
    hashed = []
    real = ingest_module.file_digest
    monkeypatch.setattr(ingest_module, "file_digest", lambda p: hashed.append(str(p)) or real(p))
    assert source_fingerprint("folder", tree, cache) == first and hashed == []
    touched = next(tree.rglob("*.png"))
    os.utime(touched, ns=(5, 5))
    assert source_fingerprint("folder", tree, cache) == first and hashed == [str(touched)]


# -- read-only workspaces ------------------------------------------------------------------------
def _read_only(monkeypatch) -> None:
    def refuse(*_a, **_k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(
        Workspace,
        "ensure_writable",
        lambda self: (_ for _ in ()).throw(self.unwritable_error(OSError(errno.EROFS, "Read-only file system"))),
    )
    monkeypatch.setattr(Workspace, "_write_index", refuse)


def test_a_read_only_workspace_serves_cache_hits_and_reports_elsewhere(labelled, tmp_path, monkeypatch) -> None:
    assert invoke("-w", labelled, *CONDENSE).exit_code == 0
    before = _snapshot(labelled)
    _read_only(monkeypatch)
    again = invoke("-w", labelled, *CONDENSE)
    assert again.exit_code == 0 and "cached - skipping" in again.output
    report = invoke("-w", labelled, "report", "--out", str(tmp_path / "elsewhere"))
    assert report.exit_code == 0, report.output
    assert (tmp_path / "elsewhere" / "report.html").is_file()
    new = invoke("-w", labelled, *CONDENSE, "--seed", "5")
    assert new.exit_code == 1 and "is not writable (Read-only file system)" in new.output
    assert _snapshot(labelled) == before


@pytest.mark.parametrize(
    "command", [["label", "builtin:demo"], ["condense"], ["evaluate"], ["pretrain-experts"], ["report"]]
)
def test_a_workdir_that_cannot_be_created_gives_the_same_error_everywhere(tmp_path, command) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["-w", str(blocker / "ws"), *command])
    assert result.exit_code == 1
    assert f"workspace {blocker / 'ws'} is not writable" in result.output
    assert blocker.read_text() == "not a folder"


# -- report, npz, presets --------------------------------------------------------------------------
def test_the_report_lists_damaged_artifacts_with_the_fix(labelled, caplog) -> None:
    (Path(_only(labelled, "labels")) / "tensors.safetensors").write_bytes(b"truncated")
    with caplog.at_level(logging.INFO, logger="chddl"):
        result = invoke("-w", labelled, "report")
    assert result.exit_code == 0, result.output
    assert "skips 1 damaged artifact" in caplog.text
    md = (Path(labelled) / "report" / "report.md").read_text()
    assert "Skipped artifacts" in md and "labels-fft" in md and "`chddl label ... --force`" in md


def test_float_npz_images_in_the_unit_range_are_scaled(tmp_path, workspace) -> None:
    images = np.random.default_rng(0).random((30, 8, 8, 3)).astype(np.float32)
    art, _ = ingest(
        str(make_npz(tmp_path / "f.npz", n=30, size=8, images=images)), build(DatasetConfig, {"size": 8}), workspace
    )
    assert np.array_equal(art.tensor("images").permute(0, 2, 3, 1).numpy(), np.round(images * 255).astype(np.uint8))


def test_float_npz_images_outside_the_unit_range_are_refused(tmp_path, workspace) -> None:
    images = np.full((30, 8, 8, 3), 200.0)
    with pytest.raises(
        ChddlError, match=r"uint8 in \[0, 255\] or floats in \[0, 1\], got float64 values in \[200, 200\]"
    ):
        ingest(
            str(make_npz(tmp_path / "f.npz", n=30, size=8, images=images)), build(DatasetConfig, {"size": 8}), workspace
        )


def test_a_text_file_named_npz_gets_our_message(tmp_path, workspace) -> None:
    fake = tmp_path / "fake.npz"
    fake.write_text("images,labels\n")
    with pytest.raises(ChddlError, match="is not an .npz archive") as info:
        ingest(str(fake), build(DatasetConfig), workspace)
    assert "allow_pickle" not in str(info.value)


def test_a_bare_preset_name_resolves_in_the_commands_own_folder() -> None:
    assert "condense" in load_preset("demo", "condense") and "evaluate" in load_preset("demo", "evaluate")
    with pytest.raises(ChddlError, match="no config file or preset 'demo'"):
        load_preset("demo")  # ambiguous without a folder


def test_an_unknown_preset_lists_only_the_commands_own_presets() -> None:
    with pytest.raises(
        ChddlError, match="no config file or preset 'dmm'; condense presets: datm_cifar10_ipc1, .*, dc, demo, dm,"
    ) as info:
        load_preset("dmm", "condense")
    assert "datasets/" not in str(info.value) and "evaluate" not in str(info.value)


def test_a_missing_config_file_is_named_as_a_file() -> None:
    with pytest.raises(ChddlError, match="config file mine.yaml does not exist"):
        load_preset("mine.yaml", "condense")


def test_every_preset_named_in_help_or_the_readme_exists() -> None:
    presets = set(list_presets()) | {p.split("/")[-1] for p in list_presets()}
    texts = [(ROOT / "README.md").read_text()]
    for command in ("label", "condense", "evaluate", "pretrain-experts"):
        texts.append(runner.invoke(app, [command, "--help"], terminal_width=300).output)
    named = {m for t in texts for m in re.findall(r"(?:--config|-c)[ =]([a-z0-9_/]+)", t)}  # not NAME|PATH
    named |= {m for t in texts for m in re.findall(r"e\.g\. ([a-z0-9_]+)(?: or ([a-z0-9_]+))?", t) for m in m if m}
    assert named and not named - presets, named - presets


def test_force_clears_only_the_checkpoints_of_the_artifact_it_recomputes(tmp_path) -> None:
    from stages.artifacts import Workspace
    from stages.executor import stage_run

    ws = Workspace(tmp_path / "ws")
    ws.ensure_writable()
    mine, other = ws.partial_dir("x-abc"), ws.partial_dir("x-def")
    for folder in (mine, other):
        folder.mkdir(parents=True)
        (folder / "checkpoint.safetensors").write_bytes(b"kept")
    (tmp_path / "ws" / "notes.txt").write_text("the user's")
    with stage_run(ws, "x", "x-abc", "abc", 1, force=True) as run:
        assert run.hit is None and not mine.exists()
    assert (other / "checkpoint.safetensors").read_bytes() == b"kept"
    assert (tmp_path / "ws" / "notes.txt").read_text() == "the user's"


def test_a_malformed_allocator_setting_is_refused_in_one_line_before_anything_runs(tmp_path, monkeypatch) -> None:
    import stages.allocator

    monkeypatch.setattr(stages.allocator, "_done", False)
    monkeypatch.setenv("CHDDL_MMAP_THRESHOLD_MB", "lots")
    result = CliRunner().invoke(app, ["-w", str(tmp_path / "ws"), "report"])
    assert result.exit_code == 2
    assert "error: CHDDL_MMAP_THRESHOLD_MB must be a whole number of megabytes" in result.output
    assert not (tmp_path / "ws").exists()
