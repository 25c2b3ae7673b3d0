"""One stage's life in the workspace, shared by every stage.

Each stage computes a key and a name, then::

    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force) as run:
        if run.hit is not None:
            return run.hit, True
        ...  # compute, checkpointing into run.partial
        return run.write(config=..., inputs=..., tensors=...), False

``stage_run`` does the cache lookup (a valid artifact of that name is reused
and recorded as latest), takes the artifact's lock (a process that waited for
another one computing the same artifact reuses its result), clears the
checkpoint folder under ``--force``, and ``run.write`` writes atomically,
records latest and removes the checkpoints. The ranks of one torchrun job
that compute one artifact together (``shared=True``: experts, evaluation) take
no lock, only rank 0 records latest, and they meet at a barrier once the
checkpoint folder is ready; other stages run in each process as they would alone.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch.distributed as dist

from .artifacts import Artifact, Workspace


def rank_world() -> tuple[int, int]:
    """(rank, world size) of this process; (0, 1) outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


@dataclass
class StageRun:
    """A stage's artifact being looked up or computed. ``hit`` is the cached
    artifact when there is one; otherwise the stage computes and calls ``write``."""

    workspace: Workspace
    stage: str
    name: str
    key: str
    schema_version: int
    hit: Artifact | None

    @property
    def partial(self) -> Path:
        """Folder for checkpoints of this artifact, kept until it is written."""
        return self.workspace.partial_dir(self.name)

    def write(self, **fields: Any) -> Artifact:
        """Write the artifact atomically (see ``Workspace.write`` for the
        fields), record it as latest and drop its checkpoints."""
        art = self.workspace.write(
            stage=self.stage, name=self.name, key=self.key, schema_version=self.schema_version, **fields
        )
        shutil.rmtree(self.partial, ignore_errors=True)
        return art


@contextmanager
def stage_run(
    workspace: Workspace,
    stage: str,
    name: str,
    key: str,
    schema_version: int,
    *,
    force: bool = False,
    shared: bool = False,
) -> Iterator[StageRun]:
    """Look ``name`` up in ``workspace`` and, on a miss, hold what computing it
    needs (its lock, a cleared checkpoint folder under ``force``). ``shared``:
    the torchrun ranks compute this artifact together."""
    rank, world = rank_world() if shared else (0, 1)
    if not force and (hit := workspace.find(name)) is not None:
        if rank == 0:
            workspace.set_latest(hit)
        yield StageRun(workspace, stage, name, key, schema_version, hit)
        return
    with workspace.computing(name, force, locked=world == 1) as done:
        run = StageRun(workspace, stage, name, key, schema_version, done)
        if done is None:
            workspace.ensure_writable()
            if force and rank == 0:
                shutil.rmtree(run.partial, ignore_errors=True)
            if world > 1:
                dist.barrier()  # no rank reads checkpoints that rank 0 is still clearing
        yield run
