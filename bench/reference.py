"""Time the reference implementations' own condensation loops on this machine.

Our harness around the reference code (not part of chddl and not copied
from it): it imports the reference repository's modules from a folder the
user fetched (VICO-UoE/DatasetCondensation for DM and DC,
GeorgeCazenavette/mtt-distillation for MTT) and runs the body of their
training loops (main_DM.py's ConvNet branch, main.py's DC outer loop,
distill.py's student unroll) on random data of the benchmark's shape (by
default 10 classes x 500 images of 32x32x3 and ConvNet; ``--classes 7 --size
64`` is PACS at 64 px with ConvNetD4, as the reference names depth 4), 256
real images per class, DSA for DM and MTT, on ``--device`` (cpu or cuda: data,
synthetic images and networks live there, as in the reference scripts).
Modules the timed code never calls (scipy's rotate, kornia, tqdm, wandb) are
stubbed when missing, so no extra install is needed.

    python bench/reference.py --reference .reference --method dm --ipc 10 --iterations 5
    python bench/reference.py --reference .reference --method mtt --ipc 10 --classes 7 --size 64 --syn-steps 20 \
        --device cuda

prints one JSON line: seconds per iteration (median after the first; on CUDA
each iteration ends with a synchronize), peak RSS and, on CUDA, peak CUDA memory.
"""

from __future__ import annotations

import argparse
import importlib.machinery
import json
import re
import resource
import sys
import time
import types
from dataclasses import dataclass
from pathlib import Path

#: folder names of the reference repositories under --reference (as `fetch` + clone lay them out), or plain names
REPOS = {
    "dc": ("VICO-UoE+DatasetCondensation", "DatasetCondensation"),
    "mtt": ("GeorgeCazenavette+mtt-distillation", "mtt-distillation"),
}


def repo_dir(reference: Path, method: str) -> Path | None:
    """The reference repository for ``method`` under ``reference``, or None."""
    for name in REPOS["mtt" if method == "mtt" else "dc"]:
        if (reference / name / "utils.py").is_file():
            return reference / name
    if (reference / "utils.py").is_file():
        return reference
    return None


def _stub_missing() -> None:
    def stub(name: str, **attrs) -> None:
        try:
            __import__(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None)
            sys.modules[name] = module

    stub("scipy")
    stub("scipy.ndimage")
    stub("scipy.ndimage.interpolation", rotate=None)
    stub("kornia")
    stub("wandb")
    stub("tqdm", tqdm=lambda x, *a, **k: x, trange=range)


def _load_utils(repo: Path) -> None:
    """Import the repository's utils.py as ``utils``, with one change made in memory: its siamese
    augmentation copies element 0 onto its own tensor in place (``t[:] = t[0]``), which torch >= 2.1
    refuses; ``t[:] = t[0].clone()`` does the same work plus a copy of one element."""
    source = (repo / "utils.py").read_text()
    source = re.sub(r"(\w+)\[:\] = (\w+)\[0\]$", r"\1[:] = \2[0].clone()", source, flags=re.MULTILINE)
    module = types.ModuleType("utils")
    module.__file__ = str(repo / "utils.py")
    sys.modules["utils"] = module
    exec(compile(source, str(repo / "utils.py"), "exec"), module.__dict__)


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def _median_after_first(times: list[float]) -> float:
    steady = sorted(times[1:] if len(times) > 1 else times)
    return steady[len(steady) // 2]


@dataclass
class Shape:
    """What the timed loop works on: class count, image side, the reference's network name and device."""

    classes: int = 10
    size: int = 32
    device: str = "cpu"

    @property
    def net(self) -> str:
        # the reference scripts name ConvNet's depth by resolution: ConvNet (3) at 32 px, ConvNetD4 at 64 px
        return {32: "ConvNet", 64: "ConvNetD4"}[self.size]

    def network(self, **kw):
        from utils import get_network

        # the reference moves networks to cuda whenever one exists; --device decides here
        return get_network(self.net, 3, self.classes, (self.size, self.size), **kw).to(self.device)

    def sync(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.synchronize()


def _real_data(torch, shape: Shape, n_per_class: int = 500):
    images = torch.randn(n_per_class * shape.classes, 3, shape.size, shape.size, device=shape.device)
    labels = torch.arange(n_per_class * shape.classes) % shape.classes
    return images, [torch.nonzero(labels == c).flatten().tolist() for c in range(shape.classes)]


def _syn(torch, shape: Shape, ipc: int):
    return torch.randn(shape.classes * ipc, 3, shape.size, shape.size, device=shape.device, requires_grad=True)


def time_dm(shape: Shape, ipc: int, iterations: int) -> list[float]:
    """main_DM.py's ConvNet branch: per class, embed real and synthetic, squared distance of the means."""
    import numpy as np
    import torch
    from utils import DiffAugment, ParamDiffAug

    images_all, indices_class = _real_data(torch, shape)
    image_syn = _syn(torch, shape, ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=1.0, momentum=0.5)
    param, strategy = ParamDiffAug(), "color_crop_cutout_flip_scale_rotate"
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        net = shape.network()
        net.train()
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.tensor(0.0, device=shape.device)
        for c in range(shape.classes):
            img_real = images_all[np.random.permutation(indices_class[c])[:256]]
            img_syn = image_syn[c * ipc : (c + 1) * ipc]
            seed = int(time.time() * 1000) % 100000
            img_real = DiffAugment(img_real, strategy, seed=seed, param=param)
            img_syn = DiffAugment(img_syn, strategy, seed=seed, param=param)
            loss += torch.sum((net.embed(img_real).detach().mean(0) - net.embed(img_syn).mean(0)) ** 2)
        optimizer_img.zero_grad()
        loss.backward()
        optimizer_img.step()
        loss.item()
        shape.sync()
        times.append(time.perf_counter() - t0)
    return times


def time_dc(shape: Shape, ipc: int, iterations: int) -> list[float]:
    """main.py's DC loop (no DSA, as for --method DC), IPC 1: one gradient-matching step per iteration."""
    import numpy as np
    import torch
    from torch import nn
    from utils import TensorDataset, epoch, get_loops, match_loss

    images_all, indices_class = _real_data(torch, shape)
    image_syn = _syn(torch, shape, ipc)
    label_syn = torch.arange(shape.classes, device=shape.device).repeat_interleave(ipc)
    optimizer_img = torch.optim.SGD([image_syn], lr=0.1, momentum=0.5)
    outer_loop, inner_loop = get_loops(ipc)
    args = types.SimpleNamespace(
        device=shape.device, dis_metric="ours", dsa=False, dc_aug_param=None, batch_train=256, lr_net=0.01
    )
    criterion = nn.CrossEntropyLoss()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        net = shape.network()
        net.train()
        params = list(net.parameters())
        optimizer_net = torch.optim.SGD(net.parameters(), lr=args.lr_net)
        for ol in range(outer_loop):
            loss = torch.tensor(0.0, device=shape.device)
            for c in range(shape.classes):
                img_real = images_all[np.random.permutation(indices_class[c])[:256]]
                lab_real = torch.full((len(img_real),), c, dtype=torch.long, device=shape.device)
                img_syn = image_syn[c * ipc : (c + 1) * ipc]
                lab_syn = torch.full((ipc,), c, dtype=torch.long, device=shape.device)
                gw_real = [g.detach().clone() for g in torch.autograd.grad(criterion(net(img_real), lab_real), params)]
                gw_syn = torch.autograd.grad(criterion(net(img_syn), lab_syn), params, create_graph=True)
                loss += match_loss(gw_syn, gw_real, args)
            optimizer_img.zero_grad()
            loss.backward()
            optimizer_img.step()
            loss.item()
            if ol == outer_loop - 1:
                break
            dst = TensorDataset(image_syn.detach().clone(), label_syn.clone())
            loader = torch.utils.data.DataLoader(dst, batch_size=args.batch_train, shuffle=True, num_workers=0)
            for _ in range(inner_loop):
                epoch("train", loader, net, optimizer_net, criterion, args, aug=False)
        shape.sync()
        times.append(time.perf_counter() - t0)
    return times


def time_mtt(shape: Shape, ipc: int, iterations: int, syn_steps: int = 50, expert_epochs: int = 2) -> list[float]:
    """distill.py's iteration: unroll ``syn_steps`` student steps on the whole synthetic set (DSA on each),
    then the normalised distance to the expert's parameters ``expert_epochs`` later; random expert weights."""
    import torch
    from reparam_module import ReparamModule
    from utils import DiffAugment, ParamDiffAug

    image_syn = _syn(torch, shape, ipc)
    label_syn = torch.arange(shape.classes, device=shape.device).repeat_interleave(ipc)
    syn_lr = torch.tensor(0.01, device=shape.device, requires_grad=True)
    optimizer_img = torch.optim.SGD([image_syn], lr=1000, momentum=0.5)
    optimizer_lr = torch.optim.SGD([syn_lr], lr=1e-5, momentum=0.5)
    param, strategy = ParamDiffAug(), "color_crop_cutout_flip_scale_rotate"
    template = shape.network(dist=False)
    flat = torch.cat([p.detach().reshape(-1) for p in template.parameters()])
    trajectory = [flat + 0.01 * torch.randn_like(flat) * e for e in range(expert_epochs + 1)]
    criterion = torch.nn.CrossEntropyLoss()
    times = []
    for _ in range(iterations):
        t0 = time.perf_counter()
        student_net = ReparamModule(shape.network(dist=False))
        student_net.train()
        num_params = sum(p.numel() for p in student_net.parameters())
        starting, target = trajectory[0], trajectory[expert_epochs]
        student_params = [starting.clone().requires_grad_(True)]
        for _ in range(syn_steps):
            idx = torch.randperm(len(image_syn), device=shape.device)
            x = DiffAugment(image_syn[idx], strategy, param=param)
            out = student_net(x, flat_param=student_params[-1])
            grad = torch.autograd.grad(criterion(out, label_syn[idx]), student_params[-1], create_graph=True)[0]
            student_params.append(student_params[-1] - syn_lr * grad)
        param_loss = torch.nn.functional.mse_loss(student_params[-1], target, reduction="sum") / num_params
        param_dist = torch.nn.functional.mse_loss(starting, target, reduction="sum") / num_params
        grand_loss = param_loss / param_dist
        optimizer_img.zero_grad()
        optimizer_lr.zero_grad()
        grand_loss.backward()
        optimizer_img.step()
        optimizer_lr.step()
        grand_loss.item()
        del student_params
        shape.sync()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reference", type=Path, required=True, help="folder holding the reference repositories")
    parser.add_argument("--method", choices=["dm", "dc", "mtt"], required=True)
    parser.add_argument("--ipc", type=int, default=10)
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--classes", type=int, default=10, help="classes of the random data (PACS: 7)")
    parser.add_argument(
        "--size", type=int, choices=(32, 64), default=32, help="image side of the random data (ConvNet / ConvNetD4)"
    )
    parser.add_argument("--syn-steps", type=int, default=50, help="mtt: student steps per iteration")
    parser.add_argument("--expert-epochs", type=int, default=2, help="mtt: expert epochs the student must cover")
    args = parser.parse_args()
    repo = repo_dir(args.reference, args.method)
    if repo is None:
        parser.error(f"no reference repository for {args.method} under {args.reference}; see the module docstring")
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    _stub_missing()
    sys.path.insert(0, str(repo))
    _load_utils(repo)
    shape = Shape(args.classes, args.size, args.device)
    if args.method == "mtt":
        times = time_mtt(shape, args.ipc, args.iterations, args.syn_steps, args.expert_epochs)
    else:
        times = {"dm": time_dm, "dc": time_dc}[args.method](shape, args.ipc, args.iterations)
    cuda = args.device.startswith("cuda")
    print(
        json.dumps(
            {
                "s_per_iteration": round(_median_after_first(times), 4),
                "peak_rss_gb": round(_peak_rss_gb(), 3),
                "peak_cuda_gb": round(torch.cuda.max_memory_allocated() / 2**30, 3) if cuda else None,
                "device": torch.cuda.get_device_name() if cuda else "cpu",
                "shape": {"classes": shape.classes, "size": shape.size, "net": shape.net},
                "times": [round(t, 3) for t in times],
                "torch": torch.__version__,
                "threads": torch.get_num_threads(),
            }
        )
    )


if __name__ == "__main__":
    main()
