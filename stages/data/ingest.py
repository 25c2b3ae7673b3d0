"""Ingestion: read a source, split it, cache it as a ``dataset`` artifact."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from stages.artifacts import (
    Artifact,
    Workspace,
    artifact_key,
    file_digest,
    stage_artifact_name,
    tensor_fingerprint,
)
from stages.config import option, require, to_dict
from stages.data import demo
from stages.data.cifar import find_cifar_dir, read_cifar
from stages.data.folder import read_folder
from stages.data.layouts import CROSSVAL
from stages.data.npz import read_npz
from stages.data.raw import TEST, TRAIN, RawDataset
from stages.data.zca import fit_zca
from stages.errors import ChddlError
from stages.executor import stage_run
from stages.metering import measure
from stages.progress import NullProgress, Progress
from stages.registry import Registry

STAGE = "dataset"
SCHEMA_VERSION = 1
BUILTIN_PREFIX = "builtin:"

Reader = Callable[[Path, "DatasetConfig", Progress], RawDataset]
DATASETS: Registry[Reader] = Registry("dataset format")


@DATASETS.register("npz")
def _npz(path: Path, cfg: "DatasetConfig", progress: Progress) -> RawDataset:
    return read_npz(path, cfg.size)


@DATASETS.register("folder")
def _folder(path: Path, cfg: "DatasetConfig", progress: Progress) -> RawDataset:
    return read_folder(path, cfg.size, progress, workers=cfg.workers, crossval=cfg.crossval)


@DATASETS.register("cifar")
def _cifar(path: Path, cfg: "DatasetConfig", progress: Progress) -> RawDataset:
    return read_cifar(path, cfg.size)


@DATASETS.register("builtin")
def _builtin(path: Path, cfg: "DatasetConfig", progress: Progress) -> RawDataset:
    if path.name != "demo":
        raise ChddlError(f"unknown built-in dataset '{path.name}'; valid: demo")
    return demo.generate(cfg.size, seed=0)


@dataclass
class DatasetConfig:
    """How a source is turned into a cached dataset."""

    size: int = option(32, "image side in pixels after resizing (square)")
    format: str = option("auto", "source format: auto (from the path), " + ", ".join(DATASETS.names()))
    test_fraction: float = option(
        0.2, "test share of a seeded stratified split, used only when the source has no split"
    )
    split_seed: int = option(0, "seed of that stratified split and of the per-class subsets")
    strict: bool = option(False, "fail on undecodable image files instead of skipping and counting them")
    workers: int = option(0, "threads decoding image files (0: one per core)")
    crossval: str = option(
        "train", "what PACS's official crossval lists become: train, test or ignore (image folders with split lists)"
    )
    zca: bool = option(
        False, "ZCA-whiten the normalised images, fitted on the training split (MTT's reference does for CIFAR)"
    )
    zca_eps: float = option(0.1, "ZCA regulariser added to the covariance eigenvalues")
    train_per_class: int = option(
        0, "keep a seeded random subset of at most this many training images per class (0: all)"
    )
    test_per_class: int = option(0, "keep a seeded random subset of at most this many test images per class (0: all)")

    def validate(self) -> None:
        require(4 <= self.size <= 1024, f"--size must be between 4 and 1024 pixels, got {self.size}")
        require(0.0 < self.test_fraction < 1.0, f"--test-fraction must lie in (0, 1), got {self.test_fraction}")
        require(self.zca_eps > 0, f"--zca-eps must be positive, got {self.zca_eps}")
        require(
            self.train_per_class >= 0,
            f"--train-per-class must be 0 (all images) or positive, got {self.train_per_class}",
        )
        require(
            self.test_per_class >= 0, f"--test-per-class must be 0 (all images) or positive, got {self.test_per_class}"
        )
        require(self.workers >= 0, f"--workers must be 0 (one per core) or positive, got {self.workers}")
        require(self.crossval in CROSSVAL, f"unknown --crossval '{self.crossval}'; valid: {', '.join(CROSSVAL)}")
        require(
            self.format == "auto" or self.format in DATASETS,
            f"unknown dataset format '{self.format}'; valid: auto, {', '.join(DATASETS.names())}",
        )


def detect_format(source: str) -> tuple[str, Path]:
    """The reader for ``source`` and its path, or a ChddlError naming the fix."""
    if source.startswith(BUILTIN_PREFIX):
        return "builtin", Path(source[len(BUILTIN_PREFIX) :])
    path = Path(source).expanduser()
    if not path.exists():
        raise ChddlError(f"no such file or directory: {source}")
    if path.is_file():
        if path.suffix.lower() == ".npz":
            return "npz", path
        if path.name.endswith((".tar.gz", ".tgz", ".tar", ".zip")):
            raise ChddlError(f"{source} is an archive; extract it first (e.g. tar xzf {source}) and pass the folder")
        raise ChddlError(
            f"{source} is not a dataset: pass an image folder, a CIFAR folder, an .npz file or builtin:demo"
        )
    if find_cifar_dir(path) is not None:
        return "cifar", path
    return "folder", path


def source_fingerprint(fmt: str, path: Path, digest_cache: Path | None = None) -> str:
    """Identity of the source's content, part of the dataset's key.

    Files are hashed. A folder tree is identified by each file's relative
    path and the hash of its bytes, so a byte-identical tree (copied,
    restored, touched) is the same dataset. ``digest_cache`` (a JSON file)
    remembers each file's hash under its size and modification time, so an
    unchanged tree is not read again; a file whose size or mtime changed is
    hashed anew.
    """
    h = hashlib.blake2b(digest_size=16)
    if fmt == "builtin":
        h.update(f"builtin:{path.name}:v{demo.VERSION}".encode())
    elif path.is_file():
        h.update(file_digest(path)[1].encode())
    else:
        cache = _read_digests(digest_cache)
        fresh: dict[str, list] = {}
        for dirpath, dirnames, filenames in os.walk(path):
            dirnames.sort()
            for f in sorted(filenames):
                full = os.path.join(dirpath, f)
                st = os.stat(full)
                known = cache.get(os.path.abspath(full))
                stamp = [st.st_size, st.st_mtime_ns]
                digest = known[2] if isinstance(known, list) and known[:2] == stamp else file_digest(Path(full))[1]
                fresh[os.path.abspath(full)] = [*stamp, digest]
                h.update(f"{os.path.relpath(full, path)}|{digest}\n".encode())
        if digest_cache is not None and any(cache.get(k) != v for k, v in fresh.items()):
            _write_digests(digest_cache, cache | fresh)
    return h.hexdigest()


def _read_digests(path: Path | None) -> dict:
    try:
        data = json.loads(path.read_text()) if path is not None else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: hash everything again
    return data if isinstance(data, dict) else {}


def _write_digests(path: Path, data: dict) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data))
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only workspace: the next run hashes again


def stratified_split(labels: torch.Tensor, domains: torch.Tensor | None, fraction: float, seed: int) -> torch.Tensor:
    """0/1 split putting ``round(fraction * n)`` of every (class, domain) cell
    in the test split (at least one when a cell has two or more images)."""
    g = torch.Generator().manual_seed(seed)
    cell = labels * (int(domains.max()) + 1) + domains if domains is not None else labels
    split = torch.full_like(labels, TRAIN)
    for c in torch.unique(cell):
        idx = torch.nonzero(cell == c).flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        n_test = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        split[idx[:n_test]] = TEST
    return split


def class_subset(labels: torch.Tensor, split: torch.Tensor, part: int, per_class: int, seed: int) -> torch.Tensor:
    """Boolean mask of a seeded random draw of at most ``per_class`` images of
    each class from split ``part`` (TRAIN or TEST), drawn uniformly within the
    class so its domain mix is kept in expectation."""
    g = torch.Generator().manual_seed(seed * 2 + part)
    keep = torch.zeros_like(labels, dtype=torch.bool)
    for c in torch.unique(labels):
        idx = torch.nonzero((labels == c) & (split == part)).flatten()
        keep[idx[torch.randperm(len(idx), generator=g)[:per_class]]] = True
    return keep


def subset_mask(labels: torch.Tensor, split: torch.Tensor, cfg: DatasetConfig) -> torch.Tensor | None:
    """The images kept under ``--train-per-class`` / ``--test-per-class``, or None to keep all."""
    if not (cfg.train_per_class or cfg.test_per_class):
        return None
    keep = torch.ones_like(labels, dtype=torch.bool)
    for part, per_class in ((TRAIN, cfg.train_per_class), (TEST, cfg.test_per_class)):
        if per_class:
            keep &= (split != part) | class_subset(labels, split, part, per_class, cfg.split_seed)
    return keep


def channel_statistics(images: torch.Tensor, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and (unbiased) standard deviation of ``images[rows]`` scaled to [0, 1], in float64.

    Two passes over blocks of about 16M values each, so memory stays one block
    however large the dataset (a float64 copy of it would be 8x its size)."""
    per_image = images[0].numel() if len(images) else 1
    block = max(1, (1 << 24) // per_image)
    count = len(rows) * per_image // images.shape[1]
    total = torch.zeros(images.shape[1], dtype=torch.float64)
    for start in range(0, len(rows), block):
        total += images[rows[start : start + block]].to(torch.float64).sum(dim=(0, 2, 3))
    mean = total / count / 255.0
    squares = torch.zeros_like(total)
    for start in range(0, len(rows), block):
        x = images[rows[start : start + block]].to(torch.float64).div_(255.0).sub_(mean.view(1, -1, 1, 1))
        squares += x.square_().sum(dim=(0, 2, 3))
    return mean, (squares / max(count - 1, 1)).sqrt()


def _dataset_name(fmt: str, path: Path, cfg: DatasetConfig) -> str:
    stem = path.name.split(".")[0] or "data"
    subset = (f"-train{cfg.train_per_class}" if cfg.train_per_class else "") + (
        f"-test{cfg.test_per_class}" if cfg.test_per_class else ""
    )
    return f"dataset-{stem}-{cfg.size}px{subset}" + ("-zca" if cfg.zca else "")


def ingest(
    source: str, cfg: DatasetConfig, workspace: Workspace, *, force: bool = False, progress: Progress = NullProgress()
) -> tuple[Artifact, bool]:
    """Read ``source`` into a cached dataset artifact; returns (artifact, cache_hit).

    ``source`` is an .npz file, an image-folder tree, a CIFAR-10/100 folder,
    or ``builtin:demo``.
    """
    fmt, path = (
        detect_format(source) if cfg.format == "auto" else (cfg.format, Path(source.removeprefix(BUILTIN_PREFIX)))
    )
    if not path.exists() and fmt != "builtin":
        raise ChddlError(f"no such file or directory: {source}")
    workspace.check_exists()
    # Subset sizes of 0 stay out of the key so datasets cached before the options existed are still found.
    # Execution-only options, and new options at their defaults, stay out of the key: cached datasets stay found.
    config = {
        k: v
        for k, v in to_dict(cfg).items()
        if k not in ("strict", "workers")
        and not (k.endswith("_per_class") and not v)
        and not (k == "crossval" and v == "train")
    } | {"format": fmt}
    if fmt == "folder":
        config["jpeg_draft"] = True  # large JPEGs are decoded at reduced scale (slightly other pixels than before)
    digests = workspace.root / "cache" / "file-digests.json"
    key = artifact_key(STAGE, config, {"source": source_fingerprint(fmt, path, digests)}, SCHEMA_VERSION)
    name = stage_artifact_name(_dataset_name(fmt, path, cfg), key)
    if not force and (hit := workspace.find(name)) is not None and cfg.strict and hit.info.get("skipped_files"):
        raise ChddlError(
            f"{len(hit.info['skipped_files'])} image file(s) under {source} cannot be decoded (--strict), e.g. "
            f"{hit.info['skipped_files'][0]}"
        )
    with stage_run(workspace, STAGE, name, key, SCHEMA_VERSION, force=force) as run:
        if run.hit is not None:
            return run.hit, True
        with measure() as cost:
            raw = DATASETS.get(fmt)(path, cfg, progress)
            if raw.skipped and cfg.strict:
                raise ChddlError(
                    f"{len(raw.skipped)} image file(s) cannot be decoded (--strict), e.g. {raw.skipped[0]}"
                )
            split = (
                raw.split
                if raw.split is not None
                else stratified_split(raw.labels, raw.domains, cfg.test_fraction, cfg.split_seed)
            )
            full_sizes = f"{int((split == TRAIN).sum())} train / {int((split == TEST).sum())} test"
            if (keep := subset_mask(raw.labels, split, cfg)) is not None:
                raw = raw.subset(keep)
                split = split[keep]
            train = split == TRAIN
            if int(train.sum()) == 0:
                raise ChddlError(f"{source} has no training images after splitting")
            mean, std = channel_statistics(raw.images, torch.nonzero(train).flatten())
            tensors = {"images": raw.images, "labels": raw.labels, "split": split}
            fingerprint = tensor_fingerprint(raw.images, raw.labels, raw.domains, split)
            if cfg.zca:
                progress.note(f"fitting ZCA on {int(train.sum())} training images")
                normalised = (raw.images[train].float().div_(255.0) - mean.float().view(1, 3, 1, 1)) / std.float().view(
                    1, 3, 1, 1
                )
                zca = fit_zca(normalised, cfg.zca_eps)
                tensors |= {"zca_mean": zca.mean, "zca_matrix": zca.matrix, "zca_inverse": zca.inverse}
                # Everything downstream (experts, condensed sets) must tell whitened data from plain.
                fingerprint = tensor_fingerprint(raw.images, raw.labels, raw.domains, split, zca.matrix)
        if raw.domains is not None:
            tensors["domains"] = raw.domains
        info = {
            "source": str(source),
            "format": raw.source_format or fmt,
            "class_names": raw.class_names,
            "domain_names": raw.domain_names,
            "num_images": int(len(raw.labels)),
            "num_train": int(train.sum()),
            "num_test": int((~train).sum()),
            "subset": (
                f"of {full_sizes}: at most {cfg.train_per_class or 'all'} train / {cfg.test_per_class or 'all'} test "
                f"per class, seed {cfg.split_seed}"
            )
            if keep is not None
            else None,
            "split_from": "source"
            if raw.split is not None
            else f"stratified(test_fraction={cfg.test_fraction}, seed={cfg.split_seed})",
            "mean": [round(float(m), 6) for m in mean],
            "std": [round(float(s), 6) for s in std],
            "skipped_files": raw.skipped,
        }
        art = run.write(
            config=to_dict(cfg) | {"format": fmt},
            inputs={"source": str(source)},
            tensors=tensors,
            seed=cfg.split_seed,
            info=info,
            cost=cost,
            fingerprint=fingerprint,
        )
        return art, False
