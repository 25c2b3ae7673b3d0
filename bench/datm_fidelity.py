"""DATM fidelity: chddl's DATM beside the reference repository's distillation loop, on the same data, the
same experts and the same evaluation.

Needs the reference repository checked out in the ignored folder .reference/DATM
(``git clone https://github.com/NUS-HPC-AI-Lab/DATM .reference/DATM``) and a workspace holding a dataset
and class experts (``chddl -w WS label DATA --zca && chddl -w WS pretrain-experts --no-domain-experts``).
Then, for each seed:

1. ours: ``chddl condense --base datm`` with the settings below (the library call);
2. the reference: ``distill/DATM.py``'s ``main`` run unchanged in this process, with its inputs swapped
   for ours: the dataset (its ``get_dataset`` returns our workspace's training split, normalised and
   ZCA-whitened exactly as our condensation sees it, so its own ZCA is off), our experts written in its
   replay-buffer format (checked: its ConvNet with an expert's parameters gives our network's logits),
   its seed, wandb and yacs replaced by stand-ins that keep the config and drop the logging, and CUDA
   mapped to the CPU. Its evaluation point at the last iteration hands back the images, learned labels
   and learned lr instead of evaluating them; these are stored as a condensed set beside ours;
3. both sets evaluated by ``chddl evaluate`` (the set's own soft labels and learned lr) with the same runs
   and epochs.

None of the reference's code is part of chddl; it is imported from .reference/DATM at run time.

    python bench/datm_fidelity.py WS --seeds 0 1 --runs 3 --epochs 300   # RESULTS.md's table (the defaults)
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.machinery
import io
import json
import os
import re
import sys
import tempfile
import time
import types
from pathlib import Path

import torch
from _tree import ROOT

REFERENCE = ROOT / ".reference" / "DATM"


class _Captured(Exception):
    """Raised by the stand-in for the reference's evaluation: the distillation is over."""


def _module(name: str, **attrs) -> None:
    module = types.ModuleType(name)
    module.__dict__.update(attrs)
    module.__spec__ = importlib.machinery.ModuleSpec(name, None)
    sys.modules[name] = module


class _Config(dict):
    """yacs' CfgNode as far as the reference uses it: a dict with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e

    def __setattr__(self, key, value):
        self[key] = value


def _stand_ins(run_name: str) -> None:
    """Modules the reference imports but whose work is not compared here (logging, its ZCA, scipy's rotate
    for the DC augmentation it does not use): stand-ins, unless installed."""
    config = types.SimpleNamespace(_items={})

    def init(config=None, **_):
        sys.modules["wandb"].config._items = dict(vars(config))

    _module(
        "wandb",
        init=init,
        config=config,
        log=lambda *a, **k: None,
        finish=lambda: None,
        Histogram=lambda *a, **k: None,
        Image=lambda *a, **k: None,
        run=types.SimpleNamespace(name=run_name),
    )
    for name in ("kornia", "scipy", "scipy.ndimage"):
        with contextlib.suppress(ImportError):
            __import__(name)
            continue
        _module(name)
    if "scipy.ndimage.interpolation" not in sys.modules:
        with contextlib.suppress(ImportError):
            __import__("scipy.ndimage.interpolation")
        if "scipy.ndimage.interpolation" not in sys.modules:
            _module("scipy.ndimage.interpolation", rotate=None)
    try:
        __import__("tqdm")
    except ImportError:
        _module("tqdm", tqdm=lambda x, *a, **k: x)
    try:
        __import__("yacs.config")
    except ImportError:
        _module("yacs")
        _module("yacs.config", CfgNode=_Config)


def _reference_main():
    """The reference's ``distill/DATM.py`` module (its ``main``) and its default config."""
    if not (REFERENCE / "distill" / "DATM.py").exists():
        raise SystemExit(f"the reference is not checked out at {REFERENCE}; see this script's docstring")
    torch.Tensor.cuda = lambda self, *a, **k: self  # the reference moves tensors to CUDA: stay on the CPU
    for path in (REFERENCE, REFERENCE / "distill"):
        if str(path) not in sys.path:
            sys.path.insert(0, str(path))
    import DATM  # noqa: PLC0415
    from utils.cfg import CFG  # noqa: PLC0415

    return DATM, CFG


def write_buffer(store, folder: Path) -> None:
    """Our class experts as the reference's replay buffer: one file, a list of trajectories, each a list of
    snapshots (epochs 0..E), each a list of parameter tensors in the network's order."""
    trajectories = []
    for k in range(store.num_experts):
        snapshots = []
        for epoch in range(store.epochs + 1):
            flat, _ = store.pair("class", k, epoch, epoch, torch.device("cpu"))
            snapshots.append([p.detach().clone() for p in store.unflatten(flat).values()])
        trajectories.append(snapshots)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(trajectories, folder / "replay_buffer_0.pt")


def check_network(DATM, store, net, images: torch.Tensor) -> float:
    """The largest difference between the reference's ConvNet (through its ReparamModule) and ours, both
    with expert 0's final parameters, on ``images``."""
    from torch.func import functional_call

    flat, _ = store.pair("class", 0, store.epochs, store.epochs, torch.device("cpu"))
    theirs = DATM.ReparamModule(DATM.get_network("ConvNet", 3, 10, (32, 32), dist=False)).eval()
    with torch.no_grad():
        a = theirs(images, flat_param=flat)
        b = functional_call(net.eval(), store.unflatten(flat), (images,))
    return float((a - b).abs().max())


def reference_set(DATM, CFG, dataset, train: torch.Tensor, buffer_root: Path, settings: dict, seed: int):
    """Run the reference's main; return its images, label logits, learned lr, seconds and printed losses."""
    images = dataset.normalized(train)
    labels = dataset.labels[train]
    num_classes = dataset.num_classes

    def get_dataset(*_, **__):
        class_map = {c: c for c in range(num_classes)}
        train_set = torch.utils.data.TensorDataset(images, labels)
        return (3, (dataset.size, dataset.size), num_classes, dataset.class_names, dataset.mean, dataset.std,
                train_set, None, None, None, class_map, class_map)  # fmt: skip

    captured = {}

    def evaluate_synset(it_eval, net, images_train, labels_train, testloader, args, **_):
        captured.update(images=images_train.detach().clone(), labels=labels_train.detach().clone(), lr=args.lr_net)
        raise _Captured

    seed_everything = DATM.manual_seed
    DATM.get_dataset, DATM.evaluate_synset = get_dataset, evaluate_synset
    DATM.manual_seed = lambda s=0: seed_everything(seed)
    args = types.SimpleNamespace(**dict(CFG))
    args.__dict__.update(settings)
    args.__dict__.update(
        dataset="CIFAR10",  # names the buffer folder only
        model="ConvNet",
        zca=False,  # the images handed over are whitened already
        buffer_path=str(buffer_root),
        eval_it=settings["Iteration"],
        skip_first_eva=True,
        parall_eva=True,  # keeps its device the CPU
        num_eval=1,
        Sequential_Generation=settings.get("current_max_start_epoch") is not None,
    )
    if args.current_max_start_epoch is None:
        args.current_max_start_epoch = args.max_start_epoch
    log = io.StringIO()
    started = time.monotonic()
    with contextlib.redirect_stdout(log):
        try:
            DATM.main(args)
        except _Captured:
            pass
    seconds = time.monotonic() - started
    if not captured:
        raise SystemExit("the reference ended without reaching its last evaluation point:\n" + log.getvalue()[-2000:])
    text = log.getvalue()
    losses = [float(m) for m in re.findall(r"iter = \d+, loss = ([-\d.eE+naif]+)", text)]
    initial = re.search(r"InitialAcc:([\d.]+)", text)
    return captured, seconds, losses, float(initial.group(1)) if initial else None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("workspace")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=50)
    p.add_argument("--syn-steps", type=int, default=20)
    p.add_argument("--expert-epochs", type=int, default=2)
    p.add_argument("--batch-syn", type=int, default=25, help="images per student step (0: all)")
    p.add_argument("--min-start-epoch", type=int, default=0)
    p.add_argument("--current-max-start-epoch", type=int, default=2)
    p.add_argument("--max-start-epoch", type=int, default=4)
    p.add_argument("--expansion-end-epoch", type=int, default=25)
    p.add_argument("--lr-img", type=float, default=100.0)
    p.add_argument("--syn-lr", type=float, default=0.01)
    p.add_argument("--lr-lr", type=float, default=1e-5)
    p.add_argument("--lr-y", type=float, default=2.0)
    p.add_argument("--momentum-y", type=float, default=0.9)
    p.add_argument("--threshold", type=float, default=1.0)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--epochs", type=int, default=300)
    args = p.parse_args()
    from beside import score, store_beside

    from stages import api
    from stages.artifacts import Workspace
    from stages.data.dataset import load_dataset
    from stages.inputs import resolve
    from stages.methods.trajectories import ExpertStore
    from stages.models import create_model

    ws = Workspace(Path(args.workspace))
    dataset = load_dataset(resolve(ws, "dataset", None))
    store = ExpertStore(resolve(ws, "experts", None))
    ours_settings = {
        "ipc": args.ipc,
        "iterations": args.iterations,
        "syn_steps": args.syn_steps,
        "expert_epochs": args.expert_epochs,
        "batch_syn": args.batch_syn or None,
        "min_start_epoch": args.min_start_epoch,
        "current_max_start_epoch": args.current_max_start_epoch,
        "max_start_epoch": args.max_start_epoch,
        "expansion_end_epoch": args.expansion_end_epoch,
        "lr_img": args.lr_img,
        "syn_lr": args.syn_lr,
        "lr_lr": args.lr_lr,
        "lr_y": args.lr_y,
        "momentum_y": args.momentum_y,
        "threshold": args.threshold,
        "init": "real",
        "dsa": True,
        "checkpoint_student": False,  # the reference keeps the unrolled graph: the same work
    }
    theirs_settings = {
        "ipc": args.ipc,
        "Iteration": args.iterations,
        "syn_steps": args.syn_steps,
        "expert_epochs": args.expert_epochs,
        "batch_syn": args.batch_syn or dataset.num_classes * args.ipc,
        "min_start_epoch": args.min_start_epoch,
        "current_max_start_epoch": args.current_max_start_epoch,
        "max_start_epoch": args.max_start_epoch,
        "expansion_end_epoch": args.expansion_end_epoch,
        "lr_img": args.lr_img,
        "lr_teacher": args.syn_lr,
        "lr_lr": args.lr_lr,
        "lr_y": args.lr_y,
        "Momentum_y": args.momentum_y,
        "threshold": args.threshold,
        "pix_init": "samples_predicted_correctly",
        "dsa": True,
    }
    _stand_ins("chddl-fidelity")
    DATM, CFG = _reference_main()
    train = dataset.train_indices
    gap = check_network(
        DATM, store, create_model("convnet", dataset.num_classes, dataset.size), dataset.normalized(train[:64])
    )
    if gap > 1e-4:
        raise SystemExit(f"the reference's ConvNet and ours disagree by {gap:.2e} on the same parameters")
    result: dict = {"network_max_abs_difference": gap, "settings": ours_settings, "seeds": {}}
    with tempfile.TemporaryDirectory() as scratch:
        buffer_root = Path(scratch) / "buffers"
        write_buffer(store, buffer_root / "CIFAR10_NO_ZCA" / "ConvNet")
        for seed in args.seeds:
            started = time.monotonic()
            ours = api.condense(workspace=ws, base="datm", domain_aware=False, seed=seed, **ours_settings).artifact
            ours_s = time.monotonic() - started
            cwd = os.getcwd()
            os.chdir(scratch)  # anything the reference writes stays in the scratch folder
            try:
                got, theirs_s, losses, initial_acc = reference_set(
                    DATM, CFG, dataset, train, buffer_root, theirs_settings, seed
                )
            finally:
                os.chdir(cwd)
            tensors = ours.tensors() | {"images": got["images"], "soft_labels": got["labels"]}
            info = {"eval_lr": float(got["lr"])}
            ref = store_beside(ws, ours, "NUS-HPC-AI-Lab/DATM", ours_settings, tensors, seed, theirs_s, info)
            row: dict = {"ours_condense_s": round(ours_s, 1), "reference_condense_s": round(theirs_s, 1)}
            row["reference_initial_label_acc"] = initial_acc
            row["reference_loss_every_10"] = [round(v, 4) for v in losses]
            row["reference_eval_lr"] = float(got["lr"])
            row["ours_eval_lr"] = float(ours.info["eval_lr"])
            row["ours_final_loss"] = ours.metrics.get("final_loss_cls")
            row["ours_s_per_iteration"] = ours.metrics.get("s_per_iteration")
            row["reference_s_per_iteration"] = round(theirs_s / args.iterations, 3)
            row |= score(ws, {"ours": ours, "reference": ref}, runs=args.runs, epochs=args.epochs)
            for label, which in (("ours", ours), ("reference", ref)):
                learned = torch.softmax(which.tensor("soft_labels").float(), 1).argmax(1)
                row[label]["label_argmax_acc"] = float((learned == which.tensor("labels")).float().mean())
            result["seeds"][str(seed)] = row
            print(json.dumps(row), file=sys.stderr, flush=True)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
