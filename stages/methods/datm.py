"""DATM: difficulty-aligned trajectory matching (Guo et al., ICLR 2024).

MTT's trajectory matching (``stages.methods.mtt``: the same experts, student,
loss and learned learning rate, and MTT's settings), with three changes:

- **The matching window moves.** The start epoch is drawn from
  [``min_start_epoch``, upper) where upper grows linearly from
  ``current_max_start_epoch`` at iteration 0 to ``max_start_epoch`` at
  ``expansion_end_epoch`` (DATM's sequential generation: early, easy parts of
  the trajectories first); without ``current_max_start_epoch`` upper is
  ``max_start_epoch`` throughout.
- **Soft labels, learned.** Each synthetic image carries logits, initialised
  as the mean of the logits the class experts' final snapshots give it, over
  the experts that classify it correctly (all of them when none does); the
  student trains on softmax(logits) with cross-entropy, and the logits are
  learned with SGD (``lr_y``, ``momentum_y``). They are stored with the set
  as ``soft_labels``, which ``evaluate`` trains on by default.
- **Initialisation from correctly classified images** (``--init real``):
  for each class, real images in a random order, kept when the first class
  expert's final snapshot classifies them correctly (then the next expert's,
  if too few are); ``--init noise`` starts from noise as MTT does.

An update is skipped (images, lr and labels all left as they were) when the
matching loss exceeds ``threshold``. CHDDL's domain loss applies as for MTT;
the domain views train on the soft labels of their images.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.func import functional_call

from stages.config import option, require
from stages.methods.base import METHODS, MatchBatch, MethodContext, MethodSpec, RealPool
from stages.methods.mtt import COMPILE_FROM, MTT, MTTOptions, arguments
from stages.methods.mtt import validate as validate_mtt

PREDICT_CHUNK = 256


class DATM(MTT):
    def __init__(
        self,
        mtt_arguments: dict,
        min_start_epoch: int,
        current_max_start_epoch: int | None,
        expansion_end_epoch: int,
        lr_y: float,
        momentum_y: float,
        threshold: float,
        select_correct: bool,
    ) -> None:
        super().__init__(**mtt_arguments)
        self.min_start_epoch, self.expansion_end_epoch = min_start_epoch, expansion_end_epoch
        self.current_max_start_epoch = current_max_start_epoch
        self.lr_y, self.momentum_y, self.threshold = lr_y, momentum_y, threshold
        self.select_correct = select_correct
        self.label_logits: torch.Tensor | None = None
        self.iteration = 0
        self.last_class_loss: torch.Tensor | None = None
        self.init_fallbacks = {"images": 0, "labels": 0}

    # -- the final snapshots of the class experts -----------------------------------------------------
    def _final_logits(self, k: int, x: torch.Tensor) -> torch.Tensor:
        theta, _ = self.store.pair("class", k, self.store.epochs, self.store.epochs, self.device)
        params = self.store.unflatten(theta)
        with torch.no_grad():
            return torch.cat(
                [
                    functional_call(self.net, params, (x[i : i + PREDICT_CHUNK],))
                    for i in range(0, len(x), PREDICT_CHUNK)
                ]
            )

    def initial_images(
        self, images: torch.Tensor, pool: RealPool, syn_labels: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        """Real images the experts classify correctly (with ``select_correct``), and the labels' start."""
        self.net.eval()
        if self.select_correct:
            images = self._correctly_classified(images, pool, syn_labels, g)
        logits = torch.stack([self._final_logits(k, images) for k in range(self.store.num_experts)])  # (E, N, K)
        correct = logits.argmax(dim=2) == syn_labels.view(1, -1)  # (E, N)
        none = ~correct.any(dim=0)
        correct[:, none] = True  # no expert is right about these: the mean of all of them
        self.init_fallbacks["labels"] = int(none.sum())
        weights = correct.to(logits.dtype).unsqueeze(2)
        self.label_logits = ((logits * weights).sum(dim=0) / weights.sum(dim=0)).detach().requires_grad_(True)
        self.net.train()
        return images

    def _correctly_classified(
        self, images: torch.Tensor, pool: RealPool, syn_labels: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        out = images.clone()
        labels = pool.labels.cpu()
        for c in syn_labels.unique().tolist():
            slots = torch.nonzero(syn_labels.cpu() == c).flatten()
            candidates = torch.nonzero(labels == c).flatten()
            candidates = candidates[torch.randperm(len(candidates), generator=g)]
            real = pool.images[candidates.to(pool.labels.device)]
            chosen: list[int] = []
            for k in range(self.store.num_experts):
                right = (self._final_logits(k, real).argmax(dim=1) == c).cpu()
                taken = set(chosen)
                chosen += [i for i in torch.nonzero(right).flatten().tolist() if i not in taken]
                if len(chosen) >= len(slots):
                    break
            if len(chosen) < len(slots):  # too few correct ones: the first of the others, in the same order
                self.init_fallbacks["images"] += len(slots) - len(chosen)
                taken = set(chosen)
                chosen += [i for i in range(len(candidates)) if i not in taken]
            out[slots.to(out.device)] = real[torch.tensor(chosen[: len(slots)], device=real.device)]
        return out

    # -- the loop's hooks ------------------------------------------------------------------------------
    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        self.iteration = round_index
        self.last_class_loss = None

    def window(self, iteration: int) -> tuple[int, int]:
        """[low, high) of the start epochs drawn at ``iteration``."""
        high = self.max_start_epoch
        if self.current_max_start_epoch is not None:
            grown = (self.max_start_epoch - self.current_max_start_epoch) * iteration // self.expansion_end_epoch
            high = min(self.current_max_start_epoch + grown, self.max_start_epoch)
        return self.min_start_epoch, high

    def start_epoch(self, g: torch.Generator) -> int:
        low, high = self.window(self.iteration)
        return low + int(torch.randint(high - low, (1,), generator=g))

    def targets(self, batch: MatchBatch) -> torch.Tensor:
        probs = torch.softmax(self.label_logits, dim=1)
        per_image = len(batch.syn) // len(probs)  # D views of each image, in image order (or the images)
        return probs.repeat_interleave(per_image, dim=0)

    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        out = super().loss(role, batch, pool, g)
        if role == "class":
            self.last_class_loss = out.detach()
        return out

    def accept_update(self) -> bool:
        return self.last_class_loss is None or float(self.last_class_loss) <= self.threshold

    def extra_parameter_groups(self) -> list[dict]:
        return super().extra_parameter_groups() + [
            {"name": "soft_labels", "params": [self.label_logits], "lr": self.lr_y, "momentum": self.momentum_y}
        ]

    def set_tensors(self) -> dict[str, torch.Tensor]:
        return {"soft_labels": self.label_logits.detach()}

    def run_stats(self) -> dict:
        return super().run_stats() | {
            "init_fallbacks": dict(self.init_fallbacks),
            "final_window": list(self.window(self.iteration)),
        }


@dataclass
class DATMOptions:
    """DATM's own settings (MTT's apply too)."""

    min_start_epoch: int = option(0, "datm: start epochs are drawn from [min_start_epoch, upper)")
    current_max_start_epoch: int | None = option(
        None, "datm: upper at iteration 0, growing to max_start_epoch (sequential generation) [max_start_epoch]"
    )
    expansion_end_epoch: int = option(1000, "datm: the iteration at which upper reaches max_start_epoch")
    lr_y: float = option(2.0, "datm: learning rate of the soft labels (SGD)")
    momentum_y: float = option(0.9, "datm: momentum of the soft labels' SGD")
    threshold: float = option(1.0, "datm: skip an update whose matching loss exceeds this")


def _validate(cfg) -> None:
    validate_mtt(cfg)
    current = cfg.current_max_start_epoch
    require(
        0 <= cfg.min_start_epoch < cfg.max_start_epoch,
        f"--min-start-epoch {cfg.min_start_epoch} must lie in [0, --max-start-epoch {cfg.max_start_epoch})",
    )
    require(
        current is None or cfg.min_start_epoch < current <= cfg.max_start_epoch,
        f"--current-max-start-epoch {current} must lie in (--min-start-epoch {cfg.min_start_epoch}, "
        f"--max-start-epoch {cfg.max_start_epoch}]",
    )
    require(cfg.expansion_end_epoch >= 1, "--expansion-end-epoch must be at least 1")
    require(cfg.lr_y > 0 and 0 <= cfg.momentum_y < 1, "--lr-y must be positive and --momentum-y in [0, 1)")
    require(cfg.threshold > 0, f"--threshold must be positive, got {cfg.threshold}")


def _build(ctx: MethodContext) -> DATM:
    c = ctx.cfg
    return DATM(
        arguments(ctx),
        c.min_start_epoch,
        c.current_max_start_epoch,
        c.expansion_end_epoch,
        c.lr_y,
        c.momentum_y,
        c.threshold,
        c.init == "real",
    )


METHODS.register("datm")(
    MethodSpec(
        name="datm",
        summary="difficulty-aligned trajectory matching with learned soft labels (needs chddl pretrain-experts)",
        build=_build,
        defaults={"iterations": 5000, "lr_img": 100.0, "dsa": True, "lam": 0.01, "nan_retries": 3, "init": "real"},
        theta_prime=("own", "shared"),
        options_class=DATMOptions,
        shares_options=MTTOptions,
        validate=_validate,
        needs="experts",
        learned_eval_lr=True,
        compile_from=COMPILE_FROM,
        soft_label_temperature=1.0,  # DATM trains on softmax(labels) with plain cross-entropy
    )
)
