"""The unrolled student's step, theta - lr * grad_theta CE(f(theta, x), y), as one compiled operation.

MTT (and DATM) differentiate through every student step: the backward pass of a step needs the
second derivatives of the student's loss. Eager, that is the composite double-backward formulas of
the norm, pooling and convolution layers, op by op. Here the step's gradient and its vector-Jacobian
product are each a ``torch.compile``d ``torch.func`` graph, called from an autograd function that
keeps only the step's inputs and gradient (like ``checkpoint_student``: the backward pass makes the
step again inside its compiled graph). With ``keep``, the gradient's graph is compiled for autograd
instead and keeps what its backward pass needs (AOTAutograd's choice of residuals), as the reference
keeps every step's graph: no step is made twice, for about 0.3 GB a step at IPC 10 on CPU. Same values
as the eager step up to float32 rounding; see ``tests/test_student_step.py`` for the tolerance.

On CPU a step's batch goes through the graphs in chunks of about ``CHUNK_PIXELS`` input pixels (25 images
at 32 px), their gradients and products summed with each chunk's share of the batch as its weight: the
same mean, in less time (BENCHMARKS.md). Only a network without batch norm is chunked: there a chunk's
gradient does not depend on the other images; with batch norm the statistics are the whole batch's.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from stages.methods.trajectories import unflatten
from stages.models import per_sample

#: input pixels per chunk of a CPU step's batch: the IPC 10 student (100 images of 32 px) took 0.68-0.82 s per step
#: in chunks of 25 against 0.88-0.89 s whole, at 0.97 against 1.4-1.9 GB; 20 to 25 images were the best of 10 to 50
#: in a sweep, and at 64 px chunks of 7 and 14 both beat the whole batch (BENCHMARKS.md)
CHUNK_PIXELS = 25 * 32 * 32


def chunks(x: torch.Tensor) -> int:
    """How many chunks a step splits batch ``x`` into: at most ``CHUNK_PIXELS`` pixels each, and of one size
    where up to twice the fewest chunks allow it (one compiled graph); one on a GPU (not measured there)."""
    if x.device.type != "cpu":
        return 1
    fewest = -(-len(x) // max(1, CHUNK_PIXELS // (x.shape[-1] * x.shape[-2])))
    return next((k for k in range(fewest, 2 * fewest + 1) if len(x) % k == 0), fewest)


def flattened(net: torch.nn.Module) -> tuple[torch.Tensor, Callable[[torch.Tensor], dict[str, torch.Tensor]]]:
    """``net``'s parameters as one flat vector, and the map from such a vector back to a parameter dict (views
    into it, for ``functional_call``), in ``named_parameters`` order, as ExpertStore lays experts out."""
    names = [n for n, _ in net.named_parameters()]
    shapes = [p.shape for _, p in net.named_parameters()]
    return torch.cat([p.detach().flatten() for p in net.parameters()]), lambda flat: unflatten(flat, names, shapes)


def student_loss(
    net: torch.nn.Module,
    params: dict[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
) -> torch.Tensor:
    """The student's cross-entropy on ``x`` with parameters ``params`` (``y``: classes or probabilities)."""
    # It is differentiated twice; of the attention kernels only the math one has a second derivative (flash
    # and memory-efficient attention have none, on CPU or CUDA). Inside the step, so that a recomputation
    # (checkpoint, or the compiled backward) uses it too.
    with sdpa_kernel(SDPBackend.MATH):
        return F.cross_entropy(functional_call(net, params, (x,)), y)


class CompiledStudentStep:
    """``step(theta, x, y, lr)``: one student step of ``net`` (parameters ``unflatten(theta)``), differentiable
    with respect to ``theta``, ``x``, ``lr`` and, when they are probabilities that require grad, ``y``; with
    ``keep``, each step holds its graph's residuals until its backward pass instead of making the step again."""

    def __init__(
        self,
        net: torch.nn.Module,
        unflatten: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        backend: str = "inductor",
        keep: bool = False,
    ) -> None:
        self.net, self.unflatten, self.keep = net, unflatten, keep
        self.chunked = per_sample(net)  # batch norm: the whole batch, its statistics as the eager step's
        self.num_classes: int | None = None  # the student's outputs, read at its first step

        gradient = grad(lambda theta, x, y: student_loss(net, unflatten(theta), x, y))

        def pullback(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, v: torch.Tensor):
            return vjp(gradient, theta, x, y)[1](v)

        # one graph for class labels and probabilities: a class is given as its one-hot probabilities (the same
        # cross-entropy, exactly), so the compiled graphs are the same whichever a method trains on
        self.gradient = torch.compile(gradient, backend=backend)
        self.pullback = torch.compile(pullback, backend=backend)

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, lr: torch.Tensor) -> torch.Tensor:
        if y.dim() == 1:
            if self.num_classes is None:
                with torch.no_grad():
                    self.num_classes = functional_call(self.net, self.unflatten(theta), (x[:1],)).shape[-1]
            y = F.one_hot(y, self.num_classes).to(x.dtype)
        return (_KeptStep if self.keep and torch.is_grad_enabled() else _Step).apply(self, theta, x, y, lr)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: CompiledStudentStep, theta, x, y, lr):
        # contiguous: the graphs are traced for one layout (an augmented batch may come in another)
        theta, x, y = (t.detach().contiguous() for t in (theta, x, y))
        g = _weighted_sum([(w, step.gradient(theta, xc, yc)) for w, xc, yc in _split(step, x, y)])
        ctx.step = step
        ctx.save_for_backward(theta, x, y, lr, g)
        return theta - lr * g

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        theta, x, y, lr, g = ctx.saved_tensors
        pulled = [(w, ctx.step.pullback(theta, xc, yc, v)) for w, xc, yc in _split(ctx.step, x, y)]
        g_theta = _weighted_sum([(w, p[0]) for w, p in pulled])
        g_x, g_y = (_weighted_sum([(w, p[i]) for w, p in pulled], concatenate=True) for i in (1, 2))
        # d(theta - lr g)/d(.)^T v: v - lr H v for theta, -lr (dg/dx)^T v for x (and y), -<v, g> for lr
        return None, v - lr * g_theta, -lr * g_x, -lr * g_y if ctx.needs_input_grad[3] else None, -(v * g).sum()


class _KeptStep(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: CompiledStudentStep, theta, x, y, lr):
        # leaves of the compiled graph's own autograd graph, which is kept (residuals and all) until backward
        needs = (True, ctx.needs_input_grad[2], ctx.needs_input_grad[3])
        leaves = [t.detach().contiguous().requires_grad_(n) for t, n in zip((theta, x, y), needs)]
        with torch.enable_grad():
            parts = [(w, step.gradient(leaves[0], xc, yc)) for w, xc, yc in _split(step, leaves[1], leaves[2])]
        g = _weighted_sum([(w, gc.detach()) for w, gc in parts])
        ctx.kept = leaves, parts
        ctx.save_for_backward(lr, g)
        return theta - lr * g

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        lr, g = ctx.saved_tensors
        leaves, parts = ctx.kept
        del ctx.kept  # the residuals go with this step's backward pass
        wanted = [t for t in leaves if t.requires_grad]
        pulled = iter(torch.autograd.grad([gc for _, gc in parts], wanted, [w * v for w, _ in parts]))
        g_theta, g_x, g_y = (next(pulled) if t.requires_grad else None for t in leaves)
        return (
            None,
            v - lr * g_theta,
            None if g_x is None else -lr * g_x,
            None if g_y is None else -lr * g_y,
            -(v * g).sum(),
        )


def _split(
    step: CompiledStudentStep, x: torch.Tensor, y: torch.Tensor
) -> list[tuple[float, torch.Tensor, torch.Tensor]]:
    """The batch's chunks, each with its share of the batch (the weight of its mean loss in the batch's)."""
    k = chunks(x) if step.chunked else 1
    return [(len(xc) / len(x), xc, yc) for xc, yc in zip(torch.tensor_split(x, k), torch.tensor_split(y, k))]


def _weighted_sum(terms: list[tuple[float, torch.Tensor]], concatenate: bool = False) -> torch.Tensor:
    """Sum (or, for per-image gradients, concatenation) of weight x term; one term: the term itself, as the
    unchunked step gives it."""
    if len(terms) == 1:
        return terms[0][1]
    if concatenate:
        return torch.cat([t * w for w, t in terms])
    total = terms[0][1] * terms[0][0]
    for w, t in terms[1:]:
        total = total + t * w
    return total
