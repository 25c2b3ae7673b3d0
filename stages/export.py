"""Stage ``export``: a condensed set in the formats other tools read.

- ``imagefolder``: ``<out>/<class>/<class>_<k>.png``, un-normalised (and
  un-whitened for ZCA datasets) 8-bit RGB, loadable by torchvision's
  ``ImageFolder``;
- ``npz``: ``images`` (N, H, W, 3 uint8, as the PNGs), ``labels``,
  ``class_names``, and ``normalized`` (N, 3, H, W float32: the tensors the
  set was optimised as, to be fed to a network as they are) with ``mean``,
  ``std`` and ``zca``;
- ``ddranking``: DD-Ranking's layout, ``images.pt`` (the normalised
  tensors), ``labels.pt`` and, for MTT, ``lr.pt`` (the learned learning
  rate its evaluator trains with), written with ``torch.save`` because that
  is what DD-Ranking loads; chddl itself never loads them.

Every format also gets ``chddl_export.yaml``: which set, which
normalisation, and the evaluation learning rate.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

import numpy as np
import torch
import yaml

from stages.artifacts import Artifact
from stages.data.dataset import Dataset
from stages.errors import ChddlError

FORMATS = ("imagefolder", "npz", "ddranking")


def _pixels(art: Artifact, dataset: Dataset | None) -> np.ndarray:
    """(N, H, W, 3) uint8 of the set's images, back in pixel space."""
    images = art.tensor("images").float()
    if art.info.get("normalization", {}).get("zca"):
        if dataset is None:
            raise ChddlError(
                f"{art.name} lives in ZCA-whitened space and its dataset is not in this workspace; "
                f"pass --dataset to un-whiten it"
            )
        rgb = dataset.displayable(images)
    else:
        mean, std = art.tensor("mean").view(1, 3, 1, 1), art.tensor("std").view(1, 3, 1, 1)
        rgb = (images * std + mean).clamp(0, 1)
    return (rgb.permute(0, 2, 3, 1).numpy() * 255 + 0.5).astype(np.uint8)


def _write(art: Artifact, dataset: Dataset | None, fmt: str, folder: Path) -> None:
    labels = art.tensor("labels")
    names = list(art.info.get("class_names") or [str(i) for i in range(int(labels.max()) + 1)])
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
        )
    else:
        torch.save(art.tensor("images").float().clone(), folder / "images.pt")
        torch.save(labels.clone(), folder / "labels.pt")
        if art.config.get("base") == "mtt":
            torch.save(torch.tensor(float(art.info["eval_lr"])), folder / "lr.pt")
    meta = {
        "set": art.name,
        "format": fmt,
        "base": art.config.get("base"),
        "ipc": art.info.get("ipc"),
        "class_names": names,
        "eval_lr": art.info.get("eval_lr"),
        "normalization": art.info.get("normalization"),
    }
    (folder / "chddl_export.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def run(art: Artifact, out: Path, fmt: str, dataset: Dataset | None = None, force: bool = False) -> Path:
    """Write condensed set ``art`` to folder ``out`` in format ``fmt``; returns ``out``.

    ``out`` must not exist or be empty (``force`` replaces it). The files are
    written beside it and renamed into place, so a failed export leaves
    whatever was there untouched."""
    if fmt not in FORMATS:
        raise ChddlError(f"unknown export format '{fmt}'; valid: {', '.join(FORMATS)}")
    if art.stage != "condensed":
        raise ChddlError(
            f"{art.path} is a '{art.stage}' artifact; export takes a condensed set (from `chddl condense`)"
        )
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ChddlError(f"{out} exists and is not a folder; pass another --out")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ChddlError(f"{out} exists and is not empty; pass --force to replace it, or another --out")
    tmp = out.parent / f".{out.name}.export-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir(parents=True)
        _write(art, dataset, fmt, tmp)
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except OSError as exc:
        raise ChddlError(f"cannot write {out} ({exc.strerror}); pass a writable --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
