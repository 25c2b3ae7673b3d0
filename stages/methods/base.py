"""The interface every base condensation method implements.

A method matches a synthetic batch against real images *grouped* by some
label: by class for the class loss, by pseudo-domain for CHDDL's domain
loss. It keeps one parameter set per role (``"class"`` = Theta,
``"domain"`` = Theta'); the domain-aware wrapper in ``stages.domain`` asks
for the second role, the methods never import it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, Callable, Mapping

import torch

from stages.registry import Registry

NetFactory = Callable[[], torch.nn.Module]

ROLES = ("class", "domain")


class RealPool:
    """Normalised real training images on the device, drawn per group by indexing."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels  # class labels, on the images' device

    def draw(
        self, groups: torch.Tensor, num_groups: int, per_group: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``per_group`` random images of each group, without replacement.

        ``groups`` (CPU) gives each pool image's group. Returns (indices,
        group ids), both CPU, sorted by group; one vectorised shuffle.
        """
        key = groups.to(torch.float64) + torch.rand(len(groups), generator=g, dtype=torch.float64)
        order = torch.argsort(key)
        sorted_groups = groups[order]
        starts = torch.searchsorted(sorted_groups, torch.arange(num_groups))
        rank = torch.arange(len(order)) - starts[sorted_groups]
        keep = rank < per_group
        return order[keep], sorted_groups[keep]


@dataclass
class Synthesized:
    """A training-free method's set: the images (N, C, H, W; zeros in the rows of classes it did not make),
    any tensors to store with them (zeros likewise), and the sum over its images of a per-image loss that
    says how well they fit their class (reported as the set's final class loss)."""

    images: torch.Tensor
    loss_sum: torch.Tensor
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class MatchBatch:
    """One matching problem: real images vs synthetic images, both grouped.

    ``real_*`` index into the pool; synthetic tensors carry their class
    labels (needed by gradient/trajectory matching) and group ids.
    """

    real_index: torch.Tensor
    real_groups: torch.Tensor
    syn: torch.Tensor
    syn_labels: torch.Tensor
    syn_groups: torch.Tensor
    num_groups: int
    focus: int | None = None  # the one group this batch is about (Algorithm 1's per-domain steps), else None
    #: torchrun: the batch is this rank's part of one spread over the ranks (its classes' synthetic images and
    #: real images); a method that accepts it (``sums_statistics``) sums its group statistics over the ranks and
    #: returns this rank's share of the loss (stages.sharding)
    spread: bool = False
    #: when set (a ``DomainMasks``, only for a method with ``lazy_views``), the synthetic rows are the D domain
    #: views of the images ``syn`` under these masks, image-major (M x D rows): the method makes them itself,
    #: chunk by chunk, instead of receiving them all at once
    masks: Any = None
    #: with ``masks``: the rows are the views of this pseudo-domain alone, one per image (``--domain-views one``)
    view_domain: int | None = None


class BaseMethod(ABC):
    """A base condensation method: per round, fresh parameters; per step, a loss."""

    #: the paper's lambda for this base method (L = L_cls + lambda * L_dom)
    default_lambda: float = 0.1
    #: whether the class loss is a sum of per-class terms, each depending only on
    #: that class's images (DM, DC), so Algorithm 1 can take one step per class
    splits_by_class: bool = True
    #: whether its losses accept a spread batch (``MatchBatch.spread``): statistics over groups that span
    #: classes summed over the torchrun ranks (DM's group means, SRe2L's batch-norm statistics), so CHDDL's
    #: domain loss, and a class loss that does not split by class, can be split across processes
    sums_statistics: bool = False
    #: whether ``joint_loss`` accepts a domain batch whose views it makes itself (``MatchBatch.masks``)
    lazy_views: bool = False

    @abstractmethod
    def new_round(self, round_index: int, roles: tuple[str, ...], g: torch.Generator) -> None:
        """Start an outer iteration: (re)initialise the parameters of each role."""

    def steps_per_round(self) -> int:
        """Image updates per round (DC's outer loop; 1 for DM)."""
        return 1

    @abstractmethod
    def loss(self, role: str, batch: MatchBatch, pool: RealPool, g: torch.Generator) -> torch.Tensor:
        """Matching loss of ``batch`` under the parameters of ``role``."""

    def after_update(self) -> None:
        """Hook after every optimiser step (MTT keeps its learned lr positive here)."""

    def extra_parameter_groups(self) -> list[dict]:
        """Learnable tensors the method owns besides the images (MTT's synthetic
        lr): ``{"name", "params", "lr"}`` each, optimised with SGD at the images'
        momentum, or at the group's own ``"momentum"`` when it has one."""
        return []

    def initial_images(
        self, images: torch.Tensor, pool: RealPool, syn_labels: torch.Tensor, g: torch.Generator
    ) -> torch.Tensor:
        """The synthetic images to start from, given those ``--init`` made (DATM keeps real images its
        experts classify correctly); called once, before the loop (a resumed run then restores its state)."""
        return images

    def accept_update(self) -> bool:
        """Whether to apply the update whose gradients were just computed (DATM skips the iterations whose
        matching loss is above its threshold); every parameter group is left as it was when not."""
        return True

    def set_tensors(self) -> dict[str, torch.Tensor]:
        """Tensors to store with the finished set besides its images (DATM's learned soft labels)."""
        return {}

    def joint_loss(
        self,
        class_batch: MatchBatch,
        domain_batch: MatchBatch,
        pool: RealPool,
        real_weights: torch.Tensor,
        g: torch.Generator,
    ) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Class and domain losses from ONE forward pass of the real images,
        for methods whose Theta' is Theta (DM). Both batches hold the same
        real images (drawn by class); ``real_weights`` re-weights them within
        each domain so the domain means estimate uniform per-domain draws.
        Returns None when the method cannot share (the caller then computes
        the two losses separately)."""
        return None

    def after_step(
        self, step: int, role_data: dict[str, tuple[torch.Tensor, torch.Tensor]], g: torch.Generator
    ) -> None:
        """Hook after each image update (DC trains its networks here).

        ``role_data[role]`` is the (detached) synthetic training set of that
        role: the images for ``class``, the domain views for ``domain``.
        """

    def evaluation_lr(self) -> float | None:
        """The learning rate a network trained on the condensed set should use, when the method learns one
        (MTT's synthetic lr); None: the evaluation protocol's own."""
        return None

    def run_stats(self) -> dict:
        """Method-specific figures of a finished run, recorded in the set's metrics."""
        return {}


@dataclass
class MethodContext:
    """What ``condense`` hands a method's builder: the resolved configuration (a ``CondenseConfig``; each
    method reads its own fields) and the objects the stage prepared."""

    cfg: Any
    net_factory: NetFactory
    device: torch.device
    dsa: Any  # a stages.data.augment.DSA, or None
    compile_hot_path: bool = False  # --compile resolved: each method compiles its own hot path
    store: Any = None  # MTT's ExpertStore
    teacher: torch.nn.Module | None = None
    domain_stats: list | None = None  # SRe2L + CHDDL's per-domain batch-norm targets


@dataclass(frozen=True)
class MethodSpec:
    """A base method as the rest of chddl sees it, declared once beside its code and registered in
    :data:`METHODS`: no stage, command, export or report branches on a method's name.

    ``options`` are the ``CondenseConfig`` fields this method reads beyond the general ones (they leave the
    cache keys of the methods that do not read them); ``ignores`` the general fields it does not read (they
    leave its own). ``theta_prime`` lists the Theta' choices CHDDL may use with it, the default first;
    ``theta_prime_why`` says why the others are refused. ``defaults`` fills the settings left unset:
    ``iterations``, ``lr_img``, ``dsa``, ``lam``, and optionally ``nan_retries`` (0), ``mask_optimizer``
    (sgd), ``domain_aware`` (True) and ``init`` (noise)."""

    name: str
    summary: str
    build: Callable[[MethodContext], BaseMethod]
    defaults: Mapping[str, Any]
    theta_prime: tuple[str, ...] = ("shared",)
    theta_prime_why: str = ""
    title: str = ""  # as the method is written in prose (default: the name in capitals)
    #: a dataclass of the method's own settings (``stages.config.option`` fields, help prefixed with the
    #: method's name): they become ``CondenseConfig`` fields, YAML keys and ``condense`` options
    options_class: type | None = None
    #: another method's options dataclass whose settings this method reads too (DATM: MTT's); they stay in
    #: this method's cache key and are listed under that method's section of ``--help``
    shares_options: type | None = None
    ignores: tuple[str, ...] = ()
    #: an upstream artifact the method reads: "experts" (chddl pretrain-experts) or "teacher" (train-teacher)
    needs: str | None = None
    #: it matches penultimate features, so its architecture must provide ``embed``
    needs_embedding: bool = False
    #: the set carries the learning rate it is evaluated with (exported as DD-Ranking's lr.pt)
    learned_eval_lr: bool = False
    #: the softmax temperature the method's own evaluation trains on the soft labels its sets carry with
    #: (``evaluate``'s default for them; None: evaluate's own default)
    soft_label_temperature: float | None = None
    #: under the summed schedule the domain loss reuses the class loss's real forward pass (``share_real``)
    shares_real_pass: bool = False
    #: a longer run may continue from a finished shorter one of the same settings
    continues: bool = True
    #: training-free: the method's ``synthesize(pool, classes, ipc, generator_of, progress_step)`` makes the set
    #: (no optimisation loop; the loop's settings, placeholders, go in ``ignores``)
    synthesizes: bool = False
    #: how its domain loss combines the per-pseudo-domain terms: "sum" (DM) or "mean" (SRe2L), so that with
    #: ``--domain-views one`` one drawn domain's term (x D for a sum) estimates it; None: it cannot
    domain_terms: str | None = None
    #: ``--compile auto`` compiles the method's hot path from this many iterations on (None: never)
    compile_from: int | None = None
    #: the images' optimiser: SGD with momentum (False) or Adam with these betas and a cosine decay (True)
    adam_images: bool = False
    image_betas: tuple[float, float] = (0.9, 0.999)
    #: keep the images inside the valid pixel range after every step
    clamp_images: bool = False
    #: checks of the settings as this method reads them (``stages.config.require``), given the configuration
    validate: Callable[[Any], None] | None = None
    #: defaults of its own options that depend on other settings: ``cfg -> {field: value}`` for unset fields
    resolve: Callable[[Any], dict] | None = None

    def __call__(self, ctx: MethodContext) -> BaseMethod:
        return self.build(ctx)

    @property
    def own_options(self) -> tuple[str, ...]:
        """The names of the settings the method declares itself."""
        return tuple(f.name for f in fields(self.options_class)) if self.options_class is not None else ()

    @property
    def options(self) -> tuple[str, ...]:
        """The names of the settings the method reads beyond the general ones (its own, and those it shares)."""
        classes = [c for c in (self.options_class, self.shares_options) if c is not None]
        return tuple(f.name for c in classes for f in fields(c))

    @property
    def theta_prime_default(self) -> str:
        return self.theta_prime[0]


METHODS: Registry[MethodSpec] = Registry("base method")
