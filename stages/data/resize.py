"""Resizing to the configured size, through torchvision."""

from __future__ import annotations

import torch


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 2048) -> torch.Tensor:
    """Resize (N, 3, H, W) uint8 images to (N, 3, size, size) with antialiasing."""
    if images.shape[-2:] == (size, size):
        return images
    # torchvision is imported here, not at module level: it costs ~1 s of
    # start-up that cache hits and same-size sources never need.
    from torchvision.transforms.v2 import functional as TF

    return torch.cat(
        [TF.resize(images[i : i + chunk], [size, size], antialias=True) for i in range(0, len(images), chunk)]
    )
