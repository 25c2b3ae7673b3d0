"""The unrolled student's step, theta - lr * grad_theta CE(f(theta, x), y), as one compiled operation.

MTT (and DATM) differentiate through every student step: the backward pass of a step needs the
second derivatives of the student's loss. Eager, that is the composite double-backward formulas of
the norm, pooling and convolution layers, op by op. Here the step's gradient and its vector-Jacobian
product are each a ``torch.compile``d ``torch.func`` graph, called from an autograd function that
keeps only the step's inputs and gradient (like ``checkpoint_student``: the backward pass makes the
step again inside its compiled graph). Same values as the eager step up to float32 rounding; see
``tests/test_student_step.py`` for the tolerance.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vjp
from torch.nn.attention import SDPBackend, sdpa_kernel

from stages.methods.trajectories import unflatten


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
    with respect to ``theta``, ``x``, ``lr`` and, when they are probabilities that require grad, ``y``."""

    def __init__(
        self,
        net: torch.nn.Module,
        unflatten: Callable[[torch.Tensor], dict[str, torch.Tensor]],
        backend: str = "inductor",
    ) -> None:
        self.net, self.unflatten = net, unflatten
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
        return _Step.apply(self, theta, x, y, lr)


class _Step(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: CompiledStudentStep, theta, x, y, lr):
        # contiguous: the graphs are traced for one layout (an augmented batch may come in another)
        theta, x, y = (t.detach().contiguous() for t in (theta, x, y))
        g = step.gradient(theta, x, y)
        ctx.step = step
        ctx.save_for_backward(theta, x, y, lr, g)
        return theta - lr * g

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        theta, x, y, lr, g = ctx.saved_tensors
        g_theta, g_x, g_y = ctx.step.pullback(theta, x, y, v)
        # d(theta - lr g)/d(.)^T v: v - lr H v for theta, -lr (dg/dx)^T v for x (and y), -<v, g> for lr
        return None, v - lr * g_theta, -lr * g_x, -lr * g_y if ctx.needs_input_grad[3] else None, -(v * g).sum()
