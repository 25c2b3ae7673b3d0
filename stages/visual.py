"""PNG grids of images for artifacts and reports."""

from __future__ import annotations

import io

import torch


def denormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo per-channel normalisation and clamp to [0, 1]."""
    return (images.detach().float().cpu() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)


#: one colour per pseudo-domain in winner maps (colour-blind-safe, Okabe-Ito), repeated beyond 8
DOMAIN_COLOURS = (
    torch.tensor(
        [
            [230, 159, 0],
            [86, 180, 233],
            [0, 158, 115],
            [240, 228, 66],
            [0, 114, 178],
            [213, 94, 0],
            [204, 121, 167],
            [0, 0, 0],
        ],
        dtype=torch.float32,
    )
    / 255
)


def winner_map(alpha: torch.Tensor) -> torch.Tensor:
    """(M, 3, H, W) colour map of which domain wins each pixel, from alpha
    (M, D, C, H, W) averaged over channels: regions show as blocks of colour."""
    win = alpha.detach().float().cpu().mean(dim=2).argmax(dim=1)  # (M, H, W)
    return DOMAIN_COLOURS[win % len(DOMAIN_COLOURS)].permute(0, 3, 1, 2)


def grid_png(images: torch.Tensor, nrow: int, scale: int = 2) -> bytes:
    """PNG bytes of a grid of (N, 3, H, W) images in [0, 1], ``nrow`` per row."""
    from PIL import Image
    from torchvision.utils import make_grid  # lazy: torchvision's import is slow

    grid = make_grid(images, nrow=max(1, nrow), padding=1, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
