"""Folders the user names with ``--out``: refused when replacing them could lose the user's files, and
written beside their destination then swapped in, so that a failure leaves what was there intact."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Callable

from stages.errors import ChddlError


def refuse_unsafe(out: Path, workspace: Path | None = None, example: str = "--out export") -> None:
    """One-line refusal of a folder no command may replace: the current folder or one above it, the home
    folder, the root, and (when given) the workspace, anything inside it or above it."""
    target = out.resolve()
    cwd = Path.cwd().resolve()
    if target == cwd or target in cwd.parents:
        raise ChddlError(f"--out {out} is the current folder or one above it; pass a new folder, e.g. {example}")
    if target == Path.home().resolve() or target == Path(target.anchor):
        raise ChddlError(f"--out {out} is your home folder or the root; pass a new folder, e.g. {example}")
    if workspace is not None:
        ws = workspace.resolve()
        if target == ws or ws in target.parents or target in ws.parents:
            raise ChddlError(
                f"--out {out} is the workspace {workspace}, inside it or above it; pass a folder outside it"
            )


def write_swapped(out: Path, write: Callable[[Path], None], label: str) -> None:
    """Call ``write(tmp)`` on a new folder beside ``out``, then put it in ``out``'s place (replacing what the
    caller has checked may be replaced). On any failure ``out`` is as it was; an OSError becomes one line."""
    tag = uuid.uuid4().hex[:8]
    tmp, old = out.parent / f".{out.name}.{label}-{tag}", out.parent / f".{out.name}.replaced-{tag}"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        write(tmp)
        if out.exists():
            os.replace(out, old)
        try:
            os.replace(tmp, out)
        except OSError:
            if old.exists():
                os.replace(old, out)
            raise
        shutil.rmtree(old, ignore_errors=True)
    except OSError as exc:
        raise NotWritable(out, exc.strerror or str(exc)) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class NotWritable(ChddlError):
    """A folder could not be written; callers that know the user's way around it rephrase the fix."""

    def __init__(self, path: Path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"cannot write {path} ({reason}); pass a writable --out")
