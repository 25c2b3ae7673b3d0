"""The architecture registry and its factory."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from stages.registry import Registry

ARCHITECTURES: Registry[Callable[..., nn.Module]] = Registry("architecture")


def create_model(
    name: str, num_classes: int, image_size: int, channels: int = 3, seed: int | None = None, **kwargs: Any
) -> nn.Module:
    """Build architecture ``name``; with ``seed`` the initialisation is
    reproducible and leaves the global RNG untouched."""
    args = {"num_classes": num_classes, "image_size": image_size, "channels": channels} | kwargs
    if seed is None:
        return ARCHITECTURES.create(name, **args)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return ARCHITECTURES.create(name, **args)


def embeds(name: str) -> bool:
    """Whether architecture ``name`` has ``embed(x)`` (penultimate features); built on the meta device, no memory."""
    with torch.device("meta"):
        net = create_model(name, num_classes=2, image_size=32)
    return callable(getattr(net, "embed", None))


def per_sample(model: nn.Module) -> bool:
    """Whether ``model``'s output for an image depends on that image alone (no batch norm): only then is a
    batch's mean gradient the weighted sum of its chunks'."""
    return not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def list_models() -> list[str]:
    """Names of all registered architectures."""
    return ARCHITECTURES.names()


def reinitialize(model: nn.Module, seed: int) -> nn.Module:
    """Draw fresh initial parameters in place (same distribution as building
    the model anew), reproducibly and without touching the global RNG."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model
