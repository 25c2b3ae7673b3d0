"""Does keeping the unrolled student's residuals pay? Three MTT student steps, side by side (issue 32).

MTT's compiled student (stages/methods/student.py) recomputes each step's forward and backward pass inside
its backward graph: 129 GFLOP a step at IPC 10 against the reference's 89 (bench/flops.py). Two steps that
keep what the backward pass needs instead, compared with it on MTT's IPC 10 student (ConvNet-3, 100 random
32 px images, a new input each step, the normalised distance differentiated to the images and the lr):

- ``recomputed``: ours, two compiled graphs (the gradient; its vector-Jacobian product, recomputing);
- ``aot``: the whole step compiled, AOTAutograd choosing what to keep (``--budget``: its
  ``activation_memory_budget``);
- ``tape``: the gradient written as a tape of stages (the first block whole, then each later convolution and
  its norm, activation and pooling apart), one compiled graph making the gradient and keeping every stage's
  input and backward signal, one walking the tape back with each stage's second-order vector-Jacobian
  product. Convolutions are bilinear, so their second-order products need no convolution recomputed: the
  reference's arithmetic.

Each variant runs in its own process (peak RSS is per process), ``--rounds`` times, alternated; each process
compiles, unrolls once to warm up, then times 3 unrolls (median). Prints s/step, peak RSS and the image
gradient against ``recomputed``; with ``--kernels``, each variant's time in convolutions and in inductor's
generated kernels over one profiled unroll.

    python bench/student_residuals.py --steps 10 --rounds 3
    python bench/student_residuals.py --steps 10 --rounds 1 --kernels
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import _tree  # noqa: F401  (this checkout first on sys.path)
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vjp

from stages.methods.student import CompiledStudentStep, flattened, student_loss
from stages.models.convnet import ConvNet

Stage = tuple[Callable[..., torch.Tensor], list[str]]  # h_out = fn(h_in, *parameters), the parameters' names


def _module_stage(module: torch.nn.Module, prefix: str) -> Stage:
    local = [n for n, _ in module.named_parameters()]
    return (lambda h, *ps: functional_call(module, dict(zip(local, ps)), (h,))), [prefix + n for n in local]


def convnet_stages(net: ConvNet) -> tuple[list[Stage], Stage]:
    """The tape's stages: block 0 whole (its convolution has 3 input channels: cheap to recompute, large to
    keep), later blocks as convolution | norm, activation, pooling; and the head, ``loss(h, *ps, y)``."""
    stages = [_module_stage(net.blocks[0], "blocks.0.")]
    for i, block in enumerate(list(net.blocks)[1:], start=1):
        stages += [_module_stage(block[0], f"blocks.{i}.0."), _module_stage(block[1:], f"blocks.{i}.")]
    local = [n for n, _ in net.classifier.named_parameters()]

    def head(h: torch.Tensor, *ps_y: torch.Tensor) -> torch.Tensor:
        *ps, y = ps_y
        return F.cross_entropy(functional_call(net.classifier, dict(zip(local, ps)), (h.flatten(1),)), y)

    return stages, (head, ["classifier." + n for n in local])


class TapeStep:
    """``step(theta, x, y, lr)``, differentiable in theta, x and lr, keeping each step's residuals."""

    def __init__(self, net: ConvNet, unflatten, backend: str = "inductor") -> None:
        stages, (head, head_names) = convnet_stages(net)
        order = [n for n, _ in net.named_parameters()]
        depth, one = len(stages), lambda t: torch.ones((), dtype=t.dtype)
        self.num_classes = net.classifier.out_features

        def forward(theta, x, y):
            p = unflatten(theta)
            hs, pulls = [x], []
            for k, (fn, names) in enumerate(stages):  # no input gradient for the images in the first pass
                h, pull = (
                    vjp(lambda *q, fn=fn: fn(x, *q), *[p[n] for n in names])
                    if k == 0
                    else vjp(fn, hs[-1], *[p[n] for n in names])
                )
                hs.append(h)
                pulls.append(pull)
            delta, *g_head = vjp(lambda h, *q: head(h, *q, y), hs[-1], *[p[n] for n in head_names])[1](one(x))
            grads, deltas = dict(zip(head_names, g_head)), [delta]
            for k in reversed(range(depth)):
                out = pulls[k](deltas[0])
                if k:
                    deltas.insert(0, out[0])
                grads.update(zip(stages[k][1], out[1:] if k else out))
            return torch.cat([grads[n].flatten() for n in order]), hs[1:], deltas

        def backward(theta, x, y, hs, deltas, v):
            p, vp = unflatten(theta), unflatten(v)
            hs, deltas = [x, *hs], [None, *deltas]  # deltas[k]: the first pass's gradient at hs[k]
            h_bar: list[torch.Tensor | None] = [None] * (depth + 1)
            d_bar: list[torch.Tensor | None] = [None] * (depth + 1)
            p_bar: dict[str, torch.Tensor] = {}

            def add(acc, i, t):
                acc[i] = t if acc[i] is None else acc[i] + t

            def add_params(names, ts):
                for n, t in zip(names, ts):
                    p_bar[n] = t if n not in p_bar else p_bar[n] + t

            # the first pass's backward stages, last run first: stage k maps (hs[k], ps, deltas[k+1]) to
            # (deltas[k], its parameters' gradient), whose cotangents are (d_bar[k], v's slice)
            for k, (fn, names) in enumerate(stages):
                if k == 0:

                    def back(h, *q_d, fn=fn):
                        *q, d = q_d
                        return vjp(lambda *qq: fn(h, *qq), *q)[1](d)

                    cot = tuple(vp[n] for n in names)
                else:

                    def back(h, *q_d, fn=fn):
                        *q, d = q_d
                        return vjp(fn, h, *q)[1](d)

                    d_k = d_bar[k] if d_bar[k] is not None else torch.zeros_like(hs[k])
                    cot = (d_k, *(vp[n] for n in names))
                out = vjp(back, hs[k], *[p[n] for n in names], deltas[k + 1])[1](cot)
                add(h_bar, k, out[0])
                add_params(names, out[1:-1])
                add(d_bar, k + 1, out[-1])

            def head_back(h, *q_y):
                *q, yy = q_y
                return vjp(lambda hh, *qq: head(hh, *qq, yy), h, *q)[1](one(h))

            cot = (d_bar[depth], *(vp[n] for n in head_names))
            out = vjp(head_back, hs[depth], *[p[n] for n in head_names], y)[1](cot)
            add(h_bar, depth, out[0])
            add_params(head_names, out[1:-1])
            y_bar = out[-1]
            for k in reversed(range(depth)):  # then the forward stages
                fn, names = stages[k]
                out = vjp(fn, hs[k], *[p[n] for n in names])[1](h_bar[k + 1])
                add(h_bar, k, out[0])
                add_params(names, out[1:])
            return torch.cat([p_bar[n].flatten() for n in order]), h_bar[0], y_bar

        self.forward = torch.compile(forward, backend=backend)
        self.backward = torch.compile(backward, backend=backend)

    def __call__(self, theta, x, y, lr):
        if y.dim() == 1:
            y = F.one_hot(y, self.num_classes).to(x.dtype)
        return _Tape.apply(self, theta, x, y, lr)


class _Tape(torch.autograd.Function):
    @staticmethod
    def forward(ctx, step: TapeStep, theta, x, y, lr):
        theta, x, y = (t.detach().contiguous() for t in (theta, x, y))
        g, hs, deltas = step.forward(theta, x, y)
        ctx.step, ctx.count = step, len(hs)
        ctx.save_for_backward(theta, x, y, lr, g, *hs, *deltas)
        return theta - lr * g

    @staticmethod
    def backward(ctx, v):
        theta, x, y, lr, g, *rest = ctx.saved_tensors
        g_theta, g_x, g_y = ctx.step.backward(theta, x, y, rest[: ctx.count], rest[ctx.count :], v.contiguous())
        return None, v - lr * g_theta, -lr * g_x, -lr * g_y if ctx.needs_input_grad[3] else None, -(v * g).sum()


def _run(variant: str, steps: int, budget: float | None, kernels: bool, out: Path) -> None:
    if budget is not None:
        import torch._functorch.config as functorch_config

        functorch_config.activation_memory_budget = budget
    if kernels:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    net = ConvNet(10, 32)
    theta0, unflatten = flattened(net)
    target = theta0 + 0.01 * torch.randn(theta0.shape)
    syn = torch.randn(100, 3, 32, 32, requires_grad=True)
    y = torch.arange(100) % 10
    lr = torch.tensor(0.01, requires_grad=True)
    if variant == "recomputed":
        step = CompiledStudentStep(net, unflatten)
    elif variant == "tape":
        step = TapeStep(net, unflatten)
    else:
        gradient = grad(lambda theta, x, yy: student_loss(net, unflatten(theta), x, yy))
        whole = torch.compile(lambda theta, x, yy, rate: theta - rate * gradient(theta, x, yy))
        step = lambda theta, x, yy, rate: whole(theta, x, F.one_hot(yy, 10).float(), rate)  # noqa: E731

    def unroll() -> torch.Tensor:
        syn.grad = lr.grad = None
        theta = theta0.clone().requires_grad_(True)
        for i in range(steps):
            theta = step(theta, (syn * (1.0 + 0.01 * i)).contiguous(), y, lr)
        (((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()).backward()
        return syn.grad.clone()

    unroll()
    times = []
    for _ in range(3):
        start = time.perf_counter()
        image_grad = unroll()
        times.append((time.perf_counter() - start) / steps)
    torch.save(image_grad, out.with_suffix(".pt"))
    result = {
        "s_per_step": statistics.median(times),
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }
    if kernels:
        from torch.profiler import profile

        with profile() as prof:
            unroll()
        events = prof.key_averages()
        conv = sum(e.self_cpu_time_total for e in events if e.key.startswith(("aten::mkldnn_conv", "aten::conv")))
        fused = sum(e.self_cpu_time_total for e in events if "cpp_fused" in e.key)
        result |= {"conv_s_per_step": conv / 1e6 / steps, "fused_s_per_step": fused / 1e6 / steps}
    out.write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--budget", type=float, help="aot: AOTAutograd's activation_memory_budget (default: none)")
    parser.add_argument("--kernels", action="store_true", help="time in convolutions and in generated kernels")
    parser.add_argument("--variant", help=argparse.SUPPRESS)  # one variant, in a child process
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps < 1 or args.rounds < 1:
        parser.error(f"--steps and --rounds must be at least 1 (got {args.steps} and {args.rounds})")
    if args.budget is not None and not 0 < args.budget <= 1:
        parser.error(f"--budget is a fraction of the activations to keep, in (0, 1] (got {args.budget})")
    if args.variant:
        _run(args.variant, args.steps, args.budget, args.kernels, args.out)
        return

    import tempfile

    variants = ("recomputed", "aot", "tape")
    results: dict[str, list[dict]] = {v: [] for v in variants}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for v in variants:
                out = Path(tmp, f"{v}{r}.json")
                child = [sys.executable, __file__, "--variant", v, "--steps", str(args.steps), "--out", str(out)]
                child += ["--budget", str(args.budget)] if args.budget is not None and v == "aot" else []
                done = subprocess.run(child + (["--kernels"] if args.kernels else []), capture_output=True, text=True)
                if done.returncode:
                    lines = done.stderr.strip().splitlines() or ["no message"]
                    last = next((line for line in reversed(lines) if "Error" in line), lines[-1])  # the exception
                    sys.exit(f"error: the {v} variant failed (exit {done.returncode}): {last}")
                results[v].append(json.loads(out.read_text()))
        reference = torch.load(Path(tmp, f"recomputed{args.rounds - 1}.pt"))
        diffs = {
            v: float(
                (torch.load(Path(tmp, f"{v}{args.rounds - 1}.pt")) - reference).abs().max() / reference.abs().max()
            )
            for v in variants
        }
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, rounds alternated")
    print(
        "| variant | s / step per round | peak RSS | image gradient vs recomputed | convolutions + generated kernels |"
    )
    print("|---|---|---|---|---|")
    for v, rs in results.items():
        per_round = ", ".join(f"{r['s_per_step']:.3f}" for r in rs)
        rss = ", ".join(f"{r['peak_rss_gb']:.2f}" for r in rs)
        split = ", ".join(
            f"{r['conv_s_per_step']:.2f} + {r['fused_s_per_step']:.2f}" for r in rs if "conv_s_per_step" in r
        )
        print(f"| {v} | {per_round} | {rss} GB | {diffs[v]:.1e} | {split or '-'} |")


if __name__ == "__main__":
    main()
