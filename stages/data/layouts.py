"""Which image files of a folder tree make the dataset, with their class, domain and split.

The layouts the published datasets are distributed in, detected in this order:

- Tiny ImageNet: ``wnids.txt``, ``train/<wnid>/images/*.JPEG``, ``val/images`` labelled by
  ``val/val_annotations.txt`` (the test split), class names from ``words.txt``; the unlabelled ``test/`` is not
  used.
- Per-domain split lists, as DomainNet (``<domain>_train.txt`` / ``<domain>_test.txt``) and PACS
  (``<domain>_train_kfold.txt`` / ``_crossval_kfold.txt`` / ``_test_kfold.txt``) ship them, beside the domain
  folders or one folder away: lines ``<domain>/<class>/<file> <label>``, labels from 0 (DomainNet) or 1 (PACS).
  The lists define the split; images in none of them are not used. PACS's crossval lists count as train unless
  ``crossval`` says otherwise.
- Class folders, optionally under domain folders and under ``train/`` + ``test/`` (or ``val/``, ImageNet's
  name for its labelled held-out split) folders: Office-Home and VLCS as unpacked, ImageNet-style trees, CIFAR
  exported as JPEGs. ``train.txt`` + ``test.txt`` at the root (or in ``splits/``) give the split of a tree
  without split folders. Files that are not images (CSV, text) are ignored.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from stages.data.images import IMAGE_SUFFIXES
from stages.data.raw import TEST, TRAIN
from stages.errors import ChddlError

#: what a ``crossval`` split list becomes
CROSSVAL = ("train", "test", "ignore")
SPLIT_DIRS = {"train": TRAIN, "test": TEST}
_LIST = re.compile(r"^(?P<domain>.+?)_(?P<split>train|test|crossval|val)(?:_kfold)?\.txt$")


@dataclass
class Listing:
    """The files of a dataset before decoding: one (path, domain, class, split) per image, split None when the
    source defines none; ``layout`` names the layout read."""

    entries: list[tuple[Path, str | None, str, int | None]]
    class_names: list[str]
    domain_names: list[str] | None
    layout: str


def list_images(root: Path, crossval: str = "train") -> Listing:
    """The images under ``root`` in the first layout that matches (module docstring)."""
    if (root / "wnids.txt").is_file() and (root / "val" / "val_annotations.txt").is_file():
        return _tiny_imagenet(root)
    lists = _split_list_files(root)
    if lists:
        return _from_split_lists(root, lists, crossval)
    return _class_folders(root)


def image_files(root: Path) -> list[Path]:
    """Every image file under ``root`` (hidden files and folders skipped), in a stable order."""
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files += [
            Path(dirpath, f)
            for f in sorted(filenames)
            if Path(f).suffix.lower() in IMAGE_SUFFIXES and not f.startswith(".")
        ]
    return files


def _read_lines(path: Path) -> list[str]:
    try:
        lines = [ln.strip() for ln in path.read_text().splitlines()]
    except (OSError, UnicodeDecodeError) as exc:
        raise ChddlError(f"cannot read {path} ({getattr(exc, 'strerror', None) or exc}); fix or remove it") from None
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ChddlError(f"{path} is empty; it must list the images of its split (or be removed)")
    return lines


def _tiny_imagenet(root: Path) -> Listing:
    wnids = sorted(_read_lines(root / "wnids.txt"))
    words = {}
    if (root / "words.txt").is_file():
        for line in _read_lines(root / "words.txt"):
            wnid, _, text = line.partition("\t")
            words[wnid] = text.split(",")[0].strip() or wnid
    entries: list[tuple[Path, str | None, str, int | None]] = []
    for wnid in wnids:
        folder = root / "train" / wnid / "images"
        files = image_files(folder) if folder.is_dir() else []
        if not files:
            raise ChddlError(
                f"class folder {folder} has no image files; add its images or remove {wnid} from wnids.txt"
            )
        entries += [(f, None, wnid, TRAIN) for f in files]
    known = set(wnids)
    annotations = root / "val" / "val_annotations.txt"
    for number, line in enumerate(_read_lines(annotations), 1):
        parts = line.split("\t") if "\t" in line else line.split()
        if len(parts) < 2:
            raise ChddlError(f"{annotations} line {number} is not '<file> <wnid> ...': {line!r}")
        if parts[1] not in known:
            raise ChddlError(f"{annotations} line {number} names class {parts[1]}, which wnids.txt does not list")
        path = root / "val" / "images" / parts[0]
        if not path.is_file():
            raise ChddlError(f"{annotations} line {number} names {path}, which does not exist")
        entries.append((path, None, parts[1], TEST))
    names = [words.get(w, w) for w in wnids]
    if len(set(names)) < len(names):  # two wnids share a first synonym: keep them apart
        names = [f"{words.get(w, w)} ({w})" for w in wnids]
    rename = dict(zip(wnids, names))
    return Listing([(f, d, rename[c], s) for f, d, c, s in entries], names, None, "tiny-imagenet")


def _split_list_files(root: Path) -> dict[Path, tuple[str, str]]:
    """Per-domain split lists in ``root`` or a folder just below it: {file: (domain, split)}."""
    for folder in [root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))]:
        found = {}
        for f in sorted(folder.glob("*.txt")):
            m = _LIST.match(f.name)
            if m:
                found[f] = (m["domain"], "crossval" if m["split"] == "val" else m["split"])
        splits = {s for _, s in found.values()}
        if found and "train" in splits and "test" in splits:
            return found
    return {}


def _image_root(root: Path, lists: dict[Path, tuple[str, str]], first: str) -> Path:
    """The folder the listed paths are relative to: ``root``, the lists' folder, or a folder below either."""
    folders = {root, *(f.parent for f in lists)}
    candidates = [*sorted(folders)] + [
        p for folder in sorted(folders) for p in sorted(folder.iterdir()) if p.is_dir() and not p.name.startswith(".")
    ]
    for base in candidates:
        if (base / first).is_file():
            return base
    raise ChddlError(
        f"{next(iter(lists))} names {first}, which exists neither under {root} nor a folder below it; put the "
        "images where the split lists expect them"
    )


def _from_split_lists(root: Path, lists: dict[Path, tuple[str, str]], crossval: str) -> Listing:
    if crossval not in CROSSVAL:
        raise ChddlError(f"unknown --crossval '{crossval}'; valid: {', '.join(CROSSVAL)}")
    rows = []  # (list file, line number, relative path, label)
    for file, (_, split) in lists.items():
        for number, line in enumerate(_read_lines(file), 1):
            parts = line.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].lstrip("-").isdigit():
                raise ChddlError(f"{file} line {number} is not '<path> <label>': {line!r}")
            rows.append((file, number, parts[0].lstrip("/"), int(parts[1]), split))
    base = _image_root(root, lists, rows[0][2])
    classes: dict[int, str] = {}
    for file, number, rel, label, _ in rows:
        parts = Path(rel).parts
        if len(parts) < 3:
            raise ChddlError(f"{file} line {number}: {rel} is not <domain>/<class>/<file>")
        if classes.setdefault(label, parts[-2]) != parts[-2]:
            raise ChddlError(
                f"{file} line {number} gives label {label} to class {parts[-2]}, elsewhere to {classes[label]}"
            )
    count = len(set(classes.values()))
    first = 0 if min(classes) == 0 else 1  # DomainNet counts from 0, PACS from 1
    for file, number, _, label, _ in rows:
        if not first <= label < first + count:
            raise ChddlError(
                f"{file} line {number}: label {label} is outside the class range {first}..{first + count - 1} "
                f"({count} classes)"
            )
    class_names = [classes[k] for k in sorted(classes)]
    split_of = {"train": TRAIN, "test": TEST, "crossval": {"train": TRAIN, "test": TEST, "ignore": None}[crossval]}
    entries: list[tuple[Path, str | None, str, int | None]] = []
    seen: dict[str, Path] = {}
    for file, number, rel, label, split in rows:
        path = base / rel
        if not path.is_file():
            raise ChddlError(f"{file} line {number} names {path}, which does not exist")
        if rel in seen:
            raise ChddlError(f"{file} line {number} lists {rel}, which {seen[rel]} lists too; each image in one split")
        seen[rel] = file
        if split_of[split] is not None:
            entries.append((path, Path(rel).parts[-3], classes[label], split_of[split]))
    domain_names = sorted({d for _, d, _, _ in entries})
    layout = "pacs-kfold" if any(f.name.endswith("_kfold.txt") for f in lists) else "domain-split-lists"
    return Listing(entries, class_names, domain_names, layout)


def _class_folders(root: Path) -> Listing:
    split_roots = {name: root / name for name in SPLIT_DIRS if (root / name).is_dir()}
    if "train" in split_roots and "test" not in split_roots and (root / "val").is_dir():
        split_roots["test"] = root / "val"  # ImageNet-style: val is the labelled held-out split
    elif "train" in split_roots and "test" in split_roots and (root / "val").is_dir():
        raise ChddlError(
            f"{root} has train/, val/ and test/ folders: which is the test split is ambiguous; move or remove one"
        )
    if split_roots and set(split_roots) != set(SPLIT_DIRS):
        raise ChddlError(
            f"{root} has a '{next(iter(split_roots))}' folder but not both train/ and test/ (or val/); add the other "
            "or remove it"
        )
    bases = [(p, SPLIT_DIRS[n]) for n, p in split_roots.items()] if split_roots else [(root, None)]
    entries: list[tuple[Path, str | None, str, int | None]] = []
    depths = set()
    for base, split in bases:
        for f in image_files(base):
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
    has_domains = entries[0][1] is not None
    _check_class_folders([b for b, _ in bases], entries, has_domains)
    if not split_roots and (lists := _root_split_lists(root)) is not None:
        rel = [str(f.relative_to(root)) for f, *_ in entries]
        listed = lists[TRAIN] | lists[TEST]
        missing = sorted(listed - set(rel))
        if missing:
            raise ChddlError(f"split list names {len(missing)} file(s) not found under {root}, e.g. {missing[0]}")
        entries = [
            (f, d, c, TRAIN if r in lists[TRAIN] else TEST) for (f, d, c, _), r in zip(entries, rel) if r in listed
        ]
    class_names = sorted({c for _, _, c, _ in entries})
    domain_names = sorted({d for _, d, _, _ in entries if d is not None}) if has_domains else None
    return Listing(entries, class_names, domain_names, "class-folders")


def _check_class_folders(bases: list[Path], entries: list, has_domains: bool) -> None:
    with_images = {f.parent for f, *_ in entries}
    level = 2 if has_domains else 1
    for base in bases:
        for cls_dir in base.glob("/".join(["*"] * level)):
            if cls_dir.is_dir() and not cls_dir.name.startswith(".") and cls_dir not in with_images:
                raise ChddlError(f"class folder {cls_dir} has no image files; add images or remove the folder")


def _root_split_lists(root: Path) -> dict[int, set[str]] | None:
    for base in (root, root / "splits"):
        train, test = base / "train.txt", base / "test.txt"
        if train.is_file() and test.is_file():
            return {
                split: {str(Path(line.split()[0])) for line in _read_lines(file)}
                for split, file in ((TRAIN, train), (TEST, test))
            }
    return None
