"""Continuing finished runs, Algorithm 1's schedule, structured masks and their diagnostics."""

from __future__ import annotations

import pytest
import safetensors.torch
import torch

from stages.artifacts import Workspace
from stages.condense import FINAL_STATE, CondenseConfig, _build, continuable, run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.domain.aware import DomainMasks, mask_diagnostics
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods.loop import Loop
from tests.conftest import make_npz

TINY = {"batch_real": 8, "ipc": 2, "checkpoint_every": 100, "log_every": 1, "compile": "off"}


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    lab, _ = label_run(ds, build(LabelConfig, {"num_domains": 3}), workspace)
    return ds, load_labels(lab, ds)


def _cfg(**kw) -> CondenseConfig:
    return build(CondenseConfig, TINY, kw)


def _masks(art) -> torch.Tensor:
    return safetensors.torch.load_file(str(art.path / "extra_domain_masks.safetensors"))["z"]


# -- continuing a finished run -------------------------------------------------
@pytest.mark.parametrize(
    "base, extra", [("dm", {}), ("dc", {}), ("dm", {"schedule": "algorithm1"}), ("dm", {"mask_optimizer": "adam"})]
)
def test_three_then_five_iterations_equal_a_straight_five(data, tmp_path, base, extra) -> None:
    ds, labels = data
    straight, _ = run(ds, labels, _cfg(base=base, iterations=5, **extra), Workspace(tmp_path / "straight"))
    ws = Workspace(tmp_path / "ladder")
    short, _ = run(ds, labels, _cfg(base=base, iterations=3, **extra), ws)
    longer, hit = run(ds, labels, _cfg(base=base, iterations=5, **extra), ws)
    assert not hit and longer.metrics["continued_from"] == short.name and longer.metrics["resumed_from"] == 3
    assert longer.metrics["iterations_run"] == 2
    assert torch.equal(straight.tensor("images"), longer.tensor("images"))
    assert torch.equal(straight.tensor("loss_history"), longer.tensor("loss_history"))
    assert torch.equal(_masks(straight), _masks(longer))
    assert ws.find(short.name) is not None  # the shorter rung stays its own artifact


def test_a_continued_run_counts_the_shorter_runs_time(data, workspace) -> None:
    ds, labels = data
    short, _ = run(ds, labels, _cfg(iterations=2), workspace)
    longer, _ = run(ds, labels, _cfg(iterations=4), workspace)
    cost = longer.meta["cost"]
    assert cost["earlier_wall_s"] > 0
    assert cost["earlier_wall_s"] <= short.meta["cost"]["wall_s"] + 0.01
    assert cost["wall_s_total"] == pytest.approx(cost["wall_s"] + cost["earlier_wall_s"], abs=0.02)


def test_a_continued_run_resumed_after_an_interruption_still_names_its_source(data, tmp_path) -> None:
    ds, labels = data
    ws = Workspace(tmp_path / "ladder")
    short, _ = run(ds, labels, _cfg(iterations=2), ws)
    with pytest.raises(KeyboardInterrupt):
        run(ds, labels, _cfg(iterations=5), ws, stop_after=1)  # checkpointed at iteration 3
    longer, _ = run(ds, labels, _cfg(iterations=5), ws)
    straight, _ = run(ds, labels, _cfg(iterations=5), Workspace(tmp_path / "straight"))
    assert longer.metrics["resumed_from"] == 3 and longer.metrics["continued_from"] == short.name
    assert torch.equal(straight.tensor("images"), longer.tensor("images"))


def test_a_checkpoint_of_a_straight_run_claims_no_source(data, tmp_path) -> None:
    ds, labels = data
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        run(ds, labels, _cfg(iterations=5), ws, stop_after=3)  # a straight run, checkpointed at iteration 3
    run(ds, labels, _cfg(iterations=2), ws)
    longer, _ = run(ds, labels, _cfg(iterations=5), ws)  # its own checkpoint is further along than the 2-run
    assert longer.metrics["resumed_from"] == 3 and "continued_from" not in longer.metrics


def test_a_shorter_runs_state_is_read_only_when_the_run_continues_from_it(data, tmp_path, monkeypatch) -> None:
    import safetensors.torch

    ds, labels = data
    ws = Workspace(tmp_path / "ws")
    with pytest.raises(KeyboardInterrupt):
        run(ds, labels, _cfg(iterations=5), ws, stop_after=3)
    run(ds, labels, _cfg(iterations=2), ws)
    read, real_load = [], safetensors.torch.load_file
    monkeypatch.setattr(safetensors.torch, "load_file", lambda path, *a: read.append(path) or real_load(path, *a))
    five, _ = run(ds, labels, _cfg(iterations=5), ws)  # its own checkpoint (3) is further along than the 2-run
    assert [p for p in read if p.endswith(FINAL_STATE)] == []
    seven, _ = run(ds, labels, _cfg(iterations=7), ws)
    assert [p for p in read if p.endswith(FINAL_STATE)] == [str(five.path / FINAL_STATE)]
    assert seven.metrics["continued_from"] == five.name


def test_the_longest_shorter_run_is_continued(data, workspace) -> None:
    ds, labels = data
    run(ds, labels, _cfg(iterations=2), workspace)
    three, _ = run(ds, labels, _cfg(iterations=3), workspace)
    five, _ = run(ds, labels, _cfg(iterations=5), workspace)
    assert five.metrics["continued_from"] == three.name and five.metrics["resumed_from"] == 3


@pytest.mark.parametrize(
    "change", [{"lam": 0.5}, {"seed": 1}, {"domain_aware": False}, {"schedule": "algorithm1"}, {"mask_resolution": 4}]
)
def test_runs_of_other_settings_are_not_continued(data, workspace, change) -> None:
    ds, labels = data
    run(ds, labels, _cfg(iterations=2), workspace)
    other, _ = run(ds, labels, _cfg(iterations=4, **change), workspace)
    assert "continued_from" not in other.metrics and other.metrics["resumed_from"] == 0


def test_a_damaged_final_state_starts_over(data, tmp_path) -> None:
    ds, labels = data
    ws = Workspace(tmp_path / "ws")
    short, _ = run(ds, labels, _cfg(iterations=2), ws)
    (short.path / FINAL_STATE).write_bytes(b"not a safetensors file")
    longer, _ = run(ds, labels, _cfg(iterations=4), ws)
    straight, _ = run(ds, labels, _cfg(iterations=4), Workspace(tmp_path / "straight"))
    assert longer.metrics["resumed_from"] == 0
    assert torch.equal(straight.tensor("images"), longer.tensor("images"))


def test_continuable_ignores_longer_and_equal_runs(data, workspace) -> None:
    ds, labels = data
    done, _ = run(ds, labels, _cfg(iterations=4), workspace)
    inputs = dict(done.meta["inputs"])
    assert continuable(workspace, _cfg(iterations=4), inputs) is None
    assert continuable(workspace, _cfg(iterations=3), inputs) is None
    assert continuable(workspace, _cfg(iterations=6), inputs).name == done.name


# -- Algorithm 1 ---------------------------------------------------------------
def _loop(data, tmp_path, **kw):
    from stages.condense import _settings
    from stages.progress import NullProgress

    ds, labels = data
    cfg = _cfg(iterations=1, **kw).resolved()
    base, objective, images, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
    loop = Loop(base, objective, images, _settings(cfg, base), "k", tmp_path / "p", NullProgress())
    g = torch.Generator().manual_seed(0)
    base.new_round(0, objective.roles, g)
    return loop, objective, images, g


def test_an_algorithm1_class_step_moves_only_that_class_images(data, tmp_path) -> None:
    loop, objective, images, g = _loop(data, tmp_path, schedule="algorithm1")
    before = images.detach().clone()
    rows, loss = next(objective.class_losses(images, g))
    loop._zero()
    loss.backward()
    loop._apply_rows(rows)
    moved = (images.detach() != before).flatten(1).any(dim=1)
    assert moved.tolist() == [True, True, False, False, False, False]  # class 0 = the first 2 images (ipc 2)
    # a second step of class 1 must not move class 0 through SGD's momentum either
    after_first = images.detach().clone()
    rows1, loss1 = list(objective.class_losses(images, g))[1]
    loop._zero()
    loss1.backward()
    loop._apply_rows(rows1)
    moved = (images.detach() != after_first).flatten(1).any(dim=1)
    assert moved.tolist() == [False, False, True, True, False, False]


def test_algorithm1_takes_one_domain_step_per_pseudo_domain(data, tmp_path, monkeypatch) -> None:
    loop, objective, _, g = _loop(data, tmp_path, schedule="algorithm1")
    steps = []
    real_apply = loop._apply
    monkeypatch.setattr(loop, "_apply", lambda names: steps.append(tuple(names)) or real_apply(names))
    loop.step(g)
    # 3 classes: each moves images only (via _apply_rows); then 3 domain steps on everything
    assert steps == [("images",)] * 3 + [("images", "masks")] * 3


def test_without_domain_lambda_the_weight_has_no_effect(data, tmp_path) -> None:
    ds, labels = data
    a, _ = run(
        ds, labels, _cfg(iterations=2, schedule="algorithm1", domain_lambda=False, lam=0.1), Workspace(tmp_path / "a")
    )
    b, _ = run(
        ds, labels, _cfg(iterations=2, schedule="algorithm1", domain_lambda=False, lam=5.0), Workspace(tmp_path / "b")
    )
    c, _ = run(ds, labels, _cfg(iterations=2, schedule="algorithm1", lam=5.0), Workspace(tmp_path / "c"))
    assert torch.equal(a.tensor("images"), b.tensor("images"))
    assert not torch.equal(a.tensor("images"), c.tensor("images"))


def test_with_domain_lambda_zero_the_masks_stay_uniform(data, workspace) -> None:
    ds, labels = data
    art, _ = run(ds, labels, _cfg(iterations=2, schedule="algorithm1", lam=0.0), workspace)
    assert torch.equal(_masks(art), torch.full_like(_masks(art), 0.01))
    assert art.metrics["masks"]["mean_max_alpha"] == pytest.approx(1 / 3, abs=1e-4)


def test_summed_lambda_zero_is_plain_dm(data, tmp_path) -> None:
    ds, labels = data
    dm, _ = run(ds, labels, _cfg(iterations=3, domain_aware=False), Workspace(tmp_path / "dm"))
    zero, _ = run(ds, labels, _cfg(iterations=3, lam=0.0), Workspace(tmp_path / "zero"))
    assert torch.allclose(dm.tensor("images"), zero.tensor("images"), atol=1e-4)


def test_sequential_at_lambda_zero_is_dm_with_a_larger_step_and_smaller_momentum(data, tmp_path) -> None:
    # The zero-gradient domain step still applies SGD momentum m: per iteration the images move by
    # lr (1 + m) u with u = m^2 u_prev + g, i.e. DM with lr (1 + m) and momentum m^2 (RESULTS.md, issue 17 b).
    ds, labels = data
    seq, _ = run(ds, labels, _cfg(iterations=4, schedule="sequential", lam=0.0), Workspace(tmp_path / "seq"))
    dm_like, _ = run(
        ds, labels, _cfg(iterations=4, domain_aware=False, lr_img=1.5, momentum_img=0.25), Workspace(tmp_path / "d")
    )
    plain, _ = run(ds, labels, _cfg(iterations=4, domain_aware=False), Workspace(tmp_path / "plain"))
    assert torch.allclose(seq.tensor("images"), dm_like.tensor("images"), atol=1e-4)
    assert not torch.allclose(seq.tensor("images"), plain.tensor("images"), atol=1e-2)


@pytest.mark.parametrize("momentum", [1.0, -0.1, 2.0])
def test_a_momentum_outside_zero_to_one_is_refused(momentum) -> None:
    with pytest.raises(ChddlError, match=r"--momentum-img must lie in \[0, 1\)"):
        _cfg(momentum_img=momentum).validate()


# -- structured masks ----------------------------------------------------------
def test_low_resolution_masks_are_smooth_and_sum_to_one() -> None:
    masks = DomainMasks(
        2, 3, (3, 16, 16), 0.5, "normal", 0.1, torch.Generator().manual_seed(0), resolution=4, channels="shared"
    )
    assert masks.z.shape == (2, 3, 1, 4, 4)
    alpha = masks.alpha()
    assert alpha.shape == (2, 3, 3, 16, 16)
    assert torch.allclose(alpha.sum(dim=1), torch.ones(2, 3, 16, 16), atol=1e-6)
    assert torch.equal(alpha[:, :, 0], alpha[:, :, 2])  # one mask for all channels
    images = torch.randn(2, 3, 16, 16)
    assert torch.allclose(masks.views(images).sum(dim=1), images, atol=1e-5)


def test_a_one_by_one_mask_weights_the_whole_image() -> None:
    masks = DomainMasks(
        2, 4, (3, 8, 8), 1.0, "normal", 0.1, torch.Generator().manual_seed(1), resolution=1, channels="shared"
    )
    alpha = masks.alpha()
    assert torch.allclose(alpha, alpha[..., :1, :1].expand_as(alpha))


def test_full_resolution_per_channel_masks_are_the_paper_masks() -> None:
    g = torch.Generator().manual_seed(0)
    paper = DomainMasks(2, 4, (3, 8, 8), 0.3, "normal", 0.1, g)
    assert paper.z.shape == (2, 4, 3, 8, 8)
    assert torch.equal(paper.alpha(), torch.softmax(paper.z / 0.1, dim=1))


def test_structured_masks_get_gradients_and_train(data, workspace) -> None:
    ds, labels = data
    art, _ = run(ds, labels, _cfg(iterations=2, mask_resolution=4, mask_channels="shared"), workspace)
    z = _masks(art)
    assert z.shape == (6, 3, 1, 4, 4)
    assert not torch.equal(z, torch.full_like(z, 0.01))


def test_a_mask_resolution_above_the_image_size_is_refused(data, workspace) -> None:
    ds, labels = data
    with pytest.raises(ChddlError, match="exceeds the image size 16"):
        run(ds, labels, _cfg(iterations=1, mask_resolution=17), workspace)
    assert not list(workspace.root.glob("artifacts/condensed*"))


@pytest.mark.parametrize(
    "overrides, message",
    [({"mask_resolution": 0}, "at least 1"), ({"mask_channels": "rgb"}, "rgb"), ({"schedule": "alg1"}, "algorithm1")],
)
def test_bad_mask_and_schedule_options_fail_cleanly(overrides, message) -> None:
    with pytest.raises(ChddlError, match=message):
        _cfg(**overrides)


def test_the_new_defaults_leave_earlier_cache_keys_unchanged() -> None:
    fields = build(CondenseConfig).resolved().key_fields()
    assert not {"domain_lambda", "mask_resolution", "mask_channels"} & set(fields)
    changed = build(
        CondenseConfig, {"domain_lambda": False, "mask_resolution": 4, "mask_channels": "shared"}
    ).resolved()
    assert {k: changed.key_fields()[k] for k in ("domain_lambda", "mask_resolution", "mask_channels")} == {
        "domain_lambda": False,
        "mask_resolution": 4,
        "mask_channels": "shared",
    }


# -- diagnostics -----------------------------------------------------------------
def test_diagnostics_of_masks_that_form_two_halves() -> None:
    alpha = torch.zeros(1, 2, 1, 4, 4)
    alpha[:, 0, :, :, :2] = 0.9
    alpha[:, 1, :, :, :2] = 0.1
    alpha[:, 0, :, :, 2:] = 0.2
    alpha[:, 1, :, :, 2:] = 0.8
    d = mask_diagnostics(alpha)
    assert d["mean_max_alpha"] == pytest.approx(0.85)
    # 12 vertical pairs all agree; of 12 horizontal pairs the 4 across the border disagree
    assert d["neighbour_agreement"] == pytest.approx(20 / 24, abs=1e-4)
    assert d["domain_share"] == [0.5, 0.5] and d["dominant_share"] == 0.5
    assert d["chance_agreement"] == 0.5 and d["tied_fraction"] == 0.0


def test_diagnostics_flag_uniform_masks_as_tied() -> None:
    d = mask_diagnostics(torch.full((2, 4, 3, 4, 4), 0.25))
    assert d["mean_max_alpha"] == 0.25 and d["tied_fraction"] == 1.0


def test_diagnostics_counted_a_few_images_at_a_time_equal_those_of_all_at_once() -> None:
    g = torch.Generator().manual_seed(0)
    alpha = torch.softmax(torch.randn(7, 4, 3, 8, 8, generator=g) * 3, dim=1)
    assert mask_diagnostics(alpha, block=2) == mask_diagnostics(alpha, block=100)


def test_diagnostics_of_one_mask_expanded_over_the_channels_equal_those_of_its_copies() -> None:
    g = torch.Generator().manual_seed(0)
    alpha = torch.softmax(torch.randn(5, 3, 1, 8, 8, generator=g) * 3, dim=1)
    assert mask_diagnostics(alpha.expand(-1, -1, 3, -1, -1)) == mask_diagnostics(alpha.repeat(1, 1, 3, 1, 1))


def test_condensed_sets_record_mask_diagnostics(data, workspace) -> None:
    ds, labels = data
    art, _ = run(ds, labels, _cfg(iterations=2), workspace)
    m = art.metrics["masks"]
    assert set(m) >= {"mean_max_alpha", "neighbour_agreement", "chance_agreement", "domain_share"}
    assert len(m["domain_share"]) == 3 and sum(m["domain_share"]) == pytest.approx(1.0, abs=1e-3)


def test_the_winner_map_colours_each_pixel_by_its_domain() -> None:
    from stages.visual import DOMAIN_COLOURS, winner_map

    alpha = torch.zeros(1, 3, 3, 2, 2)
    alpha[0, 2, :, 0, 0] = alpha[0, 1, :, 0, 1] = alpha[0, 0, :, 1, :] = 1.0
    colours = winner_map(alpha)[0]
    assert torch.equal(colours[:, 0, 0], DOMAIN_COLOURS[2]) and torch.equal(colours[:, 0, 1], DOMAIN_COLOURS[1])
    assert torch.equal(colours[:, 1, 1], DOMAIN_COLOURS[0])


def test_the_report_names_the_schedule_and_mask_settings(data, workspace) -> None:
    from stages.report.inventory import chddl_settings

    ds, labels = data
    art, _ = run(
        ds,
        labels,
        _cfg(iterations=1, schedule="algorithm1", domain_lambda=False, mask_resolution=4, mask_channels="shared"),
        workspace,
    )
    text = chddl_settings(art, workspace)
    assert "algorithm1" in text and "domain steps unweighted" in text and "masks 4x4 shared" in text


# -- DM + CHDDL's views made chunk by chunk -------------------------------------
def _one_step(base, objective, images) -> tuple[torch.Tensor, ...]:
    """Class and domain loss of one step from fixed seeds, and the images' and masks' gradients."""
    base.new_round(0, objective.roles, torch.Generator().manual_seed(1))
    images.grad = objective.masks.z.grad = None
    l_cls, l_dom = objective.losses(images, torch.Generator().manual_seed(2))
    (l_cls + 0.1 * l_dom).backward()
    return l_cls.detach(), l_dom.detach(), images.grad.clone(), objective.masks.z.grad.clone()


def _assert_same_step(first: tuple[torch.Tensor, ...], second: tuple[torch.Tensor, ...]) -> None:
    (c1, d1, gi1, gz1), (c2, d2, gi2, gz2) = first, second
    assert torch.allclose(c1, c2, rtol=1e-5) and torch.allclose(d1, d2, rtol=1e-5)
    assert torch.allclose(gi1, gi2, rtol=1e-4, atol=1e-7) and torch.allclose(gz1, gz2, rtol=1e-4, atol=1e-8)
    assert gz1.abs().sum() > 0 and gz2.abs().sum() > 0


@pytest.mark.parametrize("extra", [{}, {"mask_resolution": 4, "mask_channels": "shared"}])
def test_views_made_chunk_by_chunk_give_the_losses_and_gradients_of_views_made_at_once(data, extra) -> None:
    ds, labels = data
    cfg = _cfg(ipc=20, mask_init_mode="normal", **extra).resolved()  # 60 images, 180 views: several chunks
    base, objective, images, *_ = _build(ds, labels, cfg, torch.device("cpu"))
    results = []
    for lazy in (True, False):
        base.lazy_views = lazy
        results.append(_one_step(base, objective, images))
    _assert_same_step(*results)


def test_compiled_chunked_views_give_the_losses_and_gradients_of_eager_views_made_at_once(data) -> None:
    from stages.methods.common import Embedding

    ds, labels = data
    cfg = _cfg(ipc=20, mask_init_mode="normal").resolved()  # 180 views: several chunks
    base, objective, images, *_ = _build(ds, labels, cfg, torch.device("cpu"))
    results = []
    for lazy, embedding in ((False, Embedding()), (True, Embedding(compiled=True, backend="aot_eager"))):
        base.lazy_views, base.embedding = lazy, embedding
        results.append(_one_step(base, objective, images))
    _assert_same_step(*results)
