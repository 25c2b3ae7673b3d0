"""Stage ``export``: a condensed set in the formats other tools read.

- ``imagefolder``: ``<out>/<class>/<class>_<k>.png``, un-normalised (and
  un-whitened for ZCA datasets) 8-bit RGB, loadable by torchvision's
  ``ImageFolder``;
- ``npz``: ``images`` (N, H, W, 3 uint8, as the PNGs), ``labels``,
  ``class_names``, and ``normalized`` (N, 3, H, W float32: the tensors the
  set was optimised as, to be fed to a network as they are) with ``mean``,
  ``std`` and ``zca``; ``soft_labels`` (N, classes float32 logits) when the
  set carries soft labels (RDED);
- ``ddranking``: DD-Ranking's layout, ``images.pt`` (the normalised
  tensors), ``labels.pt``, ``soft_labels.pt`` (the logits, when the set
  carries soft labels) and, for MTT, ``lr.pt`` (the learned learning rate
  its evaluator trains with), written with ``torch.save`` because that is
  what DD-Ranking loads; chddl itself never loads them. For a dataset
  DD-Ranking knows (``stages.ddranking``: CIFAR-10/100, Tiny ImageNet),
  ``images.pt`` is normalised with DD-Ranking's statistics for it, the
  ones its real images get; otherwise (and for ZCA-whitened sets) it holds
  chddl's tensors.

Every format also gets ``chddl_export.yaml``: which set, which
normalisation (``ddranking`` also: which statistics ``images.pt`` carries),
the evaluation learning rate, the soft labels, and the files the export wrote.

An export only ever replaces an earlier export: a folder holding
``chddl_export.yaml`` and nothing but the files it lists. It refuses the
current directory and its ancestors, the home directory, ``/``, the
workspace (and anything inside or above it), and any other non-empty
folder, touching nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import yaml

from stages.artifacts import Artifact
from stages.data.dataset import Dataset
from stages.ddranking import STATISTICS, known_dataset, renormalised
from stages.errors import ChddlError
from stages.evaluate import carried_soft_labels
from stages.methods import METHODS
from stages.outputs import refuse_unsafe, write_swapped

FORMATS = ("imagefolder", "npz", "ddranking")
EXPORT_META = "chddl_export.yaml"


def _pixels(art: Artifact, dataset: Dataset | None) -> np.ndarray:
    """(N, H, W, 3) uint8 of the set's images, back in pixel space."""
    rgb = displayable(art, dataset)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def displayable(art: Artifact, dataset: Dataset | None = None) -> torch.Tensor:
    """The condensed set's images as (N, 3, H, W) RGB in [0, 1]; a ZCA-whitened set needs its ``dataset``."""
    images = art.tensor("images").float()
    if art.info.get("normalization", {}).get("zca"):
        if dataset is None:
            raise ChddlError(
                f"{art.name} lives in ZCA-whitened space and its dataset is not in this workspace; "
                f"pass --dataset to un-whiten it"
            )
        return dataset.displayable(images)
    mean, std = art.tensor("mean").view(1, 3, 1, 1), art.tensor("std").view(1, 3, 1, 1)
    return (images * std + mean).clamp(0, 1)


def _ddranking_images(art: Artifact, dataset: Dataset | None, names: list[str]) -> tuple[torch.Tensor, dict]:
    """``images.pt``'s tensors for DD-Ranking, and what they are (for ``chddl_export.yaml``)."""
    images = art.tensor("images").float()
    if art.info.get("normalization", {}).get("zca"):
        return images.clone(), {
            "dataset": None,
            "images": "chddl's ZCA-whitened tensors: DD-Ranking's use_zca fits its own whitening on the real "
            "data, so compare with care",
        }
    source = dataset.artifact.info.get("format") if dataset is not None else None
    known = known_dataset(names, int(images.shape[-1]), source)
    if known is None:
        return images.clone(), {
            "dataset": None,
            "images": "normalised with this dataset's own mean and std (normalization above): DD-Ranking does not "
            "know this dataset as chddl holds it",
        }
    mean, std = STATISTICS[known]
    return renormalised(images, art.tensor("mean"), art.tensor("std"), known), {
        "dataset": known,
        "images": f"normalised with DD-Ranking's statistics for {known} (mean {list(mean)}, std {list(std)}), "
        "as DD-Ranking normalises its real images",
        "mean": list(mean),
        "std": list(std),
    }


def _write(art: Artifact, dataset: Dataset | None, fmt: str, folder: Path) -> None:
    labels = art.tensor("labels")
    names = list(art.info.get("class_names") or [str(i) for i in range(int(labels.max()) + 1)])
    soft = carried_soft_labels(art)
    if fmt == "imagefolder":
        from PIL import Image

        count: dict[int, int] = {}
        for pixels, label in zip(_pixels(art, dataset), labels.tolist()):
            k = count[label] = count.get(label, -1) + 1
            (folder / names[label]).mkdir(exist_ok=True)
            Image.fromarray(pixels).save(folder / names[label] / f"{names[label]}_{k}.png")
    elif fmt == "npz":
        np.savez(
            folder / "condensed.npz",
            images=_pixels(art, dataset),
            labels=labels.numpy(),
            class_names=np.array(names),
            normalized=art.tensor("images").float().numpy(),
            mean=art.tensor("mean").numpy(),
            std=art.tensor("std").numpy(),
            zca=np.array(bool(art.info.get("normalization", {}).get("zca"))),
            **({"soft_labels": soft.numpy()} if soft is not None else {}),
        )
    else:
        images, ddranking = _ddranking_images(art, dataset, names)
        torch.save(images, folder / "images.pt")
        torch.save(labels.clone(), folder / "labels.pt")
        if soft is not None:
            torch.save(soft.clone(), folder / "soft_labels.pt")
        base = art.config.get("base")
        if base in METHODS and METHODS.get(base).learned_eval_lr:
            torch.save(torch.tensor(float(art.info["eval_lr"])), folder / "lr.pt")
    files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
    meta = {
        "set": art.name,
        "format": fmt,
        "base": art.config.get("base"),
        "ipc": art.info.get("ipc"),
        "class_names": names,
        "eval_lr": art.info.get("eval_lr"),
        "normalization": art.info.get("normalization"),
        "soft_labels": None
        if soft is None
        else "(N, classes) logits the set carries (RDED: the teacher's on each image; DATM: learned), "
        + ("soft_labels.pt" if fmt == "ddranking" else "in condensed.npz" if fmt == "npz" else "not exported"),
        **({"ddranking": ddranking} if fmt == "ddranking" else {}),
        "files": files,
    }
    (folder / EXPORT_META).write_text(yaml.safe_dump(meta, sort_keys=False))


def _legacy_files(meta: dict) -> set[str] | None:
    """What an export written before ``files`` was recorded may hold, from its format (None: unknown format)."""
    names = [str(n) for n in meta.get("class_names") or []]
    return {
        "npz": {"condensed.npz"},
        "ddranking": {"images.pt", "labels.pt", "lr.pt"},
        "imagefolder": {f"{n}/{n}_" for n in names},  # prefixes: <class>/<class>_<k>.png
    }.get(meta.get("format"))


def is_export(folder: Path) -> bool:
    """Whether ``folder`` holds an earlier chddl export and nothing else (what a replacement may delete)."""
    try:
        meta = yaml.safe_load((folder / EXPORT_META).read_text())
    except (OSError, yaml.YAMLError):
        return False
    if not isinstance(meta, dict):
        return False
    present = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() or p.is_symlink()} - {EXPORT_META}
    dirs = {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_dir() and not p.is_symlink()}
    listed = meta.get("files")
    if isinstance(listed, list):
        allowed = {str(f) for f in listed}
        ok = present <= allowed
    else:
        allowed = _legacy_files(meta)
        if allowed is None:
            return False
        ok = all(f in allowed or (f.endswith(".png") and any(f.startswith(a) for a in allowed)) for f in present)
    parents = {str(Path(f).parent) for f in allowed} | {"."}
    return ok and dirs <= parents


def run(
    art: Artifact,
    out: Path,
    fmt: str,
    dataset: Dataset | None = None,
    force: bool = False,
    workspace: Path | None = None,
) -> Path:
    """Write condensed set ``art`` to folder ``out`` in format ``fmt``; returns ``out``.

    ``out`` must not exist, be empty, or (with ``force``) hold an earlier
    export and nothing else; unsafe targets are refused (module docstring).
    The files are written beside ``out`` and swapped in, so a failed export
    leaves whatever was there untouched."""
    if fmt not in FORMATS:
        raise ChddlError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    if art.stage != "condensed":
        raise ChddlError(
            f"{art.path} is a '{art.stage}' artifact; export takes a condensed set (from `chddl condense`)"
        )
    out = Path(out)
    refuse_unsafe(out, workspace)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise ChddlError(f"{out} exists and is not a folder; pass another --out")
    replace_old = out.is_dir() and any(out.iterdir())
    if replace_old and not is_export(out):
        raise ChddlError(
            f"{out} holds files that are not a chddl export; export only replaces an earlier export: pass a new "
            "or empty --out"
        )
    if replace_old and not force:
        raise ChddlError(
            f"{out} holds an earlier export and is not empty; pass --force to replace it, or another --out"
        )
    write_swapped(out, lambda tmp: _write(art, dataset, fmt, tmp), "export")
    return out
