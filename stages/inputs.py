"""Finding a stage's input: an explicit artifact path or the workspace's latest."""

from __future__ import annotations

from pathlib import Path

from stages.artifacts import META_FILE, Artifact, Workspace, read_artifact
from stages.errors import ChddlError

#: the command that creates each stage's artifact, for error messages
CREATED_BY = {
    "dataset": "chddl label PATH",
    "labels": "chddl label PATH",
    "condensed": "chddl condense",
    "experts": "chddl pretrain-experts",
    "teacher": "chddl train-teacher",
    "evaluation": "chddl evaluate",
}


def is_artifact_dir(path: str | Path) -> bool:
    """True when ``path`` looks like an artifact directory (has meta.yaml)."""
    p = Path(path)
    return p.is_dir() and (p / META_FILE).is_file()


def resolve(workspace: Workspace, stage: str, path: str | Path | None = None) -> Artifact:
    """The artifact at ``path`` (validated, of ``stage``) or else the latest of
    ``stage`` in the workspace; a ChddlError says which command creates it."""
    if path is not None:
        art = read_artifact(Path(path), stage)
        art.tensors()
        adopted = workspace.adopt(art)
        workspace.defer_latest(adopted)  # named explicitly: the latest of its stage once the command succeeds
        return adopted
    workspace.check_exists()
    art = workspace.latest(stage)
    if art is None:
        raise ChddlError(
            f"no {stage} artifact in workspace {workspace.root}; create one with `{CREATED_BY.get(stage, 'chddl')}` "
            "or pass its path"
        )
    return art


def upstream(workspace: Workspace, art: Artifact, role: str, stage: str) -> Artifact | None:
    """The artifact that ``art`` was built from under ``role`` (e.g. a labels
    artifact's dataset), if it is still in the workspace."""
    name = art.meta.get("inputs", {}).get(role)
    found = workspace.find(name) if name else None
    return found if found is not None and found.stage == stage else None
