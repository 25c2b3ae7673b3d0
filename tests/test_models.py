"""Every registered architecture: forward, backward, output shape, no NaN."""

from __future__ import annotations

import pytest
import torch

from stages.errors import ChddlError
from stages.models import create_model, list_models


def test_the_paper_architectures_are_registered() -> None:
    assert {"convnet", "alexnet", "vgg11", "resnet18", "vit_tiny", "vit_small"} <= set(list_models())


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("name", list_models())
def test_architecture_trains_a_step(name: str, size: int) -> None:
    net = create_model(name, num_classes=7, image_size=size, seed=0)
    x = torch.randn(2, 3, size, size)
    out = net(x)
    assert out.shape == (2, 7)
    torch.nn.functional.cross_entropy(out, torch.tensor([0, 6])).backward()
    grads = [p.grad for p in net.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert torch.isfinite(out).all()


def test_convnet_matches_the_reference_parameter_count() -> None:
    net = create_model("convnet", num_classes=10, image_size=32)
    assert sum(p.numel() for p in net.parameters()) == 320_010


def test_convnet_depth_follows_the_image_size() -> None:
    assert len(create_model("convnet", 10, 32).blocks) == 3
    assert len(create_model("convnet", 10, 64).blocks) == 4


def test_seeded_models_are_identical() -> None:
    a, b = create_model("resnet18", 3, 32, seed=5), create_model("resnet18", 3, 32, seed=5)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_unknown_architecture_lists_valid_ones() -> None:
    with pytest.raises(ChddlError, match="valid: alexnet, convnet"):
        create_model("lenet9", 10, 32)


@pytest.mark.parametrize("name", list_models())
def test_an_option_an_architecture_does_not_take_is_refused_not_swallowed(name: str) -> None:
    with pytest.raises(ChddlError, match=f"architecture '{name}' cannot be built.*'colour_depth'"):
        create_model(name, 10, 32, colour_depth=8)


def test_convnet_options_reach_the_network() -> None:
    net = create_model("convnet", 10, 32, width=16, depth=2)
    assert len(net.blocks) == 2
    assert net.blocks[0][0].out_channels == 16


@pytest.mark.parametrize("name", list_models())
def test_every_architecture_embeds_into_the_input_of_its_last_linear_layer(name: str) -> None:
    net = create_model(name, num_classes=7, image_size=32, seed=0).eval()
    head = [m for m in net.modules() if isinstance(m, torch.nn.Linear)][-1]
    x = torch.randn(3, 3, 32, 32)
    features = net.embed(x)
    assert features.shape == (3, head.in_features)
    torch.testing.assert_close(head(features), net(x))


def test_the_small_resnet_keeps_torchvisions_parameter_names_and_initialisation() -> None:
    from torchvision.models.resnet import BasicBlock, ResNet

    torch.manual_seed(3)
    plain = ResNet(BasicBlock, [2, 2, 2, 2], num_classes=5)
    plain.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    ours = create_model("resnet18_bn", num_classes=5, image_size=32, seed=3)
    assert list(ours.state_dict()) == list(plain.state_dict())
    assert all(torch.equal(p, q) for p, q in zip(ours.parameters(), plain.parameters()))
