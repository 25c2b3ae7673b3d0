"""Resizing to the configured size, through torchvision."""

from __future__ import annotations

import torch


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048, out: torch.Tensor | None = None) -> torch.Tensor:
    """Resize (N, 3, H, W) uint8 images to (N, 3, size, size) with antialiasing,
    chunk by chunk into ``out`` (allocated when not given)."""
    if images.shape[-2:] == (size, size):
        if out is None:
            return images
        out.copy_(images)
        return out
    # torchvision is imported here, not at module level: it costs ~1 s of
    # start-up that cache hits and same-size sources never need.
    from torchvision.transforms.v2 import functional as TF

    if out is None:
        out = torch.empty((len(images), images.shape[1], size, size), dtype=torch.uint8)
    for i in range(0, len(images), chunk):
        out[i : i + chunk] = TF.resize(images[i : i + chunk], [size, size], antialias=True)
    return out
