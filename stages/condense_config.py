"""The settings of ``condense``: the general ones, CHDDL's, and each registered
base method's own, composed into one ``CondenseConfig`` with its validation,
base-dependent defaults, cache-key fields and ``--help`` sections."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace

from stages.config import option, require, require_finite, to_dict
from stages.data.augment import DEFAULT_STRATEGY, DSA
from stages.domain.aware import DOMAIN_VIEWS, MASK_CHANNELS, MASK_INITS
from stages.methods import METHODS
from stages.models import ARCHITECTURES


def theta_prime_default(base: str) -> str | None:
    """The default Theta' of ``base``'s domain loss (docs/design.md 1.3); None for an unknown method."""
    return METHODS.get(base).theta_prime_default if base in METHODS else None


def _base_help() -> str:
    return "base method: " + "; ".join(f"{name}, {METHODS.get(name).summary}" for name in METHODS.names())


def _one_domain_bases() -> list[str]:
    """The base methods that take ``--domain-views one``."""
    return [name for name in METHODS.names() if METHODS.get(name).domain_terms is not None]


MASK_OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("summed", "sequential", "algorithm1")
#: default mask learning rate under adam: z moves ~0.01 per step, alpha = softmax(z / tau) with tau 0.1
ADAM_MASK_LR = 0.01
#: settings that change how fast the run goes, not what it computes
EXECUTION_ONLY = (
    "checkpoint_every",
    "first_checkpoint_minutes",
    "checkpoint_minutes",
    "log_every",
    "compile",
    "checkpoint_student",
)


@dataclass
class _Condense:
    """Condensation settings; ``None`` means "the base method's default"."""

    base: str = option("dm", _base_help())
    ipc: int = option(10, "synthetic images per class")
    domain_aware: bool | None = option(
        None, "add the CHDDL domain-aware module [on; off for the methods it does not apply to: rded]"
    )
    iterations: int | None = option(None, "outer iterations [dm 20000, dc 1000, mtt 5000, sre2l 1000]")
    lam: float | None = option(None, "weight lambda of the domain loss [dm, dc 0.1; mtt 0.01; sre2l 1]")
    tau: float = option(0.1, "softmax temperature of the domain masks")
    mask_init: float = option(0.01, "initial mask value (constant) or std (normal)")
    mask_init_mode: str = option("constant", "constant (uniform alpha, the paper) or normal (random alpha)")
    mask_lr: float | None = option(None, "learning rate of the masks [sgd: same as lr_img; adam: 0.01]")
    mask_optimizer: str | None = option(
        None,
        "optimiser of the masks: sgd (the images' optimiser and momentum) or adam "
        "(step size independent of the loss scale, which differs 10^4x between dm and mtt) "
        "[dm, dc, mtt sgd; sre2l adam, as its images: with sgd its masks stay uniform]",
    )
    theta_prime: str | None = option(
        None,
        "parameters Theta' of the domain loss: own (dc: a second network; mtt: the "
        "pseudo-domain experts) or shared (the class loss's network or experts) [dm shared, "
        "dc and mtt own: docs/design.md]",
    )
    schedule: str = option(
        "summed",
        "summed: one step on L_cls + lambda L_dom; sequential: a step on L_cls, then one "
        "on lambda L_dom; algorithm1: the paper's pseudocode, one step per class on its loss, then "
        "one step per pseudo-domain on its loss (images and masks)",
    )
    domain_lambda: bool = option(
        True,
        "sequential, algorithm1: the domain steps minimise lambda L_dom (off: L_dom "
        "unweighted, as Algorithm 1 writes it; lambda then has no effect)",
    )
    mask_resolution: int | None = option(
        None,
        "masks held at K x K per domain and up-sampled bilinearly to the image "
        "(structured masks; default: full resolution, the paper)",
    )
    mask_channels: str = option(
        "per-channel", "per-channel: one mask per colour channel (the paper); shared: one mask for all three"
    )
    domain_views: str = option(
        "all",
        "views the domain loss sees per step: all (every image's D views, the paper) or one (one pseudo-domain "
        "drawn per step, its term scaled to estimate the whole loss: about 1/D of CHDDL's added cost; "
        f"{', '.join(_one_domain_bases())})",
    )
    share_real: bool = option(
        True,
        "dm, summed schedule: one real forward pass serves both losses "
        "(class-stratified draw re-weighted per domain; augmentation siamese per class)",
    )
    init: str | None = option(
        None,
        "synthetic image init: noise (Gaussian, the paper) or real (random real images; datm: ones its experts "
        "classify correctly) [noise; real for datm]",
    )
    arch: str = option("convnet", "network architecture used for matching: " + ", ".join(ARCHITECTURES.names()))
    lr_img: float | None = option(
        None, "learning rate of the synthetic images [dm 1.0, dc 0.1, mtt 1000, sre2l 0.25 (Adam, cosine)]"
    )
    momentum_img: float = option(0.5, "SGD momentum of images and masks")
    batch_real: int = option(256, "real images per group (class or pseudo-domain) per step")
    dsa: bool | None = option(None, "differentiable siamese augmentation while matching [dm on, dc off]")
    dsa_strategy: str = option(DEFAULT_STRATEGY, "DSA families, joined by _")
    clip_grad: float | None = option(None, "clip the images' gradient norm to this value (none by default)")
    nan_retries: int | None = option(
        None,
        "on NaN/Inf: roll back to the last good state with halved learning rates, "
        "this many times before failing [mtt 3, dm/dc 0]",
    )
    domains: tuple = option((), "protocols: condense only real images of these true domains (empty: all)")
    exclude_domain: str | None = option(None, "protocols: leave this true domain out of condensation")
    compile: str = option(
        "auto",
        "torch.compile the hot path (DM: every forward pass and the synthetic images' and CHDDL views' input "
        "gradient; DC: the real images' gradient; MTT, DATM: the student's step): auto (long runs), on, off",
    )
    seed: int = option(0, "seed of init, networks, batches and augmentation")
    checkpoint_every: int = option(100, "iterations between checkpoints (resume point)")
    first_checkpoint_minutes: float = option(
        1.0,
        "the first checkpoint comes after this many minutes of work (so a killed run loses at most about this much)",
    )
    checkpoint_minutes: float = option(5.0, "then checkpoint whenever this many minutes passed since the last one")
    log_every: int = option(
        10,
        "iterations between progress updates and NaN checks; a state of 64 MiB or more is checkpointed at every "
        "check (what a NaN rolls back to) while writing it costs at most 2% of the time, instead of copied in memory",
    )

    def __post_init__(self) -> None:
        # Settings whose default depends on the base method (CHDDL is on unless it does not apply); an
        # explicit value always wins. Filled at construction, so every reader sees the value the key holds.
        for name, fallback in (("domain_aware", True), ("init", "noise")):
            if getattr(self, name) is None and self.base in METHODS:
                setattr(self, name, METHODS.get(self.base).defaults.get(name, fallback))

    def validate(self) -> None:
        require(self.base in METHODS, f"unknown base method '{self.base}'; valid: {', '.join(METHODS.names())}")
        spec = METHODS.get(self.base)
        require(self.ipc >= 1, f"--ipc must be at least 1, got {self.ipc}")
        require(
            self.arch in ARCHITECTURES, f"unknown architecture '{self.arch}'; valid: {', '.join(ARCHITECTURES.names())}"
        )
        for name in (
            "lam",
            "tau",
            "mask_init",
            "mask_lr",
            "lr_img",
            "momentum_img",
            "clip_grad",
        ):
            value = getattr(self, name)
            if value is not None:
                require_finite(f"--{name.replace('_', '-')}", value)
        require(self.tau > 0, f"--tau must be positive, got {self.tau}")
        require(self.lam is None or self.lam >= 0, f"--lam must be >= 0, got {self.lam}")
        require(self.mask_init_mode in MASK_INITS, f"--mask-init-mode must be one of {', '.join(MASK_INITS)}")
        require(self.schedule in SCHEDULES, f"--schedule must be one of {', '.join(SCHEDULES)}, got {self.schedule}")
        require(
            self.mask_resolution is None or self.mask_resolution >= 1,
            f"--mask-resolution must be at least 1, got {self.mask_resolution}",
        )
        require(
            self.mask_channels in MASK_CHANNELS,
            f"--mask-channels must be one of {', '.join(MASK_CHANNELS)}, got {self.mask_channels}",
        )
        require(
            self.domain_views in DOMAIN_VIEWS,
            f"--domain-views must be one of {', '.join(DOMAIN_VIEWS)}, got {self.domain_views}",
        )
        require(
            self.domain_views == "all" or not self.domain_aware or spec.domain_terms is not None,
            f"--domain-views one is not available for {self.base} (only {', '.join(_one_domain_bases())}); "
            "leave it out",
        )
        require(
            self.mask_optimizer is None or self.mask_optimizer in MASK_OPTIMIZERS,
            f"--mask-optimizer must be one of {', '.join(MASK_OPTIMIZERS)}, got {self.mask_optimizer}",
        )
        require(self.mask_lr is None or self.mask_lr > 0, f"--mask-lr must be positive, got {self.mask_lr}")
        require(
            self.theta_prime in (None, "own", "shared"), f"--theta-prime must be own or shared, got {self.theta_prime}"
        )
        require(
            self.theta_prime is None or self.theta_prime in spec.theta_prime,
            f"--theta-prime {self.theta_prime} is not available for {self.base}: {spec.theta_prime_why}; use "
            f"{' or '.join(spec.theta_prime)} or leave it out",
        )
        require(self.init in ("noise", "real"), f"--init must be noise or real, got {self.init}")
        require(self.iterations is None or self.iterations >= 1, "--iterations must be at least 1")
        require(self.lr_img is None or self.lr_img > 0, "--lr-img must be positive")
        require(
            0.0 <= self.momentum_img < 1.0, f"--momentum-img must lie in [0, 1) (SGD momentum), got {self.momentum_img}"
        )
        require(self.batch_real >= 1, "batch sizes must be at least 1")
        require(self.compile in ("auto", "on", "off"), "--compile must be auto, on or off")
        require(self.checkpoint_every >= 1 and self.log_every >= 1, "checkpoint_every and log_every must be >= 1")
        for name in ("first_checkpoint_minutes", "checkpoint_minutes"):
            minutes = getattr(self, name)
            require(minutes == minutes and minutes > 0, f"{name} must be a positive number of minutes, got {minutes}")
        require(self.nan_retries is None or self.nan_retries >= 0, "--nan-retries must be >= 0")
        require(self.clip_grad is None or self.clip_grad > 0, "--clip-grad must be positive")
        if spec.validate is not None:
            spec.validate(self)
        DSA(self.dsa_strategy)

    def resolved(self):
        """A copy with every base-dependent default filled in."""
        spec = METHODS.get(self.base)
        d = spec.defaults
        lr_img = self.lr_img if self.lr_img is not None else d["lr_img"]
        lam = self.lam if self.lam is not None else d["lam"]
        mask_optimizer = self.mask_optimizer or d.get("mask_optimizer", "sgd")
        out = replace(
            self,
            iterations=self.iterations or d["iterations"],
            lr_img=lr_img,
            theta_prime=self.theta_prime or spec.theta_prime_default,
            mask_lr=self.mask_lr if self.mask_lr is not None else (lr_img if mask_optimizer == "sgd" else ADAM_MASK_LR),
            mask_optimizer=mask_optimizer,
            lam=lam,
            dsa=d["dsa"] if self.dsa is None else self.dsa,
            nan_retries=self.nan_retries if self.nan_retries is not None else d.get("nan_retries", 0),
        )
        return replace(out, **spec.resolve(out)) if spec.resolve is not None else out

    def key_fields(self) -> dict:
        out = {k: v for k, v in to_dict(self).items() if k not in EXECUTION_ONLY}
        if not self.domains:
            out.pop("domains")
        if self.exclude_domain is None:
            out.pop("exclude_domain")
        # Defaults leave the keys of sets made before these options existed.
        if self.mask_optimizer == "sgd":
            out.pop("mask_optimizer")
        if self.theta_prime in (None, theta_prime_default(self.base)):
            out.pop("theta_prime")
        for k, default in (
            ("domain_lambda", True),
            ("mask_resolution", None),
            ("mask_channels", "per-channel"),
            ("domain_views", "all"),
        ):
            if out.get(k) == default:
                out.pop(k)
        if not self.domain_aware:
            for k in DOMAIN_AWARE_FIELDS:
                out.pop(k, None)
        # each method's own options leave the other methods' keys; the general ones it ignores leave its own
        spec = METHODS.get(self.base)
        others = {k for name in METHODS.names() if name != self.base for k in METHODS.get(name).options}
        for k in (others - set(spec.options)) | set(spec.ignores):
            out.pop(k, None)
        if "domain_syn_steps" in out and out["domain_syn_steps"] is None and self.theta_prime != "shared":
            # the default changed from syn_steps to ceil(syn_steps / D): sets made before keep keys of their own
            out["domain_syn_steps"] = "ceil(syn_steps/D)"
        return out


#: settings of the CHDDL module, without effect (and out of the cache key) under --no-domain-aware
DOMAIN_AWARE_FIELDS = (
    "lam",
    "tau",
    "mask_init",
    "mask_init_mode",
    "mask_lr",
    "mask_optimizer",
    "theta_prime",
    "schedule",
    "share_real",
    "domain_syn_steps",
    "domain_lambda",
    "mask_resolution",
    "mask_channels",
    "domain_views",
)


def help_section(field: str) -> str | None:
    """The section of ``condense --help`` that lists setting ``field`` (None: the general one)."""
    for name in METHODS.names():
        if field in METHODS.get(name).own_options:
            return f"{METHODS.get(name).title or name.upper()} options (--base {name})"
    if field in DOMAIN_AWARE_FIELDS:
        return "CHDDL options (--domain-aware)"
    if field in ("domains", "exclude_domain"):
        return "Protocol options"
    if field in EXECUTION_ONLY or field == "seed":
        return "Run options"
    return None


def _compose() -> type:
    """``CondenseConfig``: the general settings above plus every registered method's own (its
    ``options_class``), in registry order, so a method declares its settings in its module alone."""
    extra, seen = [], {f.name for f in dataclasses.fields(_Condense)}
    for name in METHODS.names():
        options = METHODS.get(name).options_class
        for f in dataclasses.fields(options) if options is not None else ():
            if f.name in seen:
                raise TypeError(f"method {name}'s option {f.name} is already a condense setting")
            seen.add(f.name)
            extra.append((f.name, f.type, dataclasses.field(default=f.default, metadata=f.metadata)))
    cls = dataclasses.make_dataclass("CondenseConfig", extra, bases=(_Condense,))
    cls.__module__, cls.__doc__ = __name__, _Condense.__doc__
    return cls


CondenseConfig = _compose()
