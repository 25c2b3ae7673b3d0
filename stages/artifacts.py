"""Content-keyed artifacts (safetensors + meta.yaml) and the workspace.

Layout of a workspace::

    <workdir>/artifacts/<prefix>-<hash>/tensors.safetensors
    <workdir>/artifacts/<prefix>-<hash>/meta.yaml
    <workdir>/latest.yaml          # stage -> artifact name
    <workdir>/tmp/                 # writes in progress (renamed into place)
    <workdir>/partial/<name>/      # checkpoints of interrupted long stages
    <workdir>/locks/<name>.lock    # held (flock) by the process computing <name>
    <workdir>/cache/file-digests.json  # content hashes of image-folder files by (size, mtime)

``latest.yaml`` is only a cache of what the artifacts say: when it is
missing or damaged it is rebuilt from their meta.yaml (newest of each stage).

Every on-disk schema of chddl is defined here. No pickle is used: tensors
go through safetensors, metadata through ``yaml.safe_dump``/``safe_load``.
"""

from __future__ import annotations

import datetime as _dt
import fcntl
import hashlib
import json
import logging
import os
import platform
import shutil
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import safetensors.torch
import torch
import yaml

from stages import __version__
from stages.errors import ChddlError

SCHEMA = "chddl-artifact/1"
TENSORS_FILE = "tensors.safetensors"
META_FILE = "meta.yaml"
KEY_LENGTH = 12
#: one-line notes for the user (the CLI prints them on stderr); the library itself never prints
log = logging.getLogger("chddl")


#: the stages an index (latest.yaml) may name; any other key marks the index as damaged
INDEX_STAGES = ("dataset", "labels", "experts", "teacher", "bn-statistics", "condensed", "evaluation")


def artifact_key(stage: str, config: Mapping[str, Any], inputs: Mapping[str, str], schema_version: int) -> str:
    """Short stable hash of what determines an artifact's content."""
    payload = json.dumps(
        {"stage": stage, "config": config, "inputs": dict(inputs), "schema_version": schema_version},
        sort_keys=True,
        separators=(",", ":"),
        default=str,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:KEY_LENGTH]


def tensor_fingerprint(*tensors: torch.Tensor | None) -> str:
    """Content hash of tensors (values, dtypes and shapes)."""
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        if t is None:
            h.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        h.update(f"{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().data if t.numel() else b"")  # hashed in place, not copied
    return h.hexdigest()


def _versions() -> dict[str, str]:
    return {
        "chddl": __version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "numpy": str(np.__version__),
    }


def _to_yaml_safe(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _to_yaml_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_yaml_safe(v) for v in value]
    if isinstance(value, (Path, str)):
        return str(value)
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, torch.Tensor):
        return value.tolist()
    return value


@dataclass
class Artifact:
    """A validated artifact directory; tensors are loaded on first use."""

    path: Path
    meta: dict[str, Any]
    _tensors: dict[str, torch.Tensor] | None = field(default=None, repr=False)

    @property
    def name(self) -> str:
        return self.meta["name"]

    @property
    def stage(self) -> str:
        return self.meta["stage"]

    @property
    def key(self) -> str:
        return self.meta["key"]

    @property
    def config(self) -> dict[str, Any]:
        return self.meta.get("config", {})

    @property
    def info(self) -> dict[str, Any]:
        return self.meta.get("info", {})

    @property
    def metrics(self) -> dict[str, Any]:
        return self.meta.get("metrics", {})

    def tensors(self, mapped: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
        """All tensors, checked against the checksum recorded at write time. The tensors named in ``mapped``
        (on a first read) stay in the file, mapped read-only into memory: only the rows a process indexes
        are read (under torchrun, each rank's classes of a dataset's images)."""
        if self._tensors is None:
            self._tensors = _read_tensors(self.path, self.meta, mapped)
        return self._tensors

    def tensor(self, name: str) -> torch.Tensor:
        tensors = self.tensors()
        if name not in tensors:
            raise ChddlError(f"artifact {self.path} has no tensor '{name}'; it may be from an older chddl")
        return tensors[name]

    def has_tensor(self, name: str) -> bool:
        return name in self.meta.get("tensors", {}).get("entries", {})


#: safetensors' names of the dtypes artifacts hold
_SAFETENSORS_DTYPES = {
    torch.float64: "F64",
    torch.float32: "F32",
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.int64: "I64",
    torch.int32: "I32",
    torch.int16: "I16",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.bool: "BOOL",
}


WRITE_BLOCK_BYTES = 64 * 2**20


def write_safetensors(path: Path, tensors: Mapping[str, torch.Tensor]) -> None:
    """Write tensors to ``path`` in the safetensors format, each streamed from its own memory at most
    WRITE_BLOCK_BYTES at a time (``safetensors.torch.save_file`` first copies every tensor into a bytes
    object: a second full copy of a large dataset). Tensors are laid out by decreasing element size,
    then name, so every tensor starts at a multiple of its element size, as safetensors itself does."""
    if any(t.dtype not in _SAFETENSORS_DTYPES for t in tensors.values()):
        safetensors.torch.save_file(dict(tensors), str(path))
        return
    order = sorted(tensors, key=lambda k: (-tensors[k].element_size(), k))
    header, offset = {}, 0
    for name in order:
        t = tensors[name]
        size = t.numel() * t.element_size()
        header[name] = {
            "dtype": _SAFETENSORS_DTYPES[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as fh:
        fh.write(len(text).to_bytes(8, "little"))
        fh.write(text)
        for name in order:
            t = tensors[name].detach()
            t = t.reshape(1, -1) if t.ndim == 0 else t
            # a block of rows at a time: a tensor that is not contiguous (shared masks' alpha, expanded over the
            # colour channels) or not in host memory is never made whole in host memory
            rows = max(1, WRITE_BLOCK_BYTES // max(1, t[0].numel() * t.element_size())) if len(t) else 1
            for i in range(0, len(t), rows):
                block = t[i : i + rows].cpu().contiguous()
                if block.numel():
                    fh.write(memoryview(block.reshape(-1).view(torch.uint8).numpy()))


def file_digest(path: Path) -> tuple[int, str]:
    """(size, blake2b-128 hex) of a file, read in blocks so memory stays bounded."""
    h, size = hashlib.blake2b(digest_size=16), 0
    with open(path, "rb") as fh:
        while block := fh.read(1 << 24):
            h.update(block)
            size += len(block)
    return size, h.hexdigest()


#: safetensors' dtype names
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def _mapped_tensors(file: Path, mapped: tuple[str, ...]) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, those named in ``mapped`` as views of a private map of the file
    (pages are read when touched; writes, if any, stay in this process), the others as copies."""
    with open(file, "rb") as fh:
        header_bytes = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(header_bytes))
    header.pop("__metadata__", None)
    whole = torch.from_file(str(file), shared=False, size=file.stat().st_size, dtype=torch.uint8)
    out = {}
    for name, entry in header.items():
        begin, end = (8 + header_bytes + o for o in entry["data_offsets"])
        dtype = _DTYPES[entry["dtype"]]
        raw = whole[begin:end]
        if name not in mapped or begin % dtype.itemsize:  # a view needs an aligned start
            raw = raw.clone()
        out[name] = raw.view(dtype).reshape(entry["shape"])
    return out


def _read_tensors(path: Path, meta: dict[str, Any], mapped: tuple[str, ...] = ()) -> dict[str, torch.Tensor]:
    file = path / TENSORS_FILE
    try:
        size, digest = file_digest(file)
    except OSError:
        raise ChddlError(f"artifact {path} is incomplete: {TENSORS_FILE} is missing; delete it and re-run") from None
    expected = meta.get("tensors", {})
    if size != expected.get("bytes") or digest != expected.get("blake2b"):
        raise ChddlError(f"artifact {path} is corrupt (tensor checksum mismatch); delete it and re-run with --force")
    try:
        if mapped:
            return _mapped_tensors(file, mapped)
        # read from the file (not from a bytes copy of it): the tensors are the only full copy in memory
        return safetensors.torch.load_file(str(file))
    except Exception as exc:  # safetensors raises its own error types
        raise ChddlError(f"artifact {path} is corrupt ({exc}); delete it and re-run with --force") from None


#: the command that writes each kind of artifact, by the prefix of its folder name
MADE_BY = {
    "dataset": "chddl label",
    "labels": "chddl label",
    "experts": "chddl pretrain-experts",
    "teacher": "chddl train-teacher",
    "bnstats": "chddl condense --base sre2l",
    "condensed": "chddl condense",
    "eval": "chddl evaluate",
}


def recompute_hint(name: str) -> str:
    """The command that rewrites artifact ``name`` (by its folder-name prefix): `chddl condense ... --force`."""
    command = MADE_BY.get(Path(name).name.split("-")[0])
    return f"`{command} ... --force`" if command else "unknown (not a chddl artifact name)"


def problem_of(path: Path) -> str | None:
    """Why the artifact folder ``path`` is not a valid artifact (checksums included), or None when it is."""
    try:
        read_artifact(path).tensors()
    except ChddlError as exc:
        return str(exc)
    return None


def read_artifact(path: Path, stage: str | None = None) -> Artifact:
    """Open and validate an artifact directory (tensors are checked on load).

    A missing, partial, foreign or corrupt directory, or one of another
    stage than ``stage``, is a ChddlError saying so.
    """
    path = Path(path)
    if not path.is_dir():
        raise ChddlError(f"{path} is not an artifact directory (no such directory)")
    meta_file = path / META_FILE
    if not meta_file.is_file():
        raise ChddlError(f"{path} is not a chddl artifact (no {META_FILE}); pass an artifact directory")
    try:
        meta = yaml.safe_load(meta_file.read_text())
    except (yaml.YAMLError, OSError, UnicodeDecodeError):
        raise ChddlError(f"artifact {path} is corrupt ({META_FILE} does not parse); delete it and re-run") from None
    if not isinstance(meta, dict) or meta.get("schema") != SCHEMA:
        raise ChddlError(f"{path} is not a chddl artifact (unknown schema in {META_FILE})")
    missing = [k for k in ("stage", "key", "name", "tensors") if k not in meta]
    if missing:
        raise ChddlError(f"artifact {path} is corrupt ({META_FILE} lacks {', '.join(missing)}); delete it and re-run")
    if stage is not None and meta["stage"] != stage:
        raise ChddlError(f"{path} is a '{meta['stage']}' artifact, but a '{stage}' artifact is needed here")
    if not (path / TENSORS_FILE).is_file():
        raise ChddlError(f"artifact {path} is incomplete: {TENSORS_FILE} is missing; delete it and re-run")
    return Artifact(path=path, meta=meta)


class Workspace:
    """A folder of artifacts that remembers the latest artifact of each stage."""

    def __init__(self, root: str | Path, wait: bool = True, defer_index: bool = False) -> None:
        """``wait``: a stage whose artifact another process is computing waits
        for it (and then finds the cache hit); False fails at once instead.
        ``defer_index``: latest.yaml changes only at :meth:`commit` (a
        command's success), never on the way to a refusal."""
        self.root = Path(root).expanduser()
        self.wait = wait
        self.defer_index = defer_index
        self._deferred: dict[str, str] = {}  # stage -> name, recorded as latest when the command succeeds

    @property
    def artifacts_dir(self) -> Path:
        return self.root / "artifacts"

    @property
    def latest_file(self) -> Path:
        return self.root / "latest.yaml"

    def unwritable_error(self, exc: OSError) -> ChddlError:
        return ChddlError(
            f"workspace {self.root} is not writable ({exc.strerror}); pass --workdir or set CHDDL_WORKDIR"
        )

    def check_exists(self) -> None:
        """Fail with the not-writable error when the workspace does not exist
        and cannot be created (without creating anything)."""
        if self.root.is_dir():
            return
        created = []
        try:
            for folder in reversed([self.root, *self.root.parents]):
                if not folder.exists():
                    folder.mkdir()
                    created.append(folder)
        except OSError as exc:
            raise self.unwritable_error(exc) from None
        finally:
            for folder in reversed(created):
                folder.rmdir()

    def ensure_writable(self) -> None:
        """Create the workspace folders or fail with a clear message."""
        try:
            for sub in ("artifacts", "tmp", "partial"):
                (self.root / sub).mkdir(parents=True, exist_ok=True)
            probe = self.root / "tmp" / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise self.unwritable_error(exc) from None

    @contextmanager
    def lock(self, name: str) -> Iterator[None]:
        """Hold the lock of artifact ``name`` (an OS file lock, released on exit
        and when the process dies). Another holder makes this wait, or fail
        naming it when the workspace was opened with ``wait=False``."""
        self.ensure_writable()
        (self.root / "locks").mkdir(exist_ok=True)
        with open(self.root / "locks" / f"{name}.lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "?"
                if not self.wait:
                    raise ChddlError(
                        f"{name} is being computed by process {holder}; wait for it to finish "
                        f"(run without --no-wait to wait and reuse its result)"
                    ) from None
                log.warning(f"process {holder} is computing {name}; waiting for it")
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                fh.seek(0)
                fh.truncate()
                fh.write(f"{os.getpid()}\n")
                fh.flush()
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    @contextmanager
    def computing(self, name: str, force: bool = False, locked: bool = True) -> Iterator[Artifact | None]:
        """Hold ``name``'s lock while computing it; yields the artifact when
        the process this one waited for made it meanwhile (then a cache hit,
        already recorded as latest), else None. ``locked=False`` (the ranks
        of one torchrun job, which compute together) takes no lock."""
        if not locked:
            yield None
            return
        with self.lock(name):
            hit = None if force else self.find(name)
            if hit is not None:
                self.set_latest(hit)
            yield hit

    def adopt(self, art: Artifact) -> Artifact:
        """Make an artifact from elsewhere part of this workspace (hard links,
        falling back to copies), so later commands find it by name."""
        target = self.artifacts_dir / art.name
        if target.resolve() == art.path.resolve() or self.find(art.name) is not None:
            return self.find(art.name) or art
        self.ensure_writable()
        tmp = self.root / "tmp" / f"{art.name}.adopt.{uuid.uuid4().hex[:8]}"

        def link(src: str, dst: str) -> None:
            try:
                os.link(src, dst)
            except OSError:
                shutil.copy2(src, dst)

        shutil.copytree(art.path, tmp, copy_function=link)
        os.replace(tmp, target)
        return read_artifact(target, art.stage)

    def partial_dir(self, name: str) -> Path:
        """Folder for the checkpoints of an artifact still being computed."""
        return self.root / "partial" / name

    # -- lookup -------------------------------------------------------------
    def _recover(self, name: str) -> None:
        """Put back an artifact moved aside by a replacing write that died
        between its two renames."""
        trash, final = self.root / "tmp" / f"{name}.old", self.artifacts_dir / name
        if trash.is_dir() and not final.exists():
            os.replace(trash, final)

    def find(self, name: str) -> Artifact | None:
        """The artifact called ``name`` if it exists and is valid; a broken
        one counts as absent (it is replaced on the next write)."""
        self._recover(name)
        path = self.artifacts_dir / name
        if not path.exists():
            return None
        try:
            art = read_artifact(path)
            art.tensors()
            return art
        except ChddlError:
            return None

    def latest(self, stage: str) -> Artifact | None:
        """The most recently written or used artifact of ``stage``; a stage the
        index does not name falls back to its newest valid artifact. When the
        one it names is damaged, a ChddlError naming it: a command never
        silently works on another set than the one the user made last."""
        name = self._deferred.get(stage) or self._read_latest().get(stage)
        if name is None:
            return self._newest(stage)
        art = self.find(name)
        if art is None:
            problem = (problem_of(self.artifacts_dir / name) or "could not be read").split(";")[0]
            raise ChddlError(
                f"the workspace's latest {stage}, {name}, is damaged ({problem}); recompute it with "
                f"{recompute_hint(name)} (the options that made it) or name the artifact to use explicitly"
            )
        return art

    def _newest(self, stage: str) -> Artifact | None:
        for art in reversed(self.all()):
            if art.stage == stage and self.find(art.name) is not None:
                return art
        return None

    def all(self) -> list[Artifact]:
        """Every valid artifact in the workspace, oldest first."""
        out = []
        if self.artifacts_dir.is_dir():
            for path in sorted(self.artifacts_dir.iterdir()):
                try:
                    out.append(read_artifact(path))
                except ChddlError:
                    continue
        return sorted(out, key=lambda a: a.meta.get("created", ""))

    def damaged(self) -> list[tuple[Path, str]]:
        """Folders under artifacts/ that are not valid artifacts, with why."""
        if not self.artifacts_dir.is_dir():
            return []
        problems = ((path, problem_of(path)) for path in sorted(self.artifacts_dir.iterdir()))
        return [(path, problem) for path, problem in problems if problem is not None]

    def _read_latest(self, note: bool = True) -> dict[str, str]:
        try:
            data = yaml.safe_load(self.latest_file.read_text())
            problem = None if self._index_is_sound(data) else "damaged"
        except FileNotFoundError:
            data, problem = {}, "missing"
        except (OSError, yaml.YAMLError, UnicodeDecodeError):
            data, problem = {}, "damaged"
        if problem is None:
            return data
        if problem == "missing" and not (self.artifacts_dir.is_dir() and any(self.artifacts_dir.iterdir())):
            return {}  # a new (or empty) workspace
        return self._rebuild_index(problem, note)

    def _index_is_sound(self, data: object) -> bool:
        """An index maps known stages to names of that stage's artifact folders that exist (a folder that exists
        but is damaged is reported where it is used, never silently replaced by another)."""
        return isinstance(data, dict) and all(
            stage in INDEX_STAGES
            and isinstance(name, str)
            and name not in ("", ".", "..")
            and "/" not in name
            and (self.artifacts_dir / name).is_dir()
            for stage, name in data.items()
        )

    def _rebuild_index(self, problem: str, note: bool) -> dict[str, str]:
        data: dict[str, str] = {}
        for art in self.all():  # oldest first: the newest of each stage wins
            data[art.stage] = art.name
        try:
            self._write_index(data)
            saved = "rebuilt it"
        except OSError:
            saved = "read it (the workspace is read-only, so the index stays as it is)"
        (log.warning if note else log.debug)(
            f"the workspace index {self.latest_file} was {problem}; {saved} from the "
            f"artifacts' meta.yaml (newest of each stage)"
        )
        return data

    def _write_index(self, data: dict[str, str]) -> None:
        tmp = self.root / "tmp" / f"latest-{uuid.uuid4().hex}.yaml"
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(yaml.safe_dump(data, sort_keys=True))
        os.replace(tmp, self.latest_file)

    def defer_latest(self, art: Artifact) -> None:
        """Record ``art`` as the latest of its stage when this command succeeds
        (the next :meth:`set_latest`), so a refused command changes nothing."""
        self._deferred[art.stage] = art.name

    def set_latest(self, art: Artifact) -> None:
        """Record ``art`` (and the deferred inputs) as the latest of their
        stages (atomic replace). A read-only workspace keeps its index: it
        still serves cache hits."""
        if self.defer_index:
            self._deferred[art.stage] = art.name
            return
        self._flush({art.stage: art.name})

    def commit(self) -> None:
        """Write the index changes deferred so far (``defer_index``)."""
        if self._deferred:
            self._flush({})

    def _flush(self, extra: dict[str, str]) -> None:
        data = self._read_latest(note=False) | self._deferred | extra
        try:
            self._write_index(data)
        except OSError:
            log.debug(f"workspace {self.root} is read-only; latest.yaml not updated")
            return
        self._deferred = {}

    # -- writing ------------------------------------------------------------
    def write(
        self,
        *,
        stage: str,
        name: str,
        key: str,
        config: Mapping[str, Any],
        inputs: Mapping[str, str],
        tensors: Mapping[str, torch.Tensor],
        seed: int | None = None,
        fingerprint: str | None = None,
        info: Mapping[str, Any] | None = None,
        metrics: Mapping[str, Any] | None = None,
        cost: Mapping[str, Any] | None = None,
        files: Mapping[str, bytes | Mapping[str, torch.Tensor]] | None = None,
        link_files: Mapping[str, Path] | None = None,
        schema_version: int = 1,
    ) -> Artifact:
        """Write an artifact atomically: a temporary folder renamed into place.

        An existing artifact of the same name is replaced only after the new
        one is complete, so an interrupted write never loses the old one.
        """
        self.ensure_writable()
        tmp = self.root / "tmp" / f"{name}.{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            flat = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
            write_safetensors(tmp / TENSORS_FILE, flat)
            size, digest = file_digest(tmp / TENSORS_FILE)
            for fname, content in (files or {}).items():
                if isinstance(content, bytes):
                    (tmp / fname).write_bytes(content)
                else:  # tensors: a safetensors file streamed from their memory, not a serialised copy first
                    write_safetensors(tmp / fname, content)
            for fname, source in (link_files or {}).items():
                # large files: hard-linked (no copy); the caller's originals stay until it removes them
                try:
                    os.link(source, tmp / fname)
                except OSError:
                    shutil.copyfile(source, tmp / fname)
            meta = {
                "schema": SCHEMA,
                "stage": stage,
                "schema_version": schema_version,
                "name": name,
                "key": key,
                "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "versions": _versions(),
                "seed": seed,
                "fingerprint": fingerprint,
                "config": dict(config),
                "inputs": dict(inputs),
                "info": dict(info or {}),
                "metrics": dict(metrics or {}),
                "cost": dict(cost or {}),
                "files": sorted([*(files or {}), *(link_files or {})]),
                "tensors": {
                    "file": TENSORS_FILE,
                    "bytes": size,
                    "blake2b": digest,
                    "entries": {
                        k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
                        for k, v in flat.items()
                    },
                },
            }
            (tmp / META_FILE).write_text(yaml.safe_dump(_to_yaml_safe(meta), sort_keys=False, allow_unicode=True))
            final = self.artifacts_dir / name
            trash = self.root / "tmp" / f"{name}.old"
            if final.exists():
                shutil.rmtree(trash, ignore_errors=True)
                os.replace(final, trash)
            os.replace(tmp, final)
            shutil.rmtree(trash, ignore_errors=True)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            self._recover(name)
            raise
        art = read_artifact(final, stage)
        self.set_latest(art)
        return art


def stage_artifact_name(prefix: str, key: str) -> str:
    """Readable directory name: ``<prefix>-<key>`` with unsafe characters replaced."""
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in prefix)
    return f"{safe}-{key}"
