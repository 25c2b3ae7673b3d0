"""ZCA whitening of flattened images, fitted on the training split.

MTT's reference whitens CIFAR images (after per-channel normalisation) with
eps 0.1 before training experts, distilling and evaluating; the synthetic
images then live in the whitened space. The transform is symmetric,
``W = U diag(1 / sqrt(s + eps)) U^T`` with ``U, s`` the eigen-decomposition
of the (unbiased) covariance, so whitened images still look like images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from stages.errors import ChddlError

# Above this many dimensions (64 px RGB is 12,288) the covariance is
# decomposed in float32: float64 would need > 1 GB for the matrix alone.
FLOAT64_MAX_DIM = 4096


@dataclass
class ZCA:
    """A fitted transform: ``(x - mean) @ matrix`` and its inverse."""

    mean: torch.Tensor  # (D,)
    matrix: torch.Tensor  # (D, D), symmetric
    inverse: torch.Tensor  # (D, D)

    def apply(self, images: torch.Tensor) -> torch.Tensor:
        """Whiten (N, C, H, W) images."""
        flat = images.reshape(len(images), -1)
        m, w = self.mean.to(flat.device, flat.dtype), self.matrix.to(flat.device, flat.dtype)
        return ((flat - m) @ w).reshape(images.shape)

    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Map whitened (N, C, H, W) images back to the normalised space."""
        flat = images.reshape(len(images), -1)
        m, inv = self.mean.to(flat.device, flat.dtype), self.inverse.to(flat.device, flat.dtype)
        return (flat @ inv + m).reshape(images.shape)


def fit_zca(images: torch.Tensor, eps: float, chunk: int = 2048) -> ZCA:
    """Fit ZCA on (N, C, H, W) float images; the covariance is accumulated in
    chunks so the float64 copy of the whole set is never materialised."""
    n = len(images)
    if n < 2:
        raise ChddlError("--zca needs at least two training images; drop --zca for this dataset")
    dim = images[0].numel()
    dtype = torch.float64 if dim <= FLOAT64_MAX_DIM else torch.float32
    flat = images.reshape(n, dim)
    mean = flat.to(dtype).mean(dim=0)
    cov = torch.zeros(dim, dim, dtype=dtype)
    for start in range(0, n, chunk):
        x = flat[start : start + chunk].to(dtype) - mean
        cov.addmm_(x.T, x)
    cov /= n - 1
    s, u = torch.linalg.eigh(cov)
    s = s.clamp(min=0)
    matrix = (u * (s + eps).rsqrt()) @ u.T
    inverse = (u * (s + eps).sqrt()) @ u.T
    return ZCA(mean.float(), matrix.float(), inverse.float())
