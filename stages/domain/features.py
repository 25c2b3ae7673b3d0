"""Per-image domain features: FFT amplitude statistics and ConvNet log-variances.

All functions take (N, 3, H, W) uint8 images and work chunk by chunk so
memory stays bounded whatever N is.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from stages.models import create_model
from stages.progress import NullProgress, Progress


def crop_size(height: int, width: int, beta: float) -> tuple[int, int]:
    """Side lengths of the central crop: round(beta * side), at least 1."""
    return max(1, math.floor(beta * height + 0.5)), max(1, math.floor(beta * width + 0.5))


def amplitude_crop(x: torch.Tensor, beta: float) -> torch.Tensor:
    """Central ``beta`` window of the shifted 2-D FFT amplitude, per channel.

    ``x`` is (n, C, H, W) float in [0, 1]; the result is (n, C, h, w). After
    ``fftshift`` the zero frequency sits at (H // 2, W // 2); the window is
    centred there (for even window sides, one more row/column lies before it).
    """
    amp = torch.fft.fftshift(torch.fft.fft2(x).abs(), dim=(-2, -1))
    H, W = x.shape[-2:]
    h, w = crop_size(H, W, beta)
    top, left = H // 2 - h // 2, W // 2 - w // 2
    return amp[..., top : top + h, left : left + w]


def _chunked(
    images: torch.Tensor,
    fn: Callable[[torch.Tensor], torch.Tensor],
    chunk: int,
    device: torch.device,
    progress: Progress,
    what: str,
) -> torch.Tensor:
    outs = []
    with progress.task(what, total=len(images)) as task:
        for i in range(0, len(images), chunk):
            part = images[i : i + chunk].to(device, non_blocking=True).float().div_(255.0)
            outs.append(fn(part).to("cpu", torch.float64))
            task.advance(len(part))
    return torch.cat(outs)


def fft_scores(
    images: torch.Tensor,
    beta: float,
    chunk: int = 4096,
    device: torch.device = torch.device("cpu"),
    progress: Progress = NullProgress(),
) -> torch.Tensor:
    """mu_n: mean of the central amplitude window over window and channels, (N,) float64."""
    return _chunked(
        images, lambda x: amplitude_crop(x, beta).mean(dim=(1, 2, 3)), chunk, device, progress, "FFT amplitude"
    )


def fft_log_features(
    images: torch.Tensor,
    beta: float,
    chunk: int = 4096,
    device: torch.device = torch.device("cpu"),
    progress: Progress = NullProgress(),
) -> torch.Tensor:
    """Flattened log-amplitude of the central window, (N, C*h*w) float64 (for K-Means)."""
    return _chunked(
        images,
        lambda x: torch.log(amplitude_crop(x, beta) + 1e-6).flatten(1),
        chunk,
        device,
        progress,
        "FFT log-amplitude",
    )


def logvar_features(
    images: torch.Tensor,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    layers: int = 2,
    seed: int = 0,
    chunk: int = 1024,
    device: torch.device = torch.device("cpu"),
    progress: Progress = NullProgress(),
) -> torch.Tensor:
    """Log of the per-channel spatial variance of the first ``layers`` blocks of a
    randomly initialised (seeded) ConvNet: (N, layers * width) float64."""
    net = create_model("convnet", num_classes=2, image_size=images.shape[-1], seed=seed).to(device).eval()
    m = torch.tensor(mean, device=device).view(1, -1, 1, 1)
    s = torch.tensor(std, device=device).view(1, -1, 1, 1)

    @torch.no_grad()
    def fn(x: torch.Tensor) -> torch.Tensor:
        outs = net.block_outputs((x - m) / s, layers)
        return torch.cat([torch.log(o.var(dim=(2, 3)) + 1e-6) for o in outs], dim=1)

    return _chunked(images, fn, chunk, device, progress, "ConvNet log-variance")
