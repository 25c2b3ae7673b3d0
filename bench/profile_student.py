"""Where MTT's unrolled student spends its time, eager against compiled, in one process.

The student of MTT at IPC 10 on the bench's input: ConvNet-3 (width 128,
instance norm) on 100 random 32x32x3 images of 10 classes, trained
``--steps`` steps from a random start with the whole set per step, then the
normalised parameter distance differentiated with respect to the images and
the learned lr. Variants, alternated ``--rounds`` times (the first round
warms up and compiles, and is not counted):

- ``eager``: the reference's computation, every step's graph kept;
- ``checkpointed``: each step recomputed in the backward pass (MTT's eager default);
- ``compiled``: stages/methods/student.py (MTT's default from 10 iterations).

Prints seconds per student step (median), and each variant's image gradient
against the eager one and against the eager unroll in float64 (largest
difference over largest value); with
``--profile``, torch.profiler's top operators of one eager and one compiled
unroll.

    python bench/profile_student.py --steps 10 --rounds 4
    python bench/profile_student.py --steps 10 --profile
    python bench/profile_student.py --steps 10 --flops --target 0.66   # the floor (bench/flops.py)
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import _tree  # noqa: F401  (this checkout first on sys.path)
import torch
import torch.nn.functional as F
from torch.func import functional_call
from torch.utils.checkpoint import checkpoint

from stages.methods.student import CompiledStudentStep, flattened
from stages.models.convnet import ConvNet


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--flops", action="store_true", help="each eager variant's FLOPs per step and its floor here")
    parser.add_argument("--target", type=float, help="with --flops: a target s/step to set beside the floors")
    args = parser.parse_args()

    torch.manual_seed(0)
    net = ConvNet(10, 32)
    theta0, unflatten = flattened(net)
    target = theta0 + 0.01 * torch.randn(theta0.shape)
    syn = torch.randn(args.images, 3, 32, 32, requires_grad=True)
    y = torch.arange(args.images) % 10
    lr = torch.tensor(0.01, requires_grad=True)

    def eager_step(theta, x, labels, rate):
        out = functional_call(net, unflatten(theta), (x,))
        return theta - rate * torch.autograd.grad(F.cross_entropy(out, labels), theta, create_graph=True)[0]

    compiled = CompiledStudentStep(net, unflatten)
    steps = {
        "eager": eager_step,
        "checkpointed": lambda *a: checkpoint(eager_step, *a, use_reentrant=False),
        "compiled": compiled,
    }

    def unroll(step) -> torch.Tensor:
        syn.grad = lr.grad = None
        theta = theta0.clone().requires_grad_(True)
        for i in range(args.steps):
            theta = step(theta, syn * (1.0 + 0.01 * i), y, lr)  # a new input each step, as augmentation gives
        loss = ((theta - target) ** 2).sum() / ((theta0 - target) ** 2).sum()
        loss.backward()
        return syn.grad.clone()

    def float64_gradient() -> torch.Tensor:
        net64 = copy.deepcopy(net).double()
        x64, lr64 = syn.detach().double().requires_grad_(True), lr.detach().double()
        theta = theta0.double().requires_grad_(True)
        for i in range(args.steps):
            out = functional_call(net64, unflatten(theta), (x64 * (1.0 + 0.01 * i),))
            theta = theta - lr64 * torch.autograd.grad(F.cross_entropy(out, y), theta, create_graph=True)[0]
        t0, t = theta0.double(), target.double()
        (((theta - t) ** 2).sum() / ((t0 - t) ** 2).sum()).backward()
        return x64.grad

    exact = float64_gradient()
    times: dict[str, list[float]] = {k: [] for k in steps}
    grads: dict[str, torch.Tensor] = {}
    for r in range(args.rounds):
        for name, step in steps.items():
            start = time.perf_counter()
            grads[name] = unroll(step)
            if r:
                times[name].append((time.perf_counter() - start) / args.steps)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.steps} steps, {args.images} images")
    print(
        "| variant | s / step (median) | runs | gradient vs eager | vs float64 (max diff / max) |\n"
        "|---|---|---|---|---|"
    )
    for name, ts in times.items():
        vs_eager = float((grads[name] - grads["eager"]).abs().max() / grads["eager"].abs().max())
        vs_exact = float((grads[name].double() - exact).abs().max() / exact.abs().max())
        runs = ", ".join(f"{t:.3f}" for t in ts)
        print(f"| {name} | {statistics.median(ts):.3f} | {runs} | {vs_eager:.1e} | {vs_exact:.1e} |")
    if args.flops:  # the compiled step does the checkpointed step's arithmetic
        from flops import conv_rate, count_flops, floor_report

        rate = conv_rate()
        for name in ("eager", "checkpointed"):
            work = count_flops(lambda: unroll(steps[name])) / args.steps
            seconds = statistics.median(times["compiled" if name == "checkpointed" else name])
            label = "compiled (the checkpointed arithmetic)" if name == "checkpointed" else name
            print(floor_report(f"{label}, one student step", work, seconds, rate, args.target))
    if args.profile:
        from torch.profiler import profile

        for name in ("eager", "compiled"):
            with profile() as prof:
                unroll(steps[name])
            print(f"\n{name}:\n" + prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
