"""ZCA whitening: the transform, its inverse, and the whitened dataset downstream."""

from __future__ import annotations

import pytest
import torch

from stages.condense import CondenseConfig
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.data.zca import fit_zca
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.pretrain_experts import ExpertsConfig
from stages.pretrain_experts import run as experts_run
from tests.conftest import make_npz


def correlated_images(n: int = 4000) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    mixing = torch.randn(12, 12, generator=g)
    return (torch.randn(n, 12, generator=g) @ mixing + 3.0).reshape(n, 3, 2, 2)


def test_whitened_images_have_identity_covariance() -> None:
    x = correlated_images()
    w = fit_zca(x, eps=1e-6).apply(x).reshape(len(x), -1).double()
    assert torch.allclose(w.mean(0), torch.zeros(12, dtype=torch.float64), atol=1e-4)
    assert torch.allclose(torch.cov(w.T), torch.eye(12, dtype=torch.float64), atol=1e-3)


def test_eps_shrinks_low_variance_directions() -> None:
    x = correlated_images()
    w = fit_zca(x, eps=0.1).apply(x).reshape(len(x), -1).double()
    variances = torch.linalg.eigvalsh(torch.cov(w.T))
    assert float(variances.max()) < 1.0 and float(variances.min()) < float(variances.max())


def test_transform_is_symmetric_and_invertible() -> None:
    x = correlated_images(500)
    zca = fit_zca(x, eps=0.1)
    assert torch.allclose(zca.matrix, zca.matrix.T, atol=1e-5)
    assert torch.allclose(zca.invert(zca.apply(x)), x, atol=1e-3)


def test_zca_dataset_is_whitened_and_has_its_own_identity(tmp_path, workspace) -> None:
    source = str(make_npz(tmp_path / "d.npz", n=200, size=4))
    plain = load_dataset(ingest(source, build(DatasetConfig, {"size": 4}), workspace)[0])
    white = load_dataset(ingest(source, build(DatasetConfig, {"size": 4, "zca": True}), workspace)[0])
    assert white.artifact.name.startswith("dataset-d-4px-zca-")
    assert white.fingerprint != plain.fingerprint
    x = white.normalized(white.train_indices)
    assert torch.allclose(x.reshape(len(x), -1).mean(0), torch.zeros(48), atol=1e-4)
    back = white.zca.invert(x)
    assert torch.allclose(back, plain.normalized(plain.train_indices), atol=1e-3)
    assert torch.allclose(white.displayable(x), plain.displayable(plain.normalized(plain.train_indices)), atol=1e-3)


def test_experts_of_the_plain_dataset_are_refused_on_the_whitened_one(tmp_path, workspace) -> None:
    source = str(make_npz(tmp_path / "d.npz", n=60, size=8))
    plain = load_dataset(ingest(source, build(DatasetConfig, {"size": 8}), workspace)[0])
    labels = load_labels(label_run(plain, build(LabelConfig, {"num_domains": 2}), workspace)[0], plain)
    experts = experts_run(
        plain, labels, build(ExpertsConfig, {"num_experts": 1, "epochs": 2, "domain_experts": False}), workspace
    )[0]
    assert experts.info["normalization"]["zca"] is False
    white = load_dataset(ingest(source, build(DatasetConfig, {"size": 8, "zca": True}), workspace)[0])
    white_labels = load_labels(label_run(white, build(LabelConfig, {"num_domains": 2}), workspace)[0], white)
    cfg = build(
        CondenseConfig,
        {
            "base": "mtt",
            "ipc": 1,
            "iterations": 1,
            "syn_steps": 1,
            "expert_epochs": 1,
            "max_start_epoch": 1,
            "domain_aware": False,
        },
    )
    with pytest.raises(ChddlError, match="another dataset"):
        condense_run(white, white_labels, cfg, workspace, experts=experts)
