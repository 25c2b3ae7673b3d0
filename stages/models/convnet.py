"""The ConvNet family of the condensation literature.

Blocks of conv 3x3 (padding 1) -> norm -> activation -> 2x2 pooling, then
one linear head on the flattened map. "Instance norm" is GroupNorm with one
group per channel (affine), as in the reference code.
"""

from __future__ import annotations

import torch
from torch import nn

from stages.errors import ChddlError
from stages.models.registry import ARCHITECTURES

NORMS = ("instancenorm", "batchnorm", "layernorm", "none")
ACTIVATIONS = ("relu", "leakyrelu", "sigmoid")
POOLS = ("avgpool", "maxpool", "none")


def default_depth(image_size: int) -> int:
    """3 blocks at 32 px and below, 4 above (64 px), as in the paper."""
    return 3 if image_size <= 32 else 4


def _norm(kind: str, width: int, size: int) -> nn.Module:
    if kind == "instancenorm":
        return nn.GroupNorm(width, width, affine=True)
    if kind == "batchnorm":
        return nn.BatchNorm2d(width)
    if kind == "layernorm":
        return nn.GroupNorm(1, width, affine=True)
    if kind == "none":
        return nn.Identity()
    raise ChddlError(f"unknown norm '{kind}'; valid: {', '.join(NORMS)}")


def _act(kind: str) -> nn.Module:
    # In-place activations: the norm before them does not need its output for backward.
    table = {
        "relu": lambda: nn.ReLU(inplace=True),
        "leakyrelu": lambda: nn.LeakyReLU(0.01, inplace=True),
        "sigmoid": nn.Sigmoid,
    }
    if kind not in table:
        raise ChddlError(f"unknown activation '{kind}'; valid: {', '.join(ACTIVATIONS)}")
    return table[kind]()


def _pool(kind: str) -> nn.Module:
    if kind == "avgpool":
        return nn.AvgPool2d(2, 2)
    if kind == "maxpool":
        return nn.MaxPool2d(2, 2)
    if kind == "none":
        return nn.Identity()
    raise ChddlError(f"unknown pooling '{kind}'; valid: {', '.join(POOLS)}")


class ConvNet(nn.Module):
    """ConvNet-``depth`` with ``width`` channels; ``embed`` gives the penultimate features."""

    def __init__(
        self,
        num_classes: int,
        image_size: int = 32,
        channels: int = 3,
        width: int = 128,
        depth: int | None = None,
        norm: str = "instancenorm",
        act: str = "relu",
        pool: str = "avgpool",
    ) -> None:
        super().__init__()
        depth = depth or default_depth(image_size)
        size, blocks = image_size, []
        for i in range(depth):
            blocks.append(
                nn.Sequential(
                    nn.Conv2d(channels if i == 0 else width, width, 3, padding=1),
                    _norm(norm, width, size),
                    _act(act),
                    _pool(pool),
                )
            )
            size = size // 2 if pool != "none" else size
        if size < 1:
            raise ChddlError(f"ConvNet depth {depth} is too deep for {image_size} px images")
        self.blocks = nn.Sequential(*blocks)
        self.classifier = nn.Linear(width * size * size, num_classes)
        self.embed_dim = width * size * size

    def block_outputs(self, x: torch.Tensor, count: int) -> list[torch.Tensor]:
        """Outputs of the first ``count`` blocks (early features)."""
        outs = []
        for block in list(self.blocks)[:count]:
            x = block(x)
            outs.append(x)
        return outs

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@ARCHITECTURES.register("convnet")
def convnet(
    num_classes: int, image_size: int, channels: int = 3, *, width: int = 128, depth: int | None = None
) -> ConvNet:
    """ConvNet, width 128, instance norm, ReLU, average pooling; depth by image size."""
    return ConvNet(num_classes, image_size, channels, width=width, depth=depth)


@ARCHITECTURES.register("convnet_bn")
def convnet_bn(
    num_classes: int, image_size: int, channels: int = 3, *, width: int = 128, depth: int | None = None
) -> ConvNet:
    """ConvNet with batch norm (a teacher for SRe2L at CPU scale); depth by image size."""
    return ConvNet(num_classes, image_size, channels, width=width, depth=depth, norm="batchnorm")
