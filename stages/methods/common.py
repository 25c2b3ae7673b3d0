"""Pieces shared by the base methods: networks per role, augmentation, group means."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from stages.data.augment import DSA, DSAParams
from stages.device import to_device
from stages.methods.base import MatchBatch, RealPool
from stages.models import per_sample, reinitialize
from stages.sharding import global_sum, replicated_share

NetFactory = Callable[[], nn.Module]


def round_seed(g: torch.Generator) -> int:
    """A seed for one network initialisation, drawn from the round's generator."""
    return int(torch.randint(0, 2**31 - 1, (1,), generator=g))


class RoleNets:
    """One network per role, built once and re-initialised in place each round
    (cheaper than rebuilding, and keeps a compiled forward valid)."""

    def __init__(self, factory: NetFactory, device: torch.device) -> None:
        self.factory, self.device = factory, device
        self.nets: dict[str, nn.Module] = {}

    def renew(self, roles: tuple[str, ...], g: torch.Generator, shared: bool) -> None:
        """Fresh parameters for each role; ``shared`` makes all roles one network."""
        for i, role in enumerate(roles):
            if shared and i > 0:
                self.nets[role] = self.nets[roles[0]]
                continue
            if role not in self.nets:
                self.nets[role] = self.factory().to(self.device).to(memory_format=torch.channels_last)
            reinitialize(self.nets[role], round_seed(g))

    def __getitem__(self, role: str) -> nn.Module:
        return self.nets[role]


def augmented_pair(
    dsa: DSA | None, batch: MatchBatch, real: torch.Tensor, g: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and synthetic images with the same DSA transform per group (siamese)."""
    if dsa is None:
        return real, batch.syn
    params = dsa.sample(batch.num_groups, tuple(real.shape[-2:]), g)
    return dsa.apply(real, params.index(batch.real_groups)), dsa.apply(batch.syn, params.index(batch.syn_groups.cpu()))


#: real images per forward pass of a no-grad embedding: the activations of 256 images at a time instead of the
#: whole draw (10 classes x 256 real: 1.3 GB per ConvNet layer at 32 px) cut peak memory ~3x at the same speed
REAL_CHUNK = 128
#: pixels per chunk of an embedding recomputed in the backward pass (128 images of 32 x 32, 32 of 64 x 64): each
#: chunk's recomputed forward keeps its activations for the backward product, 268 MB per first-layer tensor for
#: 128 images of 64 px; in images, a 64 px chunk held ~1 GiB and set a Tiny-ImageNet-shaped run's peak
RECOMPUTE_PIXELS = REAL_CHUNK * 32 * 32
GROUP_BLOCK = 1024  # rows of embeddings turned into float64 at once by group_means


@torch.no_grad()
def embed_in_chunks(embed: Callable, net: torch.nn.Module, x: torch.Tensor, chunk: int = REAL_CHUNK) -> torch.Tensor:
    """``embed(net, x)`` computed ``chunk`` images at a time (per-sample networks: the same values)."""
    if len(x) <= chunk:
        return embed(net, x)
    return torch.cat([embed(net, x[i : i + chunk]) for i in range(0, len(x), chunk)])


@torch.no_grad()
def embed_real(
    embed: Callable,
    net: torch.nn.Module,
    pool: RealPool,
    index: torch.Tensor,
    dsa: DSA | None = None,
    params: DSAParams | None = None,
    chunk: int = REAL_CHUNK,
) -> torch.Tensor:
    """No-grad embeddings of pool images ``index``, augmented with the per-image ``params``: gathered,
    normalised, augmented and embedded ``chunk`` images at a time, so memory holds one chunk of images
    (not the whole draw: 100 classes x 256 real at 64 px are 1.3 GB per copy), with the values that
    augmenting and embedding the whole draw gives."""
    out = []
    for start in range(0, len(index), chunk):
        rows = index[start : start + chunk]
        x = pool.images[to_device(rows, pool.images.device)]
        if dsa is not None and params is not None:
            x = dsa.apply(x, params.index(torch.arange(start, start + len(rows))))
        out.append(embed(net, x.contiguous(memory_format=torch.channels_last)))
    return out[0] if len(out) == 1 else torch.cat(out)


class Embedding:
    """``net.embed`` and its input gradient (the vector-Jacobian product with respect to the images), eager or
    each one ``torch.compile`` graph: compiled, the recomputed forward pass and its backward pass are one fused
    graph per chunk instead of the eager composite formulas of group norm, ReLU and pooling, op by op."""

    def __init__(self, compiled: bool = False, backend: str = "inductor") -> None:
        self.compiled = compiled
        if compiled:
            self.forward = torch.compile(_embed, dynamic=True, backend=backend)
            self.input_vjp = torch.compile(_embed_input_vjp, dynamic=True, backend=backend)
        else:
            self.forward, self.input_vjp = _embed, _embed_input_vjp


def _embed(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return net.embed(x)


def _embed_input_vjp(net: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    return torch.func.vjp(net.embed, x)[1](grad)[0]


EAGER = Embedding()


def recompute_chunk(net: torch.nn.Module, images: torch.Tensor) -> int:
    """Images of ``images`` (N, C, H, W) per recomputed chunk: as many as hold ``RECOMPUTE_PIXELS``, at most
    ``REAL_CHUNK``; ``REAL_CHUNK`` for a network with batch norm, whose statistics are each chunk's."""
    if not per_sample(net):
        return REAL_CHUNK
    return max(1, min(REAL_CHUNK, RECOMPUTE_PIXELS // (images.shape[-2] * images.shape[-1])))


def embed_with_recompute(
    net: torch.nn.Module,
    x: torch.Tensor,
    chunk: int | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    embedding: Embedding = EAGER,
) -> torch.Tensor:
    """``net.embed(augment(x))`` with gradients for ``x``, keeping the activations of none of the chunks for the
    backward pass (each chunk's augmentation and forward are recomputed there, one chunk at a time): for the
    synthetic images and their domain views (IPC x C x (1 + D) images), peak memory of one chunk for one more
    forward pass. ``augment(part, rows)`` transforms the images ``rows`` of ``x``, given as ``part``. Up to
    ``REAL_CHUNK`` images are one chunk, kept; more are recomputed ``chunk`` at a time (by default
    :func:`recompute_chunk`'s)."""

    def prepare(a: int, b: int, part: torch.Tensor) -> torch.Tensor:
        if augment is not None:
            part = augment(part, torch.arange(a, b))
        return part

    # up to REAL_CHUNK images are kept whole, not recomputed (PACS at 64 px, IPC 10: 70 images): faster,
    # and at 32 px a recomputed chunk as large would be held anyway
    if len(x) <= (REAL_CHUNK if chunk is None else chunk):
        return embedding.forward(net, _net_input(prepare(0, len(x), x)))
    chunk = recompute_chunk(net, x) if chunk is None else chunk
    bounds = [(a, min(a + chunk, len(x))) for a in range(0, len(x), chunk)]
    return _SlicedRecompute.apply(net, embedding, prepare, bounds, x)


class _SlicedRecompute(torch.autograd.Function):
    """Embeddings of inputs made chunk by chunk from slices ``[a, b)`` of leaf tensors (dim 0) by
    ``prepare(a, b, *slices)``, keeping nothing for the backward pass but the leaves: there each chunk's input is
    made again from its slices, the network's input gradient taken (``embedding.input_vjp``, the forward pass
    recomputed inside it) and carried back to the slices alone, written into that slice of a gradient of the
    leaf's size (no gradient of the whole leaf per chunk, as indexing or slicing inside autograd would create)."""

    @staticmethod
    def forward(ctx, net, embedding: Embedding, prepare: Callable, bounds: list[tuple[int, int]], *leaves):
        ctx.net, ctx.embedding, ctx.prepare, ctx.bounds = net, embedding, prepare, bounds
        ctx.save_for_backward(*leaves)
        with torch.no_grad():
            return torch.cat(
                [embedding.forward(net, _net_input(prepare(a, b, *_slices(leaves, a, b)))) for a, b in bounds]
            )

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        leaves, needs = ctx.saved_tensors, ctx.needs_input_grad[4:]
        grads = [torch.zeros_like(leaf) if need else None for leaf, need in zip(leaves, needs)]
        start = 0
        for a, b in ctx.bounds:
            parts = [leaf[a:b].detach().requires_grad_(need) for leaf, need in zip(leaves, needs)]
            with torch.enable_grad():
                x = _net_input(ctx.prepare(a, b, *parts))
            rows = len(x)
            wanted = [p for p, need in zip(parts, needs) if need]
            if wanted:
                x_grad = ctx.embedding.input_vjp(ctx.net, x.detach(), grad[start : start + rows].contiguous())
                got = iter(torch.autograd.grad(x, wanted, x_grad))
                for g, need in zip(grads, needs):
                    if need:
                        g[a:b] = next(got)
            start += rows
        return (None, None, None, None, *grads)


def _slices(leaves, a: int, b: int) -> list[torch.Tensor]:
    return [leaf[a:b] for leaf in leaves]


def _net_input(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def embed_views_with_recompute(
    net: torch.nn.Module,
    images: torch.Tensor,
    masks,
    chunk: int | None = None,
    augment: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
    first_row: int = 0,
    domain: int | None = None,
    embedding: Embedding = EAGER,
) -> torch.Tensor:
    """``net.embed`` of the D domain views of ``images`` under ``masks`` (a ``DomainMasks``), image-major
    (M x D rows), or with ``domain`` of that pseudo-domain's views alone (M rows), with gradients for the
    images and the masks, computed about ``chunk`` views at a time from the images' and masks' slices: neither
    the views nor the masks' softmax of all images are ever held (at 200 classes x IPC 10 x 64 px with D = 4,
    each is 0.4 GB), nor any activation. ``augment(part, rows)`` takes the views' rows counted from
    ``first_row``. ``chunk``: views per chunk (by default :func:`recompute_chunk`'s)."""
    d = masks.z.shape[1] if domain is None else 1
    per = max(1, (recompute_chunk(net, images) if chunk is None else chunk) // d)

    def prepare(a: int, b: int, imgs: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        views = masks.views_from(imgs, z, domain).flatten(0, 1)
        if augment is not None:
            views = augment(views, torch.arange(first_row + a * d, first_row + b * d))
        return views

    bounds = [(a, min(a + per, len(images))) for a in range(0, len(images), per)]
    return _SlicedRecompute.apply(net, embedding, prepare, bounds, images, masks.z)


def real_images(pool: RealPool, batch: MatchBatch) -> torch.Tensor:
    return pool.images[to_device(batch.real_index, pool.images.device)]


def group_means(
    x: torch.Tensor,
    groups: torch.Tensor,
    num_groups: int,
    weights: torch.Tensor | None = None,
    spread: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(num_groups, F) (weighted) means of the rows of ``x`` per group, and which groups are present; with
    ``spread``, of the rows of all torchrun ranks (each passes its own).

    The sums accumulate in float64: then the order in which rows (or ranks) are added almost never changes
    the float32 mean, so a mean over rows split across ranks is the one-process mean, bit for bit."""
    groups = groups.to(x.device)
    w = torch.ones(len(x), device=x.device, dtype=x.dtype) if weights is None else weights.to(x.device, x.dtype)
    sums = torch.zeros(num_groups, x.shape[1], device=x.device, dtype=torch.float64)
    # added in order, a block of rows at a time: the float64 copy of one block at once, in both passes
    for part, g, wp in zip(x.split(GROUP_BLOCK), groups.split(GROUP_BLOCK), w.split(GROUP_BLOCK)):
        sums = sums.index_add(0, g, (part * wp.unsqueeze(1)).double())
    totals = torch.zeros(num_groups, device=x.device, dtype=torch.float64).index_add(0, groups, w.double())
    sums, totals = global_sum(sums, spread), global_sum(totals, spread)
    return (sums / totals.clamp(min=1e-12).unsqueeze(1)).to(x.dtype), totals > 0


def mean_distance(
    real: torch.Tensor,
    syn: torch.Tensor,
    batch: MatchBatch,
    real_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """DM's loss: the squared distance between the (weighted) real and the synthetic mean embedding, summed over
    the groups present on both sides (under torchrun, with ``batch.spread``, this rank's share of it)."""
    real_mean, real_present = group_means(real, batch.real_groups, batch.num_groups, real_weights, batch.spread)
    syn_mean, syn_present = group_means(syn, batch.syn_groups, batch.num_groups, spread=batch.spread)
    loss = ((real_mean - syn_mean) ** 2 * (real_present & syn_present).unsqueeze(1)).sum()
    return replicated_share(loss, batch.spread)
