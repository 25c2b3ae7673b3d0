"""PNG grids of images for artifacts and reports."""

from __future__ import annotations

import io

import torch


def denormalize(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Undo per-channel normalisation and clamp to [0, 1]."""
    return (images.detach().float().cpu() * std.view(1, -1, 1, 1) + mean.view(1, -1, 1, 1)).clamp(0, 1)


def grid_png(images: torch.Tensor, nrow: int, scale: int = 2) -> bytes:
    """PNG bytes of a grid of (N, 3, H, W) images in [0, 1], ``nrow`` per row."""
    from torchvision.utils import make_grid  # lazy: torchvision's import is slow
    from PIL import Image

    grid = make_grid(images, nrow=max(1, nrow), padding=1, pad_value=1.0)
    array = (grid.permute(1, 2, 0).numpy() * 255 + 0.5).astype("uint8")
    img = Image.fromarray(array)
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()
