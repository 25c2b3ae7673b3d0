"""RDED (Sun et al., CVPR 2024): realistic and diverse patches, selected by a teacher and stitched, with no
optimisation loop.

For each class: ``rded_candidates`` random real training images of the class, ``rded_crops`` random
square crops of each (area a uniform fraction in [``rded_min_scale``, 1] of the image, resized to
1/``rded_factor`` of the side); each crop is scored by the teacher's cross-entropy to the class (a crop
smaller than the image is scored zero-padded to the image's size, centred), each image keeps its best
crop, the ``ipc x factor^2`` best of those are kept, and each synthetic image stitches ``factor x
factor`` of them: the image at cell k of image i is the (k * ipc + i)-th best. The teacher's logits of
every cell (zero-padded as when scored) are stored with the set as ``region_logits`` (N, factor^2,
classes): RDED's region-level soft labels. Evaluating with the teacher's soft labels (``evaluate
--soft-labels``) is RDED's protocol.

CHDDL does not apply: nothing is optimised, so there is no domain loss to add (refused in one line).
Randomness is drawn per class from the seed and the class, so a class's images do not depend on which
other classes are made, nor on how many torchrun processes share the classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from stages.config import option, require
from stages.methods.base import METHODS, BaseMethod, MatchBatch, MethodContext, MethodSpec, RealPool, Synthesized


@dataclass
class RDEDOptions:
    """RDED's own settings."""

    rded_candidates: int = option(300, "rded: real images drawn per class (the reference's --mipc for CIFAR)")
    rded_crops: int = option(5, "rded: random crops per drawn image; the teacher keeps its best (--num-crop)")
    rded_factor: int = option(
        1, "rded: crops per side stitched into one image (factor x factor): 1 at 32-64 px, 2 at 128 px and up"
    )
    rded_min_scale: float = option(0.08, "rded: smallest crop area, as a fraction of the image")


def _validate(cfg) -> None:
    require(cfg.rded_candidates >= 1, f"--rded-candidates must be at least 1, got {cfg.rded_candidates}")
    require(cfg.rded_crops >= 1, f"--rded-crops must be at least 1, got {cfg.rded_crops}")
    require(cfg.rded_factor >= 1, f"--rded-factor must be at least 1, got {cfg.rded_factor}")
    require(0 < cfg.rded_min_scale <= 1, f"--rded-min-scale must be in (0, 1], got {cfg.rded_min_scale}")
    require(
        not cfg.domain_aware,
        "CHDDL does not apply to --base rded: RDED optimises nothing, so there is no domain loss to add; "
        "leave out --domain-aware",
    )


def crop_boxes(n: int, size: int, min_scale: float, g: torch.Generator) -> torch.Tensor:
    """(n, 3) random square crops (top, left, side) of a ``size`` x ``size`` image: the area a uniform
    fraction in [min_scale, 1] of the image's, the position uniform."""
    scale = min_scale + (1 - min_scale) * torch.rand(n, generator=g, dtype=torch.float64)
    side = (scale * size * size).sqrt().round().clamp(1, size).long()
    top = (torch.rand(n, generator=g, dtype=torch.float64) * (size - side + 1)).floor().long()
    left = (torch.rand(n, generator=g, dtype=torch.float64) * (size - side + 1)).floor().long()
    return torch.stack([top, left, side], 1)


def cut(images: torch.Tensor, boxes: torch.Tensor, out: int) -> torch.Tensor:
    """Each image's box, resized (bilinear, antialiased: torchvision's ``resized_crop``) to ``out`` x ``out``;
    the boxes of one side are cut and resized together."""
    result = images.new_empty(len(images), images.shape[1], out, out)
    boxes = boxes.to(images.device)
    for side in boxes[:, 2].unique().tolist():
        which = torch.nonzero(boxes[:, 2] == side).flatten()
        span = torch.arange(side, device=images.device)
        rows = (boxes[which, 0, None] + span)[:, None, :, None]  # (n, 1, side, 1)
        cols = (boxes[which, 1, None] + span)[:, None, None, :]  # (n, 1, 1, side)
        chans = torch.arange(images.shape[1], device=images.device)[None, :, None, None]
        crops = images[which[:, None, None, None], chans, rows, cols]
        result[which] = F.interpolate(crops, size=(out, out), mode="bilinear", align_corners=False, antialias=True)
    return result


def padded(patches: torch.Tensor, size: int) -> torch.Tensor:
    """Patches zero-padded (in the normalised space) to ``size`` x ``size``, centred."""
    extra = size - patches.shape[-1]
    before = extra // 2
    return F.pad(patches, (before, extra - before, before, extra - before))


def cell_sides(size: int, factor: int) -> list[int]:
    """The sides of the ``factor`` cells along an image of ``size`` pixels (the first ones a pixel larger
    when ``size`` does not divide)."""
    return [size // factor + (1 if i < size % factor else 0) for i in range(factor)]


def stitch(patches: torch.Tensor, size: int, factor: int, n: int) -> torch.Tensor:
    """n images of ``factor x factor`` cells; cell k of image i is patch k * n + i (resized to the cell)."""
    out = patches.new_zeros(n, patches.shape[1], size, size)
    sides, k, top = cell_sides(size, factor), 0, 0
    for h in sides:
        left = 0
        for w in sides:
            out[:, :, top : top + h, left : left + w] = F.interpolate(patches[k * n : (k + 1) * n], size=(h, w))
            left, k = left + w, k + 1
        top += h
    return out


def cells(images: torch.Tensor, factor: int) -> torch.Tensor:
    """(N, factor^2, C, size, size): each image's cells, each zero-padded to the image's size, centred."""
    size, sides = images.shape[-1], cell_sides(images.shape[-1], factor)
    out, top = [], 0
    for h in sides:
        left = 0
        for w in sides:
            region = images[:, :, top : top + h, left : left + w]
            extra_h, extra_w = size - h, size - w
            out.append(F.pad(region, (extra_w // 2, extra_w - extra_w // 2, extra_h // 2, extra_h - extra_h // 2)))
            left += w
        top += h
    return torch.stack(out, 1)


@torch.no_grad()
def logits_of(teacher: torch.nn.Module, images: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """The teacher's logits of ``images``, in chunks."""
    return torch.cat([teacher(images[i : i + chunk]) for i in range(0, len(images), chunk)])


class RDED(BaseMethod):
    """Training-free: the set is made by :meth:`synthesize`; there is no loss to optimise."""

    def __init__(self, teacher: torch.nn.Module, candidates: int, crops: int, factor: int, min_scale: float):
        self.teacher = teacher.eval()
        self.candidates, self.crops, self.factor, self.min_scale = candidates, crops, factor, min_scale

    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:  # noqa: D102
        raise RuntimeError("RDED has no optimisation loop")

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:  # noqa: D102
        raise RuntimeError("RDED has no loss")

    @torch.no_grad()
    def synthesize_class(self, real: torch.Tensor, label: int, ipc: int, g: torch.Generator) -> torch.Tensor:
        """``ipc`` stitched images of class ``label`` from its drawn real images ``real`` (normalised)."""
        size, factor = real.shape[-1], self.factor
        n_real, m = len(real), self.crops
        boxes = crop_boxes(n_real * m, size, self.min_scale, g)
        patches = cut(real.repeat_interleave(m, 0), boxes, size // factor)  # image j's crops are rows j*m..j*m+m-1
        target = torch.full((len(patches),), label, dtype=torch.long, device=patches.device)
        ce = F.cross_entropy(logits_of(self.teacher, padded(patches, size)), target, reduction="none")
        best = ce.view(n_real, m).argmin(1)
        rows = torch.arange(n_real, device=best.device) * m + best
        keep = rows[torch.argsort(ce[rows], stable=True)[: ipc * factor * factor]]
        chosen = patches[keep]
        if len(chosen) < ipc * factor * factor:  # fewer drawn images than cells: reuse the best ones in turn
            chosen = chosen[torch.arange(ipc * factor * factor, device=chosen.device) % len(chosen)]
        return stitch(chosen, size, factor, ipc)

    def synthesize(self, pool: RealPool, classes: list[int], ipc: int, generator_of, progress_step=None) -> Synthesized:
        """Each of ``classes``' ``ipc`` images (rows c * ipc ... of the set; the other rows zero) and the
        teacher's region logits of them."""
        labels = pool.labels.cpu()
        num_classes = int(labels.max()) + 1
        size = pool.images.shape[-1]
        images = torch.zeros(num_classes * ipc, pool.images.shape[1], size, size, device=pool.images.device)
        for c in classes:
            g = generator_of(c)
            members = torch.nonzero(labels == c).flatten()
            drawn = members[torch.randperm(len(members), generator=g)[: self.candidates]]
            images[c * ipc : (c + 1) * ipc] = self.synthesize_class(
                pool.images[drawn.to(pool.images.device)], c, ipc, g
            )
            if progress_step is not None:
                progress_step()
        rows = torch.cat([torch.arange(c * ipc, (c + 1) * ipc) for c in classes]).to(images.device)
        mine = images[rows]
        region_logits = torch.zeros(len(images), self.factor**2, num_classes, device=images.device)
        region_logits[rows] = logits_of(self.teacher, cells(mine, self.factor).flatten(0, 1)).view(
            len(rows), self.factor**2, -1
        )
        ce = F.cross_entropy(logits_of(self.teacher, mine), (rows // ipc).to(mine.device), reduction="sum")
        return Synthesized(images, ce, {"region_logits": region_logits})


def _build(ctx: MethodContext) -> RDED:
    if ctx.teacher is None:
        raise ValueError("RDED needs a teacher")
    c = ctx.cfg
    return RDED(ctx.teacher, c.rded_candidates, c.rded_crops, c.rded_factor, c.rded_min_scale)


METHODS.register("rded")(
    MethodSpec(
        name="rded",
        title="RDED",
        summary="training-free: a teacher's most realistic real crops, stitched (needs chddl train-teacher)",
        build=_build,
        # nothing is optimised: the loop's settings are placeholders, left out of the set's key
        defaults={"iterations": 1, "lr_img": 1.0, "dsa": False, "lam": 1.0, "domain_aware": False},
        theta_prime=("shared",),
        theta_prime_why="RDED has no domain loss",
        options_class=RDEDOptions,
        ignores=(
            "iterations",
            "lr_img",
            "momentum_img",
            "batch_real",
            "share_real",
            "dsa",
            "dsa_strategy",
            "arch",
            "init",
            "clip_grad",
            "nan_retries",
            "compile",
        ),
        needs="teacher",
        continues=False,
        validate=_validate,
        synthesizes=True,
    )
)
