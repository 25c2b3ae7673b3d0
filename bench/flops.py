"""Floor estimates: the floating-point work of a computation (convolutions and matrix products, as torch's
FlopCounterMode counts them) against the rate at which this machine runs ConvNet-3's own convolutions.

``floor = flops / conv_rate()`` is how fast the computation could go if every counted operation ran at the
rate of a bare convolution at its shapes, with nothing else (norms, activations, copies) costing any time: a
lower bound on its time here, which no reordering or fusion of the same arithmetic can beat.
"""

from __future__ import annotations

import time
from typing import Callable

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode


class _GlobalOnly:
    """Stands in for FlopCounterMode's per-module tracker: every count goes to its global total, and no module
    hooks are set (their backward hooks fail where a gradient is taken inside a backward pass, as the
    recomputing paths do)."""

    parents = {"Global"}

    def __enter__(self) -> "_GlobalOnly":
        return self

    def __exit__(self, *exc) -> bool:
        return False


def count_flops(fn: Callable[[], object]) -> int:
    """Floating-point operations of the convolutions and matrix products that ``fn()`` runs (eager)."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()
    with counter:
        fn()
    return counter.get_total_flops()


def conv_rate(batch: int = 256, width: int = 128, size: int = 32, rounds: int = 10) -> float:
    """FLOP/s of ConvNet-3's three 3x3 convolutions (3 -> width at ``size`` px, then width -> width at
    size / 2 and size / 4), channels-last, forward and both backward products (input and weight), best of
    ``rounds``: the rate the network's arithmetic can reach on this machine."""
    g = torch.Generator().manual_seed(0)
    layers = [(3, size), (width, size // 2), (width, size // 4)]
    calls = []
    for c_in, px in layers:
        x = torch.randn(batch, c_in, px, px, generator=g).contiguous(memory_format=torch.channels_last)
        w = torch.randn(width, c_in, 3, 3, generator=g).contiguous(memory_format=torch.channels_last)
        x.requires_grad_(True), w.requires_grad_(True)
        calls.append((x, w))

    def run() -> None:
        for x, w in calls:
            out = F.conv2d(x, w, padding=1)
            torch.autograd.grad(out, (x, w), torch.ones_like(out))

    flops = count_flops(run)
    run()  # warm-up: oneDNN picks its kernels on the first call
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - start)
    return flops / best


def floor_report(name: str, flops: float, seconds: float, rate: float, target: float | None = None) -> str:
    """One line: the work, the measured time, the floor at ``rate``, and (when given) a target time."""
    floor = flops / rate
    line = (
        f"{name}: {flops / 1e9:.1f} GFLOP, measured {seconds:.3f} s ({flops / seconds / 1e9:.0f} GFLOP/s), "
        f"floor at {rate / 1e9:.0f} GFLOP/s {floor:.3f} s (measured / floor {seconds / floor:.2f})"
    )
    if target is not None:
        line += f"; target {target:.3f} s = {target / floor:.2f}x the floor"
    return line
