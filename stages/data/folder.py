"""Reader for image-folder trees.

Accepted layouts (``<split>`` optional; ``train``/``test`` folder names)::

    root/[<split>/]<class>/*.jpg
    root/[<split>/]<domain>/<class>/*.jpg

Split lists: ``root/train.txt`` and ``root/test.txt`` (or the same under
``root/splits/``), one path relative to root per line (extra columns ignored).
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from stages.data.images import IMAGE_SUFFIXES, decode_image
from stages.data.raw import TEST, TRAIN, RawDataset
from stages.errors import ChddlError
from stages.progress import NullProgress, Progress

SPLIT_DIRS = {"train": TRAIN, "test": TEST}


def _image_files(root: Path) -> list[Path]:
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [
            Path(dirpath, f)
            for f in sorted(filenames)
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")
        ]
    return files


def _split_lists(root: Path) -> dict[int, set[str]] | None:
    for base in (root, root / "splits"):
        train, test = base / "train.txt", base / "test.txt"
        if train.is_file() and test.is_file():
            lists = {}
            for split, file in ((TRAIN, train), (TEST, test)):
                lines = [ln.split()[0] for ln in file.read_text().splitlines() if ln.strip() and not ln.startswith("#")]
                lists[split] = {str(Path(p)) for p in lines}
            return lists
    return None


def _entries(root: Path) -> list[tuple[Path, str | None, str, int | None]]:
    """(file, domain, class, split) for every image file under root."""
    split_roots = {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}
    if split_roots and set(split_roots) != set(SPLIT_DIRS):
        raise ChddlError(
            f"{root} has a '{next(iter(split_roots))}' folder but not both train/ and test/; add the other or remove it"
        )
    bases = [(p, SPLIT_DIRS[n]) for n, p in split_roots.items()] if split_roots else [(root, None)]
    entries, depths = [], set()
    for base, split in bases:
        for f in _image_files(base):
            parts = f.relative_to(base).parts
            depths.add(len(parts))
            if len(parts) == 2:
                entries.append((f, None, parts[0], split))
            elif len(parts) == 3:
                entries.append((f, parts[0], parts[1], split))
            else:
                raise ChddlError(
                    f"{f} is not at <class>/<file> or <domain>/<class>/<file> below {base}; reorganise the tree"
                )
    if not entries:
        raise ChddlError(
            f"no image files ({', '.join(sorted(IMAGE_SUFFIXES))}) under {root}; expected root/<class>/*.jpg or "
            "root/<domain>/<class>/*.jpg"
        )
    if len(depths) > 1:
        raise ChddlError(f"{root} mixes <class>/<file> and <domain>/<class>/<file> levels; use one layout")
    return entries


def _check_class_folders(root: Path, entries: list, has_domains: bool) -> None:
    with_images = {f.parent for f, *_ in entries}
    level = 2 if has_domains else 1
    bases = [root / s for s in SPLIT_DIRS if (root / s).is_dir()] or [root]
    for base in bases:
        for cls_dir in base.glob("/".join(["*"] * level)):
            if cls_dir.is_dir() and not cls_dir.name.startswith(".") and cls_dir not in with_images:
                raise ChddlError(f"class folder {cls_dir} has no image files; add images or remove the folder")


def read_folder(root: Path, size: int, progress: Progress = NullProgress(), workers: int = 8) -> RawDataset:
    """Decode an image-folder tree (see module docstring) at ``size`` px."""
    entries = _entries(root)
    has_domains = entries[0][1] is not None
    _check_class_folders(root, entries, has_domains)
    lists = _split_lists(root) if entries[0][3] is None else None
    if lists is not None:
        rel = [str(f.relative_to(root)) for f, *_ in entries]
        listed = lists[TRAIN] | lists[TEST]
        missing = sorted(listed - set(rel))
        if missing:
            raise ChddlError(f"split list names {len(missing)} file(s) not found under {root}, e.g. {missing[0]}")
        entries = [
            (f, d, c, TRAIN if r in lists[TRAIN] else TEST) for (f, d, c, _), r in zip(entries, rel) if r in listed
        ]
    class_names = sorted({c for _, _, c, _ in entries})
    domain_names = sorted({d for _, d, _, _ in entries}) if has_domains else None
    decoded: list[np.ndarray | None] = []
    with (
        progress.task(f"decoding {len(entries)} images", total=len(entries)) as task,
        ThreadPoolExecutor(workers) as pool,
    ):
        for arr in pool.map(lambda e: decode_image(e[0], size), entries, chunksize=64):
            decoded.append(arr)
            task.advance()
    keep = [i for i, a in enumerate(decoded) if a is not None]
    skipped = [str(entries[i][0]) for i, a in enumerate(decoded) if a is None]
    if not keep:
        raise ChddlError(f"none of the {len(entries)} image files under {root} could be decoded")
    kept = [entries[i] for i in keep]
    raw = RawDataset(
        images=torch.from_numpy(np.stack([decoded[i] for i in keep])),
        labels=torch.tensor([class_names.index(c) for _, _, c, _ in kept], dtype=torch.int64),
        class_names=class_names,
        domains=torch.tensor([domain_names.index(d) for _, d, _, _ in kept], dtype=torch.int64)
        if has_domains
        else None,
        domain_names=domain_names,
        split=torch.tensor([s for *_, s in kept], dtype=torch.int64) if kept[0][3] is not None else None,
        skipped=skipped,
        source_format="folder",
    )
    raw.check(str(root))
    return raw
