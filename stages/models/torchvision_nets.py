"""The networks built on torchvision's ResNet and ViT, each with ``embed(x)`` (its penultimate features).

Kept apart from ``stages.models.zoo`` so that torchvision's model package, whose import pulls in
``torch._dynamo``, is imported only when one of these is built."""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, ResNet
from torchvision.models.vision_transformer import VisionTransformer


class SmallResNet(ResNet):
    """torchvision's ResNet with a 3x3 stride-1 stem and no max-pool (small images), plus ``embed``."""

    def __init__(self, num_classes: int, channels: int, norm_layer: type[nn.Module] | None = None) -> None:
        super().__init__(BasicBlock, [2, 2, 2, 2], num_classes=num_classes, norm_layer=norm_layer)
        self.conv1 = nn.Conv2d(channels, 64, 3, stride=1, padding=1, bias=False)
        self.maxpool = nn.Identity()

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.embed(x))


class SmallViT(VisionTransformer):
    """torchvision's ViT plus ``embed``: the class token after the encoder."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        x = self._process_input(x)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1)
        return self.encoder(x)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.heads(self.embed(x))
