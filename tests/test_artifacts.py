"""The artifact store: round trip, keys, atomic writes, cache, validation."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
import torch
import yaml

from stages.artifacts import Workspace, artifact_key, read_artifact
from stages.errors import ChddlError
from stages.inputs import resolve


def _write(ws: Workspace, name: str = "x-abc", value: float = 1.0, **kw):
    return ws.write(
        stage="demo",
        name=name,
        key="abc",
        config={"a": 1},
        inputs={"up": "y"},
        tensors={"t": torch.full((2, 3), value), "i": torch.arange(4)},
        cost={"wall_s": 0.1},
        **kw,
    )


def test_round_trip_keeps_tensors_and_metadata(workspace) -> None:
    art = _write(workspace, info={"class_names": ["a", "b"]}, files={"grid.png": b"\x89PNG"})
    again = read_artifact(art.path, "demo")
    assert torch.equal(again.tensor("t"), torch.full((2, 3), 1.0))
    assert again.tensor("i").dtype == torch.int64
    assert again.info["class_names"] == ["a", "b"]
    assert again.config == {"a": 1} and again.meta["inputs"] == {"up": "y"}
    assert again.meta["versions"]["torch"] == str(torch.__version__)
    assert (art.path / "grid.png").read_bytes() == b"\x89PNG"


def test_a_file_given_as_tensors_is_written_as_a_safetensors_file_of_those_tensors(workspace) -> None:
    import safetensors.torch

    expanded = torch.arange(6.0).view(2, 1, 3).expand(2, 4, 3)  # a view: made whole as it is written
    art = _write(workspace, files={"extra.safetensors": {"a": expanded, "b": torch.tensor([1, 2], dtype=torch.int32)}})
    again = safetensors.torch.load_file(str(art.path / "extra.safetensors"))
    assert torch.equal(again["a"], expanded.contiguous()) and again["b"].tolist() == [1, 2]
    assert "extra.safetensors" in art.meta["files"]


def test_keys_are_stable_and_change_with_any_input() -> None:
    k = artifact_key("s", {"a": 1, "b": [1, 2]}, {"d": "x"}, 1)
    assert k == artifact_key("s", {"b": [1, 2], "a": 1}, {"d": "x"}, 1)
    assert (
        len(
            {
                k,
                artifact_key("s", {"a": 2, "b": [1, 2]}, {"d": "x"}, 1),
                artifact_key("s", {"a": 1, "b": [1, 2]}, {"d": "z"}, 1),
                artifact_key("s", {"a": 1, "b": [1, 2]}, {"d": "x"}, 2),
                artifact_key("t", {"a": 1, "b": [1, 2]}, {"d": "x"}, 1),
            }
        )
        == 5
    )


def test_workspace_remembers_the_latest_artifact_per_stage(workspace) -> None:
    _write(workspace, name="x-1")
    second = _write(workspace, name="x-2")
    assert workspace.latest("demo").name == second.name
    assert resolve(workspace, "demo").path == second.path


def test_a_crash_during_write_leaves_no_artifact_and_keeps_the_old_one(workspace, monkeypatch) -> None:
    old = _write(workspace, value=1.0)
    real_replace = os.replace

    def crash(src, dst):
        if Path(dst).parent == workspace.artifacts_dir and not str(src).endswith(".old"):
            raise KeyboardInterrupt  # interrupted between moving the old one aside and the rename
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        _write(workspace, value=2.0)
    monkeypatch.setattr(os, "replace", real_replace)
    assert torch.equal(read_artifact(old.path).tensor("t"), torch.full((2, 3), 1.0))
    assert list((workspace.root / "tmp").iterdir()) == []


def test_an_artifact_moved_aside_by_a_killed_rewrite_is_recovered_on_lookup(workspace) -> None:
    old = _write(workspace)
    os.replace(old.path, workspace.root / "tmp" / f"{old.name}.old")  # the state a SIGKILL could leave
    assert workspace.find(old.name) is not None
    assert torch.equal(read_artifact(old.path).tensor("t"), torch.full((2, 3), 1.0))


def test_a_crash_before_rename_leaves_nothing_that_looks_complete(workspace, monkeypatch) -> None:
    import stages.artifacts

    monkeypatch.setattr(stages.artifacts, "write_safetensors", lambda *_: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        _write(workspace)
    assert workspace.find("x-abc") is None
    assert list(workspace.artifacts_dir.iterdir()) == []


def test_corrupted_tensors_are_detected(workspace) -> None:
    art = _write(workspace)
    data = bytearray((art.path / "tensors.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (art.path / "tensors.safetensors").write_bytes(bytes(data))
    with pytest.raises(ChddlError, match="corrupt"):
        read_artifact(art.path).tensors()
    assert workspace.find(art.name) is None  # a broken entry is a cache miss


def test_truncated_artifact_is_detected(workspace) -> None:
    art = _write(workspace)
    (art.path / "tensors.safetensors").unlink()
    with pytest.raises(ChddlError, match="incomplete"):
        read_artifact(art.path)


def test_foreign_directory_is_refused(tmp_path) -> None:
    (tmp_path / "meta.yaml").write_text(yaml.safe_dump({"hello": "world"}))
    with pytest.raises(ChddlError, match="not a chddl artifact"):
        read_artifact(tmp_path)
    with pytest.raises(ChddlError, match="no meta.yaml"):
        read_artifact(tmp_path / "..")


def test_wrong_stage_is_refused(workspace) -> None:
    art = _write(workspace)
    with pytest.raises(ChddlError, match="is a 'demo' artifact, but a 'labels' artifact is needed"):
        read_artifact(art.path, "labels")


def test_missing_stage_in_workspace_names_the_creating_command(workspace) -> None:
    with pytest.raises(ChddlError, match="chddl label PATH"):
        resolve(workspace, "labels")


def test_unwritable_workspace_is_refused(tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(ChddlError, match="not writable"):
        Workspace(blocker / "ws").ensure_writable()


def test_no_pickle_in_the_library() -> None:
    root = Path(__file__).resolve().parents[1] / "stages"
    pattern = re.compile(r"(?<!safetensors\.)torch\.load\(|pickle\.loads?\(")
    offenders = [p for p in root.rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
