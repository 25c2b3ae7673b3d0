"""RDED fidelity: chddl's RDED beside the reference code's selection and stitching, on the same data, the
same teacher and the same evaluation.

Needs the reference repository checked out in the ignored folder .reference/RDED
(``git clone https://github.com/LINs-lab/RDED .reference/RDED``) and a workspace holding a dataset and a
teacher (``chddl -w WS label DATA && chddl -w WS train-teacher``). Then:

1. ours: ``chddl condense --base rded`` (the library call);
2. the reference: per class, ``--candidates`` random training images of the class, each cut by the
   reference's ``MultiRandomCrop`` (torchvision's RandomResizedCrop, square) into ``--crops`` crops, put in
   the dataset's normalisation (the teacher's), then the reference's ``selector`` (teacher cross-entropy,
   best crop per image, the best ones) and ``mix_images``; stored as a condensed set beside ours (the same
   metadata, its images);
3. both evaluated by ``chddl evaluate --soft-labels TEACHER`` with the same runs and epochs.

The reference's code is imported from .reference/RDED at run time (its CUDA calls mapped to the CPU); none
of it is part of chddl.

    python bench/rded_fidelity.py WS --ipc 10 --runs 5 --epochs 300
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch
from _tree import ROOT

REFERENCE = ROOT / ".reference" / "RDED"


def _reference_functions():
    """The reference's MultiRandomCrop, selector and mix_images (its module parses sys.argv and makes
    folders in the working directory when imported: both kept away from ours)."""
    if not (REFERENCE / "synthesize" / "utils.py").exists():
        raise SystemExit(f"the reference is not checked out at {REFERENCE}; see this script's docstring")
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference moves tensors to CUDA: stay on the CPU
    argv, cwd = sys.argv, os.getcwd()
    sys.path.insert(0, str(REFERENCE))
    with tempfile.TemporaryDirectory() as scratch:  # the folders its import makes go with it
        try:
            sys.argv = ["rded"]
            os.chdir(scratch)
            from synthesize import utils  # noqa: PLC0415
        finally:
            sys.argv = argv
            os.chdir(cwd)
    return utils.MultiRandomCrop, utils.selector, utils.mix_images


def reference_set(dataset, teacher, ipc: int, candidates: int, crops: int, factor: int, seed: int) -> torch.Tensor:
    """The reference's RDED images (normalised as the dataset), class by class."""
    multi_crop, selector, mix_images = _reference_functions()
    torch.manual_seed(seed)  # RandomResizedCrop draws from torch's global generator
    size = dataset.size
    mean = torch.tensor(dataset.mean).view(1, 3, 1, 1)
    std = torch.tensor(dataset.std).view(1, 3, 1, 1)
    cropper = multi_crop(num_crop=crops, size=size, factor=factor)
    train = dataset.train_indices
    labels = dataset.labels[train]
    out = []
    with torch.no_grad():
        for c in range(dataset.num_classes):
            members = train[labels == c]
            drawn = members[torch.randperm(len(members))[:candidates]]
            pixels = dataset.images[drawn].float() / 255.0
            patches = torch.stack([cropper(x) for x in pixels])  # (candidates, crops, 3, s, s)
            patches = (patches - mean.unsqueeze(0)) / std.unsqueeze(0)
            chosen = selector(ipc * factor**2, teacher, patches, torch.full((len(drawn),), c), size, m=crops)
            out.append(mix_images(chosen, size, factor, ipc))
    return torch.cat(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workspace")
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--candidates", type=int, default=300)
    p.add_argument("--crops", type=int, default=5)
    p.add_argument("--factor", type=int, default=1)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    from beside import score, store_beside

    from stages import api
    from stages.artifacts import Workspace
    from stages.data.dataset import load_dataset
    from stages.inputs import resolve
    from stages.teacher import load_teacher

    ws = Workspace(Path(args.workspace))
    settings = {"rded_candidates": args.candidates, "rded_crops": args.crops, "rded_factor": args.factor}
    started = time.monotonic()
    ours = api.condense(workspace=ws, base="rded", ipc=args.ipc, domain_aware=False, seed=args.seed, **settings)
    ours_s = time.monotonic() - started
    art = ours.artifact
    dataset = load_dataset(resolve(ws, "dataset", None))
    teacher_art = resolve(ws, "teacher", None)
    teacher = load_teacher(teacher_art, dataset)
    started = time.monotonic()
    images = reference_set(dataset, teacher, args.ipc, args.candidates, args.crops, args.factor, args.seed)
    reference_s = time.monotonic() - started
    tensors = {k: v for k, v in art.tensors().items() if k != "region_logits"} | {"images": images}
    ref = store_beside(ws, art, "LINs-lab/RDED", settings, tensors, args.seed, reference_s)
    result = {"ours_condense_s": round(ours_s, 2), "reference_condense_s": round(reference_s, 2)}
    evaluate = {"soft_labels": str(teacher_art.path), "runs": args.runs, "epochs": args.epochs}
    result |= score(ws, {"ours": art, "reference": ref}, **evaluate)
    result["teacher_test_acc"] = teacher_art.metrics.get("test_acc")
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
