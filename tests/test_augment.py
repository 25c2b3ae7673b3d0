"""Differentiable siamese augmentation."""

from __future__ import annotations

import pytest
import torch

from stages.data.augment import DSA, FAMILIES
from stages.errors import ChddlError


def _x(n: int = 6, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def test_same_parameters_give_identical_transforms_to_real_and_synthetic() -> None:
    dsa = DSA()
    for seed in range(20):
        params = dsa.sample(1, (16, 16), torch.Generator().manual_seed(seed))
        image = _x(1, seed)
        real_batch, syn_batch = torch.cat([image, _x(3, 99)]), torch.cat([_x(2, 98), image])
        real = dsa.apply(real_batch, params.index(torch.zeros(4, dtype=torch.long)))
        syn = dsa.apply(syn_batch, params.index(torch.zeros(3, dtype=torch.long)))
        assert torch.allclose(real[0], syn[2], atol=1e-6), FAMILIES[int(params.family[0])]


def test_group_parameters_are_shared_within_a_group_and_differ_between_groups() -> None:
    dsa = DSA("flip_crop")
    x = _x(1).expand(8, -1, -1, -1).clone()
    groups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    outs = [dsa.apply(x, dsa.sample_groups(groups, 2, (16, 16), torch.Generator().manual_seed(s))) for s in range(10)]
    for out in outs:
        assert torch.allclose(out[0], out[3]) and torch.allclose(out[4], out[7])
    assert any(not torch.allclose(out[0], out[4]) for out in outs)


def test_augmentation_is_differentiable_for_every_family() -> None:
    for family in FAMILIES:
        dsa = DSA(family)
        x = _x().requires_grad_(True)
        dsa.apply(x, dsa.sample(6, (16, 16), torch.Generator().manual_seed(1))).square().sum().backward()
        assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0, family


def test_crop_translates_with_zero_fill() -> None:
    dsa = DSA("crop")
    p = dsa.sample(1, (16, 16), torch.Generator().manual_seed(0))
    p.shift_x[:], p.shift_y[:] = 2, -1
    x = torch.arange(16 * 16, dtype=torch.float32).view(1, 1, 16, 16).expand(1, 3, 16, 16)
    out = dsa.apply(x, p)
    assert torch.equal(out[0, 0, :14, 1:], x[0, 0, 2:, :15])
    assert out[0, 0, 14:].abs().sum() == 0 and out[0, 0, :, 0].abs().sum() == 0


def test_cutout_zeroes_one_half_size_square() -> None:
    dsa = DSA("cutout")
    p = dsa.sample(1, (16, 16), torch.Generator().manual_seed(0))
    p.cut_x[:], p.cut_y[:] = 8, 8
    out = dsa.apply(torch.ones(1, 3, 16, 16), p)
    assert int((out[0, 0] == 0).sum()) == 64
    assert (
        torch.all(out[0, :, 0:4] == 1) and torch.all(out[0, :, :, 12:] == 1) and torch.all(out[0, :, 4:12, 4:12] == 0)
    )


def test_one_family_per_call_in_evaluation_mode() -> None:
    p = DSA().sample(50, (16, 16), torch.Generator().manual_seed(3), one_family=True)
    assert len(torch.unique(p.family)) == 1


def test_unknown_strategy_is_refused() -> None:
    with pytest.raises(ChddlError, match="valid parts"):
        DSA("color_blur")
