"""Condensation: DM, DC and the domain-aware module on tiny data."""

from __future__ import annotations

import pytest
import torch

from stages.condense import CondenseConfig, run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.domain.aware import DomainMasks
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods import RealPool
from tests.conftest import make_npz

TINY = {"iterations": 3, "batch_real": 8, "ipc": 2, "checkpoint_every": 2, "log_every": 1, "compile": "off"}


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    lab, _ = label_run(ds, build(LabelConfig, {"num_domains": 3}), workspace)
    return ds, load_labels(lab, ds)


def _run(data, workspace, **kw):
    ds, labels = data
    cfg = build(CondenseConfig, TINY, kw)
    art, _ = run(ds, labels, cfg, workspace)
    return art


@pytest.mark.parametrize("base", ["dm", "dc"])
@pytest.mark.parametrize("aware", [False, True])
def test_output_has_exactly_ipc_times_classes_images(data, workspace, base, aware) -> None:
    art = _run(data, workspace, base=base, domain_aware=aware)
    assert art.tensor("images").shape == (6, 3, 16, 16)
    assert art.tensor("labels").tolist() == [0, 0, 1, 1, 2, 2]
    assert torch.isfinite(art.tensor("images")).all()
    assert (art.path / "grid.png").is_file()
    assert (art.path / "extra_domain_masks.safetensors").is_file() == aware
    assert art.meta["cost"]["wall_s"] > 0 and art.meta["cost"]["peak_rss_bytes"] > 0


@pytest.mark.parametrize("channels, zc", [("per-channel", 3), ("shared", 1)])
def test_the_saved_masks_hold_z_and_its_softmax_over_domains_for_every_colour_channel(
    data, workspace, channels, zc
) -> None:
    import safetensors.torch

    art = _run(data, workspace, base="dm", domain_aware=True, mask_channels=channels)
    saved = safetensors.torch.load_file(str(art.path / "extra_domain_masks.safetensors"))
    z, alpha = saved["z"], saved["alpha"]
    assert z.shape == (6, 3, zc, 16, 16) and alpha.shape == (6, 3, 3, 16, 16)
    tau = art.config["tau"]
    assert torch.allclose(alpha, torch.softmax(z / tau, dim=1).expand(-1, -1, 3, -1, -1), atol=1e-6)
    assert art.metrics["masks"]["mean_max_alpha"] == pytest.approx(alpha.max(dim=1).values.mean().item(), abs=1e-4)


def test_output_size_does_not_depend_on_the_number_of_domains(tmp_path, workspace) -> None:
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    for d in (1, 2, 5):
        lab, _ = label_run(ds, build(LabelConfig, {"num_domains": d}), workspace)
        out, _ = run(ds, load_labels(lab, ds), build(CondenseConfig, TINY, {"iterations": 1}), workspace)
        assert out.tensor("images").shape[0] == 6


def test_views_sum_to_the_image() -> None:
    g = torch.Generator().manual_seed(0)
    masks = DomainMasks(5, 4, (3, 8, 8), 0.01, "normal", 0.1, g)
    images = torch.randn(5, 3, 8, 8)
    views = masks.views(images)
    assert views.shape == (5, 4, 3, 8, 8)
    assert torch.allclose(views.sum(dim=1), images, atol=1e-6)


def test_constant_mask_init_gives_uniform_alpha() -> None:
    masks = DomainMasks(2, 4, (3, 4, 4), 0.01, "constant", 0.1, torch.Generator())
    assert torch.allclose(masks.alpha(), torch.full((2, 4, 3, 4, 4), 0.25))


@pytest.mark.parametrize("base", ["dm", "dc"])
def test_gradients_reach_images_and_masks(data, base) -> None:
    from stages.condense import _build

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"base": base, "mask_init_mode": "normal"}).resolved()
    method, objective, images, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
    g = torch.Generator().manual_seed(0)
    method.new_round(0, objective.roles, g)
    (objective.class_loss(images, g) + 0.1 * objective.domain_loss(images, g)).backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    z = objective.extra_parameters()[0]
    assert z.grad is not None and z.grad.abs().sum() > 0


def test_same_seed_gives_identical_output(data, tmp_path) -> None:
    from stages.artifacts import Workspace

    a = _run(data, Workspace(tmp_path / "a"), base="dm")
    b = _run(data, Workspace(tmp_path / "b"), base="dm")
    assert torch.equal(a.tensor("images"), b.tensor("images"))
    c = _run(data, Workspace(tmp_path / "c"), base="dm", seed=1)
    assert not torch.equal(a.tensor("images"), c.tensor("images"))


def _masks_of(art) -> torch.Tensor:
    import safetensors.torch

    return safetensors.torch.load_file(str(art.path / "extra_domain_masks.safetensors"))["z"]


@pytest.mark.parametrize("base, extra", [("dm", {}), ("dc", {}), ("dm", {"mask_optimizer": "adam"})])
def test_interrupted_then_resumed_run_equals_an_uninterrupted_one(data, tmp_path, base, extra) -> None:
    from stages.artifacts import Workspace

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"base": base, "iterations": 5}, extra)
    full, _ = run(ds, labels, cfg, Workspace(tmp_path / "full"))
    ws = Workspace(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        run(ds, labels, cfg, ws, stop_after=3)
    resumed, _ = run(ds, labels, cfg, ws)
    assert resumed.metrics["resumed_from"] == 3
    assert torch.equal(full.tensor("images"), resumed.tensor("images"))
    assert torch.equal(full.tensor("loss_history"), resumed.tensor("loss_history"))
    assert torch.equal(_masks_of(full), _masks_of(resumed))


def test_a_checkpoint_from_before_the_optimiser_choice_still_resumes_exactly(data, tmp_path) -> None:
    import yaml

    from stages.artifacts import Workspace
    from stages.methods import checkpoint

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"iterations": 5})
    full, _ = run(ds, labels, cfg, Workspace(tmp_path / "full"))
    ws = Workspace(tmp_path / "old")
    with pytest.raises(KeyboardInterrupt):
        run(ds, labels, cfg, ws, stop_after=3)
    folder = next(ws.root.glob("partial/*"))
    meta = yaml.safe_load((folder / checkpoint.CKPT_META).read_text())
    it, tensors = checkpoint.load_checkpoint(folder, meta["key"])
    # Earlier versions stored SGD's buffer as momentum/<group>/<i>.
    legacy = {
        k.replace("opt/", "momentum/").removesuffix("/momentum_buffer") if k.endswith("/momentum_buffer") else k: v
        for k, v in tensors.items()
    }
    assert any(k.startswith("momentum/masks/") for k in legacy)
    checkpoint.save_checkpoint(folder, meta["key"], it, legacy)
    resumed, _ = run(ds, labels, cfg, ws)
    assert resumed.metrics["resumed_from"] == 3
    assert torch.equal(full.tensor("images"), resumed.tensor("images"))


def test_adam_masks_default_to_their_own_learning_rate() -> None:
    sgd = build(CondenseConfig, {"base": "mtt"}).resolved()
    adam = build(CondenseConfig, {"base": "mtt", "mask_optimizer": "adam"}).resolved()
    chosen = build(CondenseConfig, {"base": "mtt", "mask_optimizer": "adam", "mask_lr": 0.5}).resolved()
    assert (sgd.mask_lr, adam.mask_lr, chosen.mask_lr) == (1000.0, 0.01, 0.5)


def test_the_default_mask_optimiser_leaves_earlier_cache_keys_unchanged() -> None:
    sgd = build(CondenseConfig).resolved().key_fields()
    adam = build(CondenseConfig, {"mask_optimizer": "adam"}).resolved().key_fields()
    assert "mask_optimizer" not in sgd and adam["mask_optimizer"] == "adam"


def test_adam_moves_the_masks_by_about_its_learning_rate_per_step(data, workspace) -> None:
    art = _run(data, workspace, base="dm", mask_optimizer="adam", mask_lr=0.05, iterations=2)
    moved = (_masks_of(art) - 0.01).abs()
    # Adam's first steps have magnitude lr whatever the gradient's scale: two steps move z by at most 2 lr.
    assert 0.05 < moved.max() <= 0.1 * 1.01
    assert art.config["mask_optimizer"] == "adam" and art.metrics["final_lr"]["masks"] == 0.05


def _fail_at_step(monkeypatch, n: int, exc: type[BaseException]) -> None:
    """Make the n-th image update (1-based) raise ``exc``, as a Ctrl-C or a crash would."""
    from stages.methods.loop import Loop

    real_step, calls = Loop.step, {"n": 0}

    def step(self, g):
        calls["n"] += 1
        if calls["n"] == n:
            raise exc()
        return real_step(self, g)

    monkeypatch.setattr(Loop, "step", step)


def test_ctrl_c_between_checkpoints_keeps_the_iterations_done(data, tmp_path, monkeypatch) -> None:
    from stages.artifacts import Workspace

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"iterations": 6, "checkpoint_every": 100})
    full, _ = run(ds, labels, cfg, Workspace(tmp_path / "full"))
    ws = Workspace(tmp_path / "resumed")
    with monkeypatch.context() as m:
        _fail_at_step(m, 5, KeyboardInterrupt)  # during iteration 5, long before the first scheduled checkpoint
        with pytest.raises(KeyboardInterrupt):
            run(ds, labels, cfg, ws)
    resumed, _ = run(ds, labels, cfg, ws)
    assert resumed.metrics["resumed_from"] == 4
    assert torch.equal(full.tensor("images"), resumed.tensor("images"))


def test_a_resumed_run_records_the_time_of_the_interrupted_one(data, tmp_path, monkeypatch) -> None:
    import time

    from stages.artifacts import Workspace
    from stages.methods.loop import Loop

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"iterations": 5})
    ws = Workspace(tmp_path / "ws")
    real_step = Loop.step
    with monkeypatch.context() as m:
        m.setattr(Loop, "step", lambda self, g: time.sleep(0.2) or real_step(self, g))
        with pytest.raises(KeyboardInterrupt):
            run(ds, labels, cfg, ws, stop_after=3)
    resumed, _ = run(ds, labels, cfg, ws)
    cost = resumed.meta["cost"]
    assert cost["earlier_wall_s"] >= 0.6  # three slowed iterations before the interruption
    assert cost["wall_s_total"] == pytest.approx(cost["wall_s"] + cost["earlier_wall_s"], abs=0.01)


def test_an_uninterrupted_run_has_no_earlier_time(data, workspace) -> None:
    cost = _run(data, workspace).meta["cost"]
    assert cost["earlier_wall_s"] == 0 and cost["wall_s_total"] == pytest.approx(cost["wall_s"], abs=0.01)


@pytest.mark.parametrize(("first", "then", "expected"), [(1e-9, 1e-9, 4), (1e-9, 10.0, 1), (10.0, 1e-9, None)])
def test_a_crash_keeps_the_last_timed_checkpoint(data, workspace, monkeypatch, first, then, expected) -> None:
    from stages.methods import loop
    from stages.methods.checkpoint import load_checkpoint

    # each iteration "takes" 100 s and writing a checkpoint no time, so the 1% spacing rule never delays one here
    now = [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    ds, labels = data
    cfg = build(
        CondenseConfig,
        TINY,
        {"iterations": 6, "checkpoint_every": 100, "first_checkpoint_minutes": first, "checkpoint_minutes": then},
    )
    _fail_at_step(monkeypatch, 5, RuntimeError)  # not an interruption: nothing is saved on the way out
    real_step = loop.Loop.step
    monkeypatch.setattr(loop.Loop, "step", lambda self, g: now.__setitem__(0, now[0] + 100.0) or real_step(self, g))
    with pytest.raises(RuntimeError):
        run(ds, labels, cfg, workspace)
    partial = next((workspace.root / "partial").iterdir(), None)
    saved = load_checkpoint(partial, partial.name.rsplit("-", 1)[1]) if partial else None
    assert (saved[0] if saved else None) == expected


def _record_saves(monkeypatch) -> list[int]:
    """The iterations of the checkpoints the loop writes, in order."""
    from stages.methods import loop

    saves, real_save = [], loop.save_checkpoint
    monkeypatch.setattr(loop, "save_checkpoint", lambda *a: saves.append(a[2]) or real_save(*a))
    return saves


def _every_state_large_and_cheap_to_write(monkeypatch) -> None:
    from stages.methods import loop

    monkeypatch.setattr(loop, "SPILL_BYTES", 0)
    monkeypatch.setattr(loop, "SPILL_BUDGET", float("inf"))


def test_a_large_state_is_written_at_every_check_and_not_copied(data, tmp_path, monkeypatch) -> None:
    from stages.artifacts import Workspace
    from stages.methods import loop

    extra = {"domain_aware": True, "iterations": 5, "checkpoint_every": 100}
    copied = _run(data, Workspace(tmp_path / "memory"), **extra)
    _every_state_large_and_cheap_to_write(monkeypatch)
    saves, kept = _record_saves(monkeypatch), []
    real_keep = loop.Loop._keep_good
    monkeypatch.setattr(
        loop.Loop, "_keep_good", lambda self, *a: real_keep(self, *a) or kept.append(self._good[1] is None)
    )
    spilled = _run(data, Workspace(tmp_path / "disk"), **extra)
    assert saves == [0, 1, 2, 3, 4]  # the start and every check but the last (log_every 1)
    assert spilled.metrics["checkpoints_written"] == 5 and copied.metrics["checkpoints_written"] == 0
    assert kept == [True, True, True, True, True, False]  # no copy in memory until the final state
    assert torch.equal(copied.tensor("images"), spilled.tensor("images"))
    assert torch.equal(_masks_of(copied), _masks_of(spilled))


def test_a_state_too_slow_to_write_at_every_check_is_copied_in_memory(data, workspace, monkeypatch) -> None:
    from stages.methods import loop

    now = [0.0]
    monkeypatch.setattr(loop, "SPILL_BYTES", 0)
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    saves, real_save = [], loop.save_checkpoint

    def slow_save(*args):  # a write takes 1 "second": 10% of an iteration, over the 2% budget
        now[0] += 1.0
        saves.append(args[2])
        real_save(*args)

    monkeypatch.setattr(loop, "save_checkpoint", slow_save)
    real_step = loop.Loop.step
    monkeypatch.setattr(loop.Loop, "step", lambda self, g: now.__setitem__(0, now[0] + 10.0) or real_step(self, g))
    _run(data, workspace, iterations=5, checkpoint_every=100)
    assert saves == [0]  # the start's write (nothing measured yet), then copies in memory


def test_a_nan_rolls_back_to_a_state_kept_on_disk_as_to_one_in_memory(data, tmp_path, monkeypatch) -> None:
    from stages.artifacts import Workspace
    from stages.methods import dm

    real_joint, calls = dm.DM.joint_loss, {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        l_cls, l_dom = real_joint(self, *args)
        return (l_cls * float("nan"), l_dom) if calls["n"] % 100 == 4 else (l_cls, l_dom)  # iteration 4, once

    monkeypatch.setattr(dm.DM, "joint_loss", flaky)
    extra = {"domain_aware": True, "iterations": 6, "checkpoint_every": 100, "log_every": 2, "nan_retries": 1}
    copied = _run(data, Workspace(tmp_path / "memory"), **extra)
    calls["n"] = 100
    _every_state_large_and_cheap_to_write(monkeypatch)
    spilled = _run(data, Workspace(tmp_path / "disk"), **extra)
    assert copied.metrics["rollbacks"] == spilled.metrics["rollbacks"]
    assert [r["back_to"] for r in spilled.metrics["rollbacks"]] == [2]
    assert torch.equal(copied.tensor("images"), spilled.tensor("images"))
    assert torch.equal(_masks_of(copied), _masks_of(spilled))


def test_ctrl_c_with_the_state_on_disk_resumes_to_the_uninterrupted_result(data, tmp_path, monkeypatch) -> None:
    from stages.artifacts import Workspace

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"domain_aware": True, "iterations": 6, "checkpoint_every": 100})
    full, _ = run(ds, labels, cfg, Workspace(tmp_path / "full"))
    _every_state_large_and_cheap_to_write(monkeypatch)
    ws = Workspace(tmp_path / "resumed")
    with monkeypatch.context() as m:
        _fail_at_step(m, 5, KeyboardInterrupt)
        with pytest.raises(KeyboardInterrupt):
            run(ds, labels, cfg, ws)
    saves = _record_saves(monkeypatch)
    resumed, _ = run(ds, labels, cfg, ws)
    assert resumed.metrics["resumed_from"] == 4 and saves == [5]  # the resumed checkpoint is not written again
    assert torch.equal(full.tensor("images"), resumed.tensor("images"))
    assert torch.equal(_masks_of(full), _masks_of(resumed))


def test_a_rollback_whose_checkpoint_is_gone_stops_in_one_line(data, workspace, monkeypatch) -> None:
    from stages.methods import dm, loop

    real_joint = dm.DM.joint_loss
    monkeypatch.setattr(dm.DM, "joint_loss", lambda self, *a: tuple(v * float("nan") for v in real_joint(self, *a)))
    _every_state_large_and_cheap_to_write(monkeypatch)
    monkeypatch.setattr(loop, "load_checkpoint", lambda *a: None)  # e.g. the partial folder deleted by hand
    with pytest.raises(ChddlError, match=r"checkpoint of iteration 0 to roll back to is gone .*; re-run") as err:
        _run(data, workspace, domain_aware=True, nan_retries=1)
    assert "\n" not in str(err.value)


def test_a_run_with_its_state_on_disk_leaves_the_workspace_as_it_found_it(data, workspace, monkeypatch) -> None:
    _every_state_large_and_cheap_to_write(monkeypatch)
    mine = workspace.root / "notes.txt"
    other = workspace.root / "partial" / "someone-else" / "checkpoint.safetensors"
    other.parent.mkdir(parents=True)
    mine.write_text("keep"), other.write_bytes(b"not ours")

    def others() -> set:  # all but what a run adds: its artifact, the index, its lock
        paths = {p.relative_to(workspace.root) for p in workspace.root.rglob("*")}
        return {p for p in paths if p.parts[0] not in ("artifacts", "locks", "latest.yaml")}

    before = others()
    art = _run(data, workspace, domain_aware=True, iterations=4)
    assert art.metrics["checkpoints_written"] == 4  # the start and iterations 1-3, in the run's own partial folder
    after = others()
    assert after == before and mine.read_text() == "keep" and other.read_bytes() == b"not ours"


def test_a_finished_loop_holds_no_gradients_while_the_artifact_is_made(data, workspace, monkeypatch) -> None:
    from stages.methods import loop

    loops, real_run = [], loop.Loop.run
    monkeypatch.setattr(loop.Loop, "run", lambda self, *a: loops.append(self) or real_run(self, *a))
    _run(data, workspace, domain_aware=True)
    groups = loops[0].groups
    assert set(groups) == {"images", "masks"} and all(p.grad is None for ps in groups.values() for p in ps)


def test_a_second_run_is_a_cache_hit(data, workspace) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY)
    first, hit1 = run(ds, labels, cfg, workspace)
    second, hit2 = run(ds, labels, cfg, workspace)
    assert (hit1, hit2) == (False, True) and first.path == second.path


def test_non_finite_loss_stops_the_run_and_keeps_the_checkpoint(data, workspace, monkeypatch) -> None:
    from stages.methods import dm
    from stages.methods.checkpoint import load_checkpoint

    ds, labels = data
    real_joint = dm.DM.joint_loss
    calls = {"n": 0}

    def poisoned(self, *args):
        calls["n"] += 1
        l_cls, l_dom = real_joint(self, *args)
        return (l_cls * float("nan"), l_dom) if calls["n"] >= 5 else (l_cls, l_dom)  # NaN from iteration 5

    monkeypatch.setattr(dm.DM, "joint_loss", poisoned)
    cfg = build(CondenseConfig, TINY, {"iterations": 6})
    with pytest.raises(ChddlError, match="non-finite loss or images at iteration 5"):
        run(ds, labels, cfg, workspace)
    assert not list(workspace.artifacts_dir.glob("condensed-*"))
    partial = next((workspace.root / "partial").iterdir())
    iteration, tensors = load_checkpoint(partial, partial.name.rsplit("-", 1)[1])
    assert iteration == 4 and torch.isfinite(tensors["param/images/0"]).all()


def test_shared_real_draw_estimates_uniform_domain_means() -> None:
    """The shared forward pass draws real images by class; re-weighting by
    1 / inclusion probability makes each domain's real mean unbiased for the
    mean of that domain (the expectation of a uniform per-domain draw)."""
    from stages.methods.common import group_means

    g = torch.Generator().manual_seed(0)
    # class 0: 300 images, 90% in domain 0; class 1: 60 images, 10% in domain 0
    classes = torch.cat([torch.zeros(300, dtype=torch.long), torch.ones(60, dtype=torch.long)])
    domains = torch.cat([(torch.arange(300) >= 270).long(), (torch.arange(60) >= 6).long()])
    feature = (classes * 10.0 + torch.randn(360, generator=g)).unsqueeze(1).double()
    true = torch.stack([feature[domains == d].mean(0) for d in (0, 1)])
    pool = RealPool(torch.zeros(360, 1, 1, 1), classes)
    sizes = torch.bincount(classes).double()
    weights_of_class = sizes / sizes.clamp(max=32)
    weighted, plain = torch.zeros(2, 1, dtype=torch.float64), torch.zeros(2, 1, dtype=torch.float64)
    for _ in range(400):
        idx, cls = pool.draw(classes, 2, 32, g)
        weighted += group_means(feature[idx], domains[idx], 2, weights_of_class[cls])[0] / 400
        plain += group_means(feature[idx], domains[idx], 2)[0] / 400
    assert torch.allclose(weighted, true, atol=0.15)
    assert (plain - true).abs().max() > 1.0  # without weights the class mix of each domain is wrong


def test_shared_and_separate_real_passes_give_the_same_class_loss_distribution(data) -> None:
    from stages.condense import _build

    ds, labels = data
    out = {}
    for share in (True, False):
        cfg = build(CondenseConfig, TINY, {"share_real": share, "dsa": False, "batch_real": 1000}).resolved()
        method, objective, images, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
        g = torch.Generator().manual_seed(0)
        method.new_round(0, objective.roles, g)
        out[share] = objective.losses(images, g)
    # with all real images drawn and no augmentation, both paths see identical batches
    assert torch.allclose(out[True][0], out[False][0], rtol=1e-4)
    assert torch.allclose(out[True][1], out[False][1], rtol=1e-4)


def test_dm_chddl_loss_decreases_on_the_demo_data(workspace) -> None:
    art, _ = ingest("builtin:demo", build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    lab, _ = label_run(ds, build(LabelConfig), workspace)
    cfg = build(
        CondenseConfig, {"ipc": 1, "iterations": 30, "batch_real": 32, "compile": "off", "checkpoint_every": 100}
    )
    out, _ = run(ds, load_labels(lab, ds), cfg, workspace)
    history = out.tensor("loss_history")
    assert history[-5:, 0].mean() < 0.8 * history[:5, 0].mean()
    assert history[-5:, 1].mean() < history[:5, 1].mean()


def test_real_pool_draws_per_group_without_replacement() -> None:
    pool = RealPool(torch.zeros(10, 3, 2, 2), torch.zeros(10, dtype=torch.long))
    groups = torch.tensor([0, 1, 0, 1, 0, 1, 0, 2, 2, 0])
    idx, gid = pool.draw(groups, 3, 2, torch.Generator().manual_seed(0))
    assert torch.bincount(gid, minlength=3).tolist() == [2, 2, 2]
    assert torch.equal(groups[idx], gid) and len(set(idx.tolist())) == 6


@pytest.mark.parametrize(
    "overrides,message",
    [
        ({"ipc": 100}, "exceeds the smallest class"),
        ({"ipc": 0}, "--ipc must be at least 1"),
        ({"base": "kip"}, "unknown base method 'kip'"),
        ({"arch": "resnet9000"}, "unknown architecture 'resnet9000'; valid: alexnet, convnet"),
        ({"lam": float("inf")}, "finite"),
        ({"lr_img": float("nan")}, "finite"),
        ({"init": "zeros"}, "--init must be noise or real"),
        ({"mask_optimizer": "rmsprop"}, "--mask-optimizer must be one of sgd, adam, got rmsprop"),
        ({"mask_lr": 0.0}, "--mask-lr must be positive, got 0.0"),
        ({"theta_prime": "both"}, "--theta-prime must be own or shared, got both"),
        ({"base": "dm", "theta_prime": "own"}, "--theta-prime own is not available for dm"),
    ],
)
def test_bad_settings_fail_cleanly_without_partial_artifact(data, workspace, overrides, message) -> None:
    with pytest.raises(ChddlError, match=message):
        _run(data, workspace, **overrides)
    assert not list(workspace.artifacts_dir.glob("condensed-*"))


def test_labels_from_another_dataset_are_refused(data, tmp_path, workspace) -> None:
    ds, _ = data
    other, _ = ingest(
        str(make_npz(tmp_path / "o.npz", n=60, size=16, domains=3)), build(DatasetConfig, {"size": 8}), workspace
    )
    other_ds = load_dataset(other)
    lab, _ = label_run(other_ds, build(LabelConfig), workspace)
    with pytest.raises(ChddlError, match="another dataset"):
        load_labels(lab, ds)


def test_leave_one_domain_out_never_uses_a_target_domain_image(data) -> None:
    from stages.condense import _build

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"exclude_domain": "d1"}).resolved()
    _, objective, _, _, used = _build(ds, labels, cfg, torch.device("cpu"))
    assert len(used) > 0 and bool((ds.domains[used] != 1).all())
    assert len(objective.pool.images) == len(used)
    g = torch.Generator().manual_seed(0)
    idx, _ = objective.pool.draw(objective.class_of_pool, 3, 1000, g)
    assert bool((ds.domains[used[idx]] != 1).all())


def test_single_domain_selection_uses_only_that_domain(data) -> None:
    from stages.condense import _build

    ds, labels = data
    cfg = build(CondenseConfig, TINY, {"domains": ("d0",), "domain_aware": False}).resolved()
    *_, used = _build(ds, labels, cfg, torch.device("cpu"))
    assert bool((ds.domains[used] == 0).all()) and len(used) == int((ds.domains[ds.train_indices] == 0).sum())


def test_unknown_domain_in_a_selection_is_refused(data, workspace) -> None:
    with pytest.raises(ChddlError, match="unknown domain 'sketch'; this dataset has: d0, d1"):
        _run(data, workspace, exclude_domain="sketch")


def test_shared_theta_prime_makes_dc_match_domains_on_the_class_network(data) -> None:
    from stages.condense import _build

    ds, labels = data
    for theta_prime, same in (("own", False), ("shared", True)):
        cfg = build(CondenseConfig, TINY, {"base": "dc", "theta_prime": theta_prime}).resolved()
        method, objective, _, _, _ = _build(ds, labels, cfg, torch.device("cpu"))
        method.new_round(0, objective.roles, torch.Generator().manual_seed(0))
        assert (method.nets["domain"] is method.nets["class"]) == same
        assert sorted(method.optimizers) == (["class"] if same else ["class", "domain"])


def test_theta_prime_defaults_per_base_and_keeps_earlier_cache_keys() -> None:
    resolved = {b: build(CondenseConfig, {"base": b}).resolved() for b in ("dm", "dc", "mtt")}
    assert {b: c.theta_prime for b, c in resolved.items()} == {"dm": "shared", "dc": "own", "mtt": "own"}
    assert all("theta_prime" not in c.key_fields() for c in resolved.values())
    assert (
        build(CondenseConfig, {"base": "dc", "theta_prime": "shared"}).resolved().key_fields()["theta_prime"]
        == "shared"
    )


def test_timed_checkpoints_cost_at_most_about_one_percent(data, workspace, monkeypatch) -> None:
    from stages.methods import checkpoint, loop

    saves, now = [], [0.0]
    monkeypatch.setattr(loop.time, "monotonic", lambda: now[0])
    real_save = checkpoint.save_checkpoint

    def slow_save(*args):  # each checkpoint write takes 2 "seconds"
        now[0] += 2.0
        saves.append(args[2])
        real_save(*args)

    def step(self, g, real=loop.Loop.step):
        now[0] += 30.0  # each iteration takes 30 "seconds"
        return real(self, g)

    monkeypatch.setattr(loop, "save_checkpoint", slow_save)
    monkeypatch.setattr(loop.Loop, "step", step)
    ds, labels = data
    run(
        ds,
        labels,
        build(
            CondenseConfig,
            TINY,
            {"iterations": 30, "checkpoint_every": 1000, "first_checkpoint_minutes": 1.0, "checkpoint_minutes": 1.0},
        ),
        workspace,
    )
    # first after 60 s of work (iteration 2), then every 200 s = 100 x the 2 s write, not every 60 s
    assert saves[0] == 2 and all(b - a >= 200 / 30 - 1 for a, b in zip(saves, saves[1:])) and len(saves) <= 5


@pytest.mark.parametrize("arch", ["resnet18", "vit_tiny"])
def test_dm_condenses_with_the_zoo_architectures(data, workspace, arch) -> None:
    art = _run(data, workspace, base="dm", domain_aware=True, arch=arch, iterations=1)
    assert art.tensor("images").shape == (6, 3, 16, 16)
    assert torch.isfinite(art.tensor("images")).all()


def test_dm_with_an_architecture_without_features_is_refused_before_any_work(data, workspace, monkeypatch) -> None:
    from stages.models import ARCHITECTURES

    monkeypatch.setitem(ARCHITECTURES._entries, "plain", lambda num_classes, **_: torch.nn.LazyLinear(num_classes))
    with pytest.raises(ChddlError, match="--arch plain does not provide; pick one of: alexnet, convnet"):
        _run(data, workspace, base="dm", arch="plain")
    assert not any(p.name.startswith("condensed") for p in (workspace.root / "artifacts").iterdir())
    assert not any((workspace.root / "partial").glob("*"))


class _Recorder:
    """A Progress that keeps the fields of every advance."""

    def __init__(self) -> None:
        self.fields: list[dict] = []

    def task(self, description, total=None, done=0):
        from contextlib import nullcontext

        recorder = self

        class _Task:
            def advance(self, steps=1, **fields):
                recorder.fields.append(fields)

        return nullcontext(_Task())

    def note(self, message) -> None:
        pass


@pytest.mark.parametrize("aware, shown", [(False, {"loss"}), (True, {"loss", "dom"})])
def test_progress_shows_the_domain_loss_only_when_there_is_one(data, workspace, aware, shown) -> None:
    ds, labels = data
    recorder = _Recorder()
    run(ds, labels, build(CondenseConfig, TINY, {"domain_aware": aware}), workspace, progress=recorder)
    assert recorder.fields and all(set(f) == shown for f in recorder.fields if f)


def test_a_checkpoint_killed_between_its_two_renames_still_resumes_from_its_tensors(tmp_path) -> None:
    from stages.methods import checkpoint

    folder = tmp_path / "partial"
    checkpoint.save_checkpoint(folder, "k", 4, {"x": torch.zeros(2)})
    stale = (folder / checkpoint.CKPT_META).read_text()
    checkpoint.save_checkpoint(folder, "k", 6, {"x": torch.ones(2)})
    (folder / checkpoint.CKPT_META).write_text(stale)  # the YAML's rename never happened
    iteration, tensors = checkpoint.load_checkpoint(folder, "k")
    assert iteration == 6 and torch.equal(tensors["x"], torch.ones(2))
    assert checkpoint.load_checkpoint(folder, "other key") is None
