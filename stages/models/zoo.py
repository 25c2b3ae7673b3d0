"""Cross-architecture evaluation networks, adapted to 32/64 px inputs as the
reference code adapts them, built from torchvision's blocks where they fit
(those in ``stages.models.torchvision_nets``, imported when one is built:
importing torchvision's models costs a second or two at every start).

Every network has ``embed(x)``, its penultimate features (the input of the
last linear layer), so that DM and CHDDL's feature statistics can use it."""

from __future__ import annotations

import torch
from torch import nn

from stages.models.registry import ARCHITECTURES


def instance_norm(channels: int) -> nn.Module:
    """Instance norm as the reference defines it: GroupNorm, one group per channel."""
    return nn.GroupNorm(channels, channels, affine=True)


class AlexNet(nn.Module):
    """5 convs (128/192/256/192/192), stride 1, three 2x2 max-pools, one linear head, no dropout."""

    def __init__(self, num_classes: int, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(channels, 128, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(128, 192, 5, padding=2),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(192, 256, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(256, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(192, 192, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Linear(192 * (image_size // 8) ** 2, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


class VGG11(nn.Module):
    """VGG11 with instance norm, five 2x2 max-pools, one linear head."""

    LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")

    def __init__(self, num_classes: int, image_size: int = 32, channels: int = 3) -> None:
        super().__init__()
        layers, c = [], channels
        for v in self.LAYOUT:
            if v == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1), instance_norm(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(512 * (image_size // 32) ** 2, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(x))


@ARCHITECTURES.register("alexnet")
def alexnet(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """AlexNet for small images (reference adaptation)."""
    return AlexNet(num_classes, image_size, channels)


@ARCHITECTURES.register("vgg11")
def vgg11(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """VGG11 with instance norm for small images (reference adaptation)."""
    return VGG11(num_classes, image_size, channels)


@ARCHITECTURES.register("resnet18")
def resnet18(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """torchvision's ResNet18 with a 3x3 stride-1 stem, no max-pool and instance norm."""
    from stages.models.torchvision_nets import SmallResNet

    return SmallResNet(num_classes, channels, norm_layer=instance_norm)


@ARCHITECTURES.register("resnet18_bn")
def resnet18_bn(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """torchvision's ResNet18 with batch norm, a 3x3 stride-1 stem and no max-pool (SRe2L's small-image teacher)."""
    from stages.models.torchvision_nets import SmallResNet

    return SmallResNet(num_classes, channels)


def _vit(num_classes: int, image_size: int, dim: int, heads: int) -> nn.Module:
    from stages.models.torchvision_nets import SmallViT

    patch = 4 if image_size <= 32 else 8  # 64 tokens at 32 and at 64 px
    return SmallViT(
        image_size=image_size,
        patch_size=patch,
        num_layers=12,
        num_heads=heads,
        hidden_dim=dim,
        mlp_dim=4 * dim,
        num_classes=num_classes,
    )


@ARCHITECTURES.register("vit_tiny")
def vit_tiny(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """torchvision ViT, dim 192, depth 12, 3 heads, 4x4 patches at 32 px (8x8 at 64)."""
    return _vit(num_classes, image_size, 192, 3)


@ARCHITECTURES.register("vit_small")
def vit_small(num_classes: int, image_size: int, channels: int = 3) -> nn.Module:
    """torchvision ViT, dim 384, depth 12, 6 heads, 4x4 patches at 32 px (8x8 at 64)."""
    return _vit(num_classes, image_size, 384, 6)
