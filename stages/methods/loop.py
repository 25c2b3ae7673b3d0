"""The condensation loop: rounds of image updates, checkpoints, resume, and
NaN/Inf handling (stop, or roll back with halved learning rates)."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from stages.errors import ChddlError
from stages.executor import rank_world
from stages.methods.base import BaseMethod
from stages.methods.checkpoint import load_checkpoint, save_checkpoint
from stages.progress import Progress
from stages.sharding import sum_gradients, sum_over_ranks


@dataclass
class LoopSettings:
    iterations: int
    seed: int
    lam: float
    schedule: str  # summed | sequential | algorithm1 (see Loop.step)
    domain_lambda: bool  # sequential, algorithm1: the domain steps minimise lam * L_dom (off: L_dom itself)
    momentum: float
    lr: dict[str, float]  # per parameter group: images, masks, method groups
    adam_groups: tuple[str, ...]  # groups trained with Adam; the others with SGD and ``momentum``
    clip_grad: float | None
    nan_retries: int
    log_every: int
    checkpoint_every: int
    checkpoint_minutes: float
    first_checkpoint_minutes: float = 1.0  # the first timed checkpoint of a run comes sooner
    image_betas: tuple[float, float] = (0.9, 0.999)  # Adam's betas for the images, when "images" is an Adam group
    cosine_groups: tuple[str, ...] = ()  # groups whose lr follows lr * (1 + cos(pi * it / iterations)) / 2
    clamp: tuple[torch.Tensor, torch.Tensor] | None = None  # (low, high) of the images after every step


# A state at least this large is kept to roll back to as the checkpoint on disk rather than as a copy in memory
# (for DM + CHDDL on 200 classes at 64 px, the masks and their momentum: 0.73 GiB), whenever writing it costs at
# most SPILL_BUDGET of the time between two checks.
SPILL_BYTES = 64 * 2**20
SPILL_BUDGET = 0.02


StateLoader = Callable[[], dict[str, torch.Tensor]]


def iteration_generator(seed: int, iteration: int) -> torch.Generator:
    # Per-iteration seeding: resuming at iteration k needs no saved RNG state.
    return torch.Generator().manual_seed(seed * 1_000_003 + iteration)


class Loop:
    """Runs ``objective`` (a base method, maybe domain-aware) on ``images``."""

    def __init__(
        self,
        base: BaseMethod,
        objective,
        images: torch.Tensor,
        s: LoopSettings,
        key: str,
        partial: Path,
        progress: Progress,
        description: str = "condense",
    ) -> None:
        self.base, self.objective, self.images, self.s = base, objective, images, s
        self.key, self.partial, self.progress, self.description = key, partial, progress, description
        self.groups: dict[str, list[torch.Tensor]] = {"images": [images]}
        if objective.extra_parameters():
            self.groups["masks"] = objective.extra_parameters()
        self.momentum: dict[str, float] = {}
        for group in base.extra_parameter_groups():
            self.groups[group["name"]] = group["params"]
            if "momentum" in group:
                self.momentum[group["name"]] = group["momentum"]
        self.skipped = 0  # updates the method declined (BaseMethod.accept_update)
        self.trains_between_steps = type(base).after_step is not BaseMethod.after_step
        self.opts = {n: self._optimizer(n, p) for n, p in self.groups.items()}
        self.base_lr = {n: s.lr[n] for n in s.cosine_groups if n in self.groups}
        self.history = torch.zeros(s.iterations, 2)
        self.rollbacks: list[dict] = []
        self.timings: list[float] = []
        self.earlier_s = 0.0  # wall time earlier (interrupted) runs spent reaching the resumed checkpoint
        self.continued_at: int | None = None  # the finished shorter run's iteration this run started from
        self._clock = time.monotonic()
        self.writes = [0, 0.0]  # checkpoints this process wrote, and the seconds they took

    def _optimizer(self, name: str, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        if name in self.s.adam_groups:
            betas = self.s.image_betas if name == "images" else (0.9, 0.999)
            return torch.optim.Adam(params, lr=self.s.lr[name], betas=betas)
        return torch.optim.SGD(params, lr=self.s.lr[name], momentum=self.momentum.get(name, self.s.momentum))

    # -- state ---------------------------------------------------------------
    def state(self, copy: bool = True) -> dict[str, torch.Tensor]:
        """Everything a resumed run needs; ``copy=False``: the live tensors themselves (to be written at once)."""
        elapsed = self.earlier_s + time.monotonic() - self._clock
        out = {"history": self.history.clone(), "elapsed_s": torch.tensor(elapsed, dtype=torch.float64)}
        if self.continued_at is not None:  # kept through checkpoints, so a resumed rung still names its source
            out["continued_at"] = torch.tensor(self.continued_at)
        for name, params in self.groups.items():
            opt = self.opts[name]
            out[f"lr/{name}"] = torch.tensor(opt.param_groups[0]["lr"], dtype=torch.float64)
            if name in self.base_lr:
                out[f"base_lr/{name}"] = torch.tensor(self.base_lr[name], dtype=torch.float64)
            for i, p in enumerate(params):
                out[f"param/{name}/{i}"] = p.detach().clone() if copy else p.detach()
                for k, v in opt.state.get(p, {}).items():  # SGD: momentum_buffer; Adam: step, exp_avg, exp_avg_sq
                    out[f"opt/{name}/{i}/{k}"] = torch.as_tensor(v).clone() if copy else torch.as_tensor(v)
        return out

    def restore(self, saved: dict[str, torch.Tensor]) -> None:
        """Load a :meth:`state`; its history may be shorter than this run's
        (the final state of a finished run with fewer iterations)."""
        done = saved["history"][: len(self.history)]
        self.continued_at = int(saved["continued_at"]) if "continued_at" in saved else None
        self.history.zero_()
        self.history[: len(done)] = done
        with torch.no_grad():
            for name, params in self.groups.items():
                opt = self.opts[name]
                opt.param_groups[0]["lr"] = float(saved[f"lr/{name}"])
                if f"base_lr/{name}" in saved:
                    self.base_lr[name] = float(saved[f"base_lr/{name}"])
                for i, p in enumerate(params):
                    p.copy_(saved[f"param/{name}/{i}"].to(p.device))
                    prefix = f"opt/{name}/{i}/"
                    state = {k[len(prefix) :]: v.clone() for k, v in saved.items() if k.startswith(prefix)}
                    if f"momentum/{name}/{i}" in saved:  # checkpoints written before the optimiser choice existed
                        state["momentum_buffer"] = saved[f"momentum/{name}/{i}"].clone()
                    # Adam keeps its step count on the host (unless capturable); the rest lives with the parameter.
                    opt.state[p] = {k: v if k == "step" else v.to(p.device) for k, v in state.items()}

    def learning_rates(self) -> dict[str, float]:
        return {n: o.param_groups[0]["lr"] for n, o in self.opts.items()}

    # -- one update ----------------------------------------------------------
    def _apply(self, names: list[str]) -> None:
        if not self.base.accept_update():
            self.skipped += 1
            return
        sum_gradients([p for n in names for p in self.groups[n]])  # torchrun: each rank computed its classes' part
        if self.s.clip_grad is not None and self.images.grad is not None:
            torch.nn.utils.clip_grad_norm_([self.images], self.s.clip_grad)
        for n in names:
            self.opts[n].step()
        if self.s.clamp is not None and "images" in names:
            with torch.no_grad():
                low, high = self.s.clamp
                self.images.copy_(torch.maximum(torch.minimum(self.images, high), low))
        self.base.after_update()

    def _zero(self) -> None:
        for o in self.opts.values():
            o.zero_grad(set_to_none=True)

    def _apply_rows(self, rows: torch.Tensor) -> None:
        """An image step that moves only ``rows``: SGD's momentum would
        otherwise move the other images on a step whose loss ignores them."""
        opt = self.opts["images"]
        others = torch.ones(len(self.images), dtype=torch.bool, device=self.images.device)
        others[rows] = False
        kept = self.images.detach()[others].clone()
        buffers = {
            k: v[others].clone() for k, v in opt.state.get(self.images, {}).items() if torch.is_tensor(v) and v.ndim
        }
        self._apply(["images"])
        with torch.no_grad():
            self.images[others] = kept
            for k, v in buffers.items():
                opt.state[self.images][k][others] = v

    def _domain_weight(self) -> float:
        return self.s.lam if self.s.domain_lambda else 1.0

    def step(self, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """One image update of the schedule; returns the detached class and domain losses.

        - ``summed``: one step on L_cls + lam * L_dom (images, masks, method groups).
        - ``sequential``: a step on L_cls, then a step on lam * L_dom (both as wholes).
        - ``algorithm1`` (the paper's pseudocode, literally): one step per class c
          on that class's loss, moving only class c's images (for a base whose
          class loss does not split by class, MTT, one step on the whole L_cls),
          then one step per pseudo-domain d on that domain's loss, moving the
          images and the masks, with fresh views after every step.
        ``domain_lambda`` off makes the domain steps of the last two minimise
        L_dom unweighted, as Algorithm 1 writes it (lam then has no effect).
        """
        method_groups = [n for n in self.groups if n not in ("images", "masks")]
        zero = self.images.new_zeros(())
        if "masks" in self.groups and self.s.schedule == "algorithm1":
            return self._algorithm1(g, method_groups)
        if (self.s.schedule == "summed" or "masks" not in self.groups) and self.objective.separable:
            # L_cls + lam * L_dom, one graph at a time (draws in the same order as losses()).
            self._zero()
            l_cls = self.objective.class_loss(self.images, g)
            l_cls.backward()
            l_dom = self.objective.domain_loss(self.images, g)
            if l_dom is not None:
                (self.s.lam * l_dom).backward()
            self._apply(list(self.groups))
            return l_cls.detach(), zero if l_dom is None else l_dom.detach()
        if self.s.schedule == "summed" or "masks" not in self.groups:
            l_cls, l_dom = self.objective.losses(self.images, g)
            self._zero()
            (l_cls if l_dom is None else l_cls + self.s.lam * l_dom).backward()
            self._apply(list(self.groups))
            return l_cls.detach(), zero if l_dom is None else l_dom.detach()
        # sequential: a class step, then a domain step on images and masks.
        l_cls = self.objective.class_loss(self.images, g)
        self._zero()
        l_cls.backward()
        self._apply(["images", *method_groups])
        l_dom = self.objective.domain_loss(self.images, g)
        self._zero()
        (self._domain_weight() * l_dom).backward()
        self._apply(list(self.groups))
        return l_cls.detach(), l_dom.detach()

    def _algorithm1(self, g: torch.Generator, method_groups: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        cls_total, dom_total = self.images.new_zeros(()), self.images.new_zeros(())
        for rows, l_cls in self.objective.class_losses(self.images, g):
            self._zero()
            l_cls.backward()
            if rows is None:
                self._apply(["images", *method_groups])
            else:
                self._apply_rows(rows)
            cls_total = cls_total + l_cls.detach()
        for d in self.objective.step_domains(g):
            l_dom = self.objective.domain_loss_of(d, self.images, g)
            self._zero()
            (self._domain_weight() * l_dom).backward()
            self._apply(list(self.groups))
            dom_total = dom_total + l_dom.detach()
        return cls_total, dom_total

    def _finite(self, values: torch.Tensor) -> bool:
        return bool(torch.isfinite(values).all()) and all(
            bool(torch.isfinite(p).all()) for ps in self.groups.values() for p in ps
        )

    # -- the loop ------------------------------------------------------------
    def run(self, stop_after: int | None = None, start_from: tuple[int, StateLoader] | None = None) -> int:
        """Run to the end (resuming a checkpoint if one exists); returns the start iteration.

        ``start_from`` is (iteration, a function that loads its :meth:`state`) of
        a finished shorter run of the same settings: the loop continues from it,
        unless a checkpoint of this run is further along (then it is not loaded).

        Checkpoints every ``checkpoint_every`` iterations or ``checkpoint_minutes``,
        whichever comes first, and on interruption (KeyboardInterrupt) saves the
        last state that passed the finiteness check before re-raising. A large
        state (at least SPILL_BYTES) is written as the checkpoint at every check
        instead of copied in memory, while that costs at most SPILL_BUDGET of the run.
        """
        start, on_disk = 0, False
        resumed = load_checkpoint(self.partial, self.key)
        if start_from is not None and (resumed is None or resumed[0] < start_from[0]):
            start, saved = start_from[0], start_from[1]()
            self.restore(saved)
            self.continued_at = start
            self.earlier_s = float(saved.get("elapsed_s", 0.0))
        elif resumed is not None:
            (start, saved), on_disk = resumed, True
            self.restore(saved)
            # Checkpoints written before elapsed_s existed carry no time: count it as unknown (0).
            self.earlier_s = float(saved.get("elapsed_s", 0.0))
            self.progress.note(f"resuming from the checkpoint at iteration {start} ({self.partial})")
        resumed = saved = None  # the loaded tensors are in the parameters now; hold no second copy of them
        self._clock = time.monotonic()
        self._checked = self._clock  # when the state was last checked
        self._saved = (start, self._clock)
        self._save_s = 0.0  # how long the last checkpoint took to write (nothing written yet: free)
        if on_disk:
            self._good: tuple[int, dict[str, torch.Tensor] | None] = (start, None)
        else:
            self._keep_good(start, self._spills(self._clock))
        try:
            self._iterate(start, stop_after)
        except KeyboardInterrupt:
            if self._good[0] > self._saved[0]:
                self._checkpoint(*self._good)
            raise
        self._zero()  # the last update's gradients (the masks': D x the images' size) while the artifact is made
        return start

    def _keep_good(self, it: int, write: bool, final: bool = False) -> None:
        """Keep the checked state at ``it``, to roll back to or to save on an interruption: as the checkpoint
        written now from the live tensors (``write``; no copy held), else as a copy in memory (the live tensors
        themselves after the last iteration, when nothing changes them any more)."""
        if write:
            self._checkpoint(it, self.state(copy=False))
            self._good = (it, None)
        else:
            self._good = (it, self.state(copy=not final))

    def _spills(self, now: float) -> bool:
        """Whether the state is large enough, and writing it cheap enough, to keep it on disk at this check."""
        if rank_world()[1] > 1:  # a rank that writes no checkpoint could not roll back to one
            return False
        size = sum(v.numel() * v.element_size() for v in self.state(copy=False).values())
        # before the first write its cost is unknown: one write (at the start) measures it
        return size >= SPILL_BYTES and (self._save_s == 0 or self._save_s <= SPILL_BUDGET * (now - self._checked))

    def _good_state(self) -> tuple[int, dict[str, torch.Tensor]]:
        it, state = self._good
        if state is not None:
            return it, state
        saved = load_checkpoint(self.partial, self.key)
        if saved is None or saved[0] != it:
            raise ChddlError(
                f"the checkpoint of iteration {it} to roll back to is gone from {self.partial}; re-run the command"
            )
        return saved

    def _checkpoint(self, it: int, state: dict[str, torch.Tensor]) -> None:
        t0 = time.monotonic()
        if rank_world()[0] == 0:  # under torchrun every rank holds the same state; one writes it
            save_checkpoint(self.partial, self.key, it, state)
        self._saved = (it, time.monotonic())
        self._save_s = self._saved[1] - t0
        self.writes = [self.writes[0] + 1, self.writes[1] + self._save_s]

    def _iterate(self, start: int, stop_after: int | None) -> None:
        s = self.s
        pending: list[tuple[int, torch.Tensor, torch.Tensor]] = []
        retries = s.nan_retries
        it = start
        with self.progress.task(self.description, total=s.iterations, done=start) as task:
            while it < s.iterations:
                t0 = time.perf_counter()
                if not pending:
                    batch_t0 = t0
                g = iteration_generator(s.seed, it)
                for n, lr in self.base_lr.items():
                    self.opts[n].param_groups[0]["lr"] = lr * 0.5 * (1 + math.cos(math.pi * it / s.iterations))
                self.base.new_round(it, self.objective.roles, g)
                cls_sum, dom_sum = self.images.new_zeros(()), self.images.new_zeros(())
                for step in range(self.base.steps_per_round()):
                    l_cls, l_dom = self.step(g)
                    cls_sum, dom_sum = cls_sum + l_cls, dom_sum + l_dom
                    if self.trains_between_steps:  # the views of every image, made only for a method that uses them
                        self.base.after_step(step, self.objective.training_sets(self.images), g)
                pending.append((it, cls_sum, dom_sum))
                self.timings.append(time.perf_counter() - t0)
                it += 1
                if it % s.log_every and it % s.checkpoint_every and it < s.iterations and it - start != stop_after:
                    continue
                # the only host sync; under torchrun the losses of all ranks' classes, summed
                values = sum_over_ranks(torch.stack([torch.stack([c, d]) for _, c, d in pending])).cpu()
                if self.images.is_cuda:
                    # Kernels run asynchronously: an iteration's host time is only its launches. The batch's
                    # wall time up to this sync, shared equally, is what the device actually spent.
                    self.timings[-len(pending) :] = [(time.perf_counter() - batch_t0) / len(pending)] * len(pending)
                if not self._finite(values):
                    bad = (
                        next(i for (i, _, _), row in zip(pending, values) if not torch.isfinite(row).all()) + 1
                        if not torch.isfinite(values).all()
                        else it
                    )
                    if retries == 0:
                        raise ChddlError(
                            f"non-finite loss or images at iteration {bad}; stopped. The last good checkpoint is "
                            f"kept in {self.partial} (re-running resumes from it); lower --lr-img or --mask-lr, or "
                            "allow --nan-retries"
                        )
                    retries -= 1
                    good_it, good = self._good_state()
                    self.restore(good)
                    del good
                    for opt in self.opts.values():
                        opt.param_groups[0]["lr"] *= 0.5
                    self.base_lr = {n: lr * 0.5 for n, lr in self.base_lr.items()}
                    self.rollbacks.append({"at_iteration": bad, "back_to": good_it, "lr": self.learning_rates()})
                    self.progress.note(
                        f"non-finite values at iteration {bad}: rolled back to {good_it} with halved learning rates"
                    )
                    task.advance(good_it - it)
                    it, pending = good_it, []
                    continue
                for (i, _, _), row in zip(pending, values):
                    self.history[i] = row
                shown = {"loss": float(self.history[it - 1, 0])}
                if "domain" in self.objective.roles:  # the base method alone has no domain loss to show
                    shown["dom"] = float(self.history[it - 1, 1])
                task.advance(len(pending), **shown)
                pending = []
                now, final = time.monotonic(), it >= s.iterations
                stop = stop_after is not None and it - start >= stop_after
                minutes = s.first_checkpoint_minutes if self._saved[0] == start else s.checkpoint_minutes
                # timed checkpoints spaced so that writing them costs at most ~1% of the run
                interval = max(60 * minutes, 100 * self._save_s)
                due = not final and (it % s.checkpoint_every == 0 or now - self._saved[1] >= interval)
                self._keep_good(it, due or stop or (not final and self._spills(now)), final)
                self._checked = now
                if stop:
                    raise KeyboardInterrupt

    def stats(self, start: int) -> dict:
        steady = sorted(self.timings[1:] if len(self.timings) > 1 else self.timings)
        return {
            "final_loss_cls": round(float(self.history[-1, 0]), 6),
            "final_loss_dom": round(float(self.history[-1, 1]), 6),
            "s_per_iteration": round(steady[len(steady) // 2], 4) if steady else None,
            "iterations_run": len(self.timings),
            "resumed_from": start,
            "rollbacks": self.rollbacks,
            "checkpoints_written": self.writes[0],
            "checkpoint_write_s": round(self.writes[1], 3),
            "final_lr": self.learning_rates(),
        } | ({"updates_skipped": self.skipped} if self.skipped else {})
