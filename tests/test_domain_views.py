"""``--domain-views one``: the domain loss sees one drawn pseudo-domain's views per step, scaled so that it
estimates the loss over all views without bias."""

from __future__ import annotations

import pytest
import torch

from stages.condense import CondenseConfig, _build, run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.domain.aware import DomainAwareObjective, DomainMasks
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods.base import RealPool
from stages.methods.sre2l import SRe2L, real_statistics
from stages.models import create_model
from stages.report.inventory import chddl_settings
from tests.conftest import make_npz

TINY = {"batch_real": 8, "ipc": 2, "checkpoint_every": 100, "log_every": 1, "compile": "off"}
D = 3


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    lab, _ = label_run(ds, build(LabelConfig, {"num_domains": D}), workspace)
    return ds, load_labels(lab, ds)


def _dm_objective(data, **kw):
    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"domain_views": "one", "mask_init_mode": "normal", **kw}).resolved()
    base, objective, images, *_ = _build(ds, labels, cfg, torch.device("cpu"))
    base.new_round(0, objective.roles, torch.Generator().manual_seed(1))
    return objective, images


def _domain_loss_of_each_domain(objective, images, monkeypatch, step) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The domain loss over all views, then with each pseudo-domain's views alone, from the same draws."""
    scale = objective.one_domain_scale
    objective.one_domain_scale = None
    whole = step(images, torch.Generator().manual_seed(2))
    objective.one_domain_scale = scale
    parts = []
    for d in range(objective.num_domains):
        # the domain as if drawn, without consuming the generator: the other draws are those of the whole loss
        monkeypatch.setattr(objective, "draw_domain", lambda g, d=d: d)
        parts.append(step(images, torch.Generator().manual_seed(2)))
    return whole, parts


def test_dm_one_domain_losses_times_d_average_to_the_whole_domain_loss(data, monkeypatch) -> None:
    objective, images = _dm_objective(data)
    assert objective.one_domain_scale == D  # DM sums its domains' terms
    with torch.no_grad():
        whole, parts = _domain_loss_of_each_domain(objective, images, monkeypatch, lambda x, g: objective.losses(x, g))
    assert all(torch.equal(p[0], whole[0]) for p in parts)  # the class loss is untouched
    assert len({round(float(p[1]), 4) for p in parts}) == D  # each domain's term differs
    assert torch.allclose(torch.stack([p[1] for p in parts]).mean(), whole[1], rtol=1e-5)


def test_dm_one_domain_views_made_chunk_by_chunk_or_at_once_give_the_same_gradients(data) -> None:
    objective, images = _dm_objective(data, ipc=20)  # 60 images: several chunks
    results = []
    for lazy_views in (True, False):
        objective.base.lazy_views = lazy_views
        images.grad = objective.masks.z.grad = None
        l_cls, l_dom = objective.losses(images, torch.Generator().manual_seed(2))
        (l_cls + 0.1 * l_dom).backward()
        results.append((l_dom.detach(), images.grad.clone(), objective.masks.z.grad.clone()))
    (d1, gi1, gz1), (d2, gi2, gz2) = results
    assert torch.allclose(d1, d2, rtol=1e-5)
    assert torch.allclose(gi1, gi2, rtol=1e-4, atol=1e-7) and torch.allclose(gz1, gz2, rtol=1e-4, atol=1e-8)
    # one domain's term still moves every domain's mask logits (the softmax couples them)
    assert (gz1.abs().flatten(2).sum(2) > 0).all()


def test_sre2l_one_domain_losses_average_to_the_whole_domain_loss(monkeypatch) -> None:
    g = torch.Generator().manual_seed(0)
    teacher = create_model("convnet_bn", 3, 16, seed=0).eval().requires_grad_(False)
    real, real_domains = torch.randn(30, 3, 16, 16, generator=g), torch.arange(30) % D
    base = SRe2L(teacher, 0.01, 10.0, 0, False, domain_stats=real_statistics(teacher, real, real_domains, D))
    syn_labels = torch.arange(6) % 3
    masks = DomainMasks(6, D, (3, 16, 16), 0.5, "normal", 0.1, g)
    pool = RealPool(real, torch.arange(30) % 3)
    objective = DomainAwareObjective(
        base, pool, pool.labels, 3, syn_labels, 8, real_domains, masks, one_domain_scale=1.0
    )
    images = torch.randn(6, 3, 16, 16, generator=g)
    with torch.no_grad():
        whole, parts = _domain_loss_of_each_domain(objective, images, monkeypatch, objective.domain_loss)
    assert len({round(float(p), 5) for p in parts}) == D
    assert torch.allclose(torch.stack(parts).mean(), whole, rtol=1e-5)  # SRe2L averages its domains' terms


def test_algorithm1_with_one_domain_takes_one_domain_step(data, tmp_path, monkeypatch) -> None:
    from stages.condense import _settings
    from stages.methods.loop import Loop
    from stages.progress import NullProgress

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"iterations": 1, "schedule": "algorithm1", "domain_views": "one"}).resolved()
    base, objective, images, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
    loop = Loop(base, objective, images, _settings(cfg, base), "k", tmp_path / "p", NullProgress())
    g = torch.Generator().manual_seed(0)
    base.new_round(0, objective.roles, g)
    steps = []
    real_apply = loop._apply
    monkeypatch.setattr(loop, "_apply", lambda names: steps.append(tuple(names)) or real_apply(names))
    loop.step(g)
    assert steps == [("images",)] * 3 + [("images", "masks")]  # 3 class steps, then one domain step


def test_one_domain_views_condense_to_their_own_set_named_in_the_report(data, workspace) -> None:
    ds, labels = data
    one, _ = run(ds, labels, build(CondenseConfig, TINY, {"iterations": 3, "domain_views": "one"}), workspace)
    every, _ = run(ds, labels, build(CondenseConfig, TINY, {"iterations": 3}), workspace)
    assert one.name != every.name and one.config["domain_views"] == "one"
    assert torch.isfinite(one.tensor("images")).all() and one.tensor("loss_history")[:, 1].gt(0).all()
    assert not torch.equal(one.tensor("images"), every.tensor("images"))
    assert "one pseudo-domain's views per step" in chddl_settings(one, workspace)
    assert "pseudo-domain's views" not in chddl_settings(every, workspace)


def test_the_default_leaves_earlier_cache_keys_unchanged() -> None:
    assert "domain_views" not in build(CondenseConfig).resolved().key_fields()
    assert build(CondenseConfig, {"domain_views": "one"}).resolved().key_fields()["domain_views"] == "one"
    # without CHDDL the setting has no effect, so it leaves the key
    assert "domain_views" not in build(CondenseConfig, {"domain_views": "one", "domain_aware": False}).key_fields()


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"domain_views": "two"}, "must be one of all, one"),
        ({"domain_views": "one", "base": "mtt"}, "not available for mtt"),
        ({"domain_views": "one", "base": "dc"}, "not available for dc"),
    ],
)
def test_bad_domain_views_fail_cleanly(overrides, message) -> None:
    with pytest.raises(ChddlError, match=message):
        build(CondenseConfig, overrides)
