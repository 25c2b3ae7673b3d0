"""MTT: expert trajectories, resume, torchrun, one iteration, guards, bad input."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import safetensors
import torch

from stages.artifacts import artifact_key
from stages.condense import CondenseConfig, _build, _expert_store
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods.trajectories import ExpertStore
from stages.pretrain_experts import ExpertsConfig, expert_file
from stages.pretrain_experts import run as experts_run
from tests.conftest import make_npz

TINY_EXPERTS = {"num_experts": 2, "epochs": 3, "batch_size": 32}
TINY_MTT = {
    "base": "mtt",
    "ipc": 1,
    "iterations": 2,
    "syn_steps": 2,
    "expert_epochs": 1,
    "max_start_epoch": 2,
    "lr_img": 100.0,
    "batch_real": 8,
    "log_every": 1,
}


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=8)), build(DatasetConfig, {"size": 8}), workspace)
    ds = load_dataset(art)
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    return ds, labels


@pytest.fixture
def experts(data, workspace):
    ds, labels = data
    return experts_run(ds, labels, build(ExpertsConfig, TINY_EXPERTS), workspace)[0]


def test_expert_files_hold_every_epoch_under_flat_keys(experts) -> None:
    assert set(experts.info["sets"]) == {"class", "domain0", "domain1"}
    names = list(experts.info["parameters"])
    with safetensors.safe_open(str(experts.path / expert_file("class", 1)), framework="pt") as fh:
        keys = set(fh.keys())
        assert keys == {f"{e:03d}/{n}" for e in range(4) for n in names}
        assert not torch.equal(fh.get_tensor(f"000/{names[0]}"), fh.get_tensor(f"003/{names[0]}"))


def test_trajectory_round_trip_through_the_store(experts) -> None:
    store = ExpertStore(experts)
    start, end = store.pair("domain1", 0, 0, 3, torch.device("cpu"))
    params = store.unflatten(start)
    assert list(params) == store.names and start.shape == end.shape
    with safetensors.safe_open(str(experts.path / expert_file("domain1", 0)), framework="pt") as fh:
        assert torch.equal(params[store.names[0]], fh.get_tensor(f"000/{store.names[0]}"))


def test_half_precision_storage_halves_the_files(data, workspace, experts) -> None:
    ds, labels = data
    half, _ = experts_run(
        ds, labels, build(ExpertsConfig, TINY_EXPERTS, {"dtype": "bfloat16", "domain_experts": False}), workspace
    )
    full = experts.info["files"][expert_file("class", 0)]["bytes"]
    assert half.info["files"][expert_file("class", 0)]["bytes"] < 0.55 * full


def test_running_again_trains_nothing(data, workspace, experts) -> None:
    ds, labels = data
    again, hit = experts_run(ds, labels, build(ExpertsConfig, TINY_EXPERTS), workspace)
    assert hit and again.path == experts.path


def test_resume_after_a_kill_trains_only_the_missing_experts(data, tmp_path, monkeypatch) -> None:
    from stages import pretrain_experts as pe
    from stages.artifacts import Workspace

    ds, labels = data
    ws = Workspace(tmp_path / "resume")
    cfg = build(ExpertsConfig, TINY_EXPERTS, {"domain_experts": False})
    real_train, trained = pe._train_one, []

    def killed_after_first(*args, **kwargs):
        if trained:
            raise KeyboardInterrupt
        trained.append(args[5].name)
        return real_train(*args, **kwargs)

    monkeypatch.setattr(pe, "_train_one", killed_after_first)
    with pytest.raises(KeyboardInterrupt):
        experts_run(ds, None, cfg, ws)
    calls = []
    monkeypatch.setattr(pe, "_train_one", lambda *a, **k: calls.append(a[5].name) or real_train(*a, **k))
    art, _ = experts_run(ds, None, cfg, ws)
    assert trained == [expert_file("class", 0)] and calls == [expert_file("class", 1)]
    assert set(art.info["files"]) == {expert_file("class", 0), expert_file("class", 1)}
    with safetensors.safe_open(str(art.path / expert_file("class", 0)), framework="pt") as fh:
        first_s = float(fh.metadata()["train_s"])
    assert first_s > 0 and art.meta["cost"]["earlier_wall_s"] == pytest.approx(first_s, abs=0.01)
    assert art.meta["cost"]["wall_s_total"] == pytest.approx(art.meta["cost"]["wall_s"] + first_s, abs=0.01)


@pytest.mark.slow
def test_torchrun_with_two_processes_gives_the_same_experts(data, workspace, experts, tmp_path) -> None:
    ds, _ = data
    ws2 = tmp_path / "ws_torchrun"
    env = os.environ | {"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "chddl_cli", "-q", "-w", str(ws2), "label", str(ds.artifact.path), "-D", "2"],
        check=True,
        env=env,
        capture_output=True,
    )
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "chddl_cli",
            "-q",
            "-w",
            str(ws2),
            "pretrain-experts",
            "--num-experts",
            "2",
            "--epochs",
            "3",
            "--batch-size",
            "32",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    art_dir = next((ws2 / "artifacts").glob("experts-*"))
    from stages.artifacts import read_artifact

    other = read_artifact(art_dir, "experts")
    assert other.info["world_size"] == 2 and other.key == experts.key
    assert set(other.info["files"]) == set(experts.info["files"])
    for name in experts.info["files"]:
        with (
            safetensors.safe_open(str(experts.path / name), framework="pt") as a,
            safetensors.safe_open(str(art_dir / name), framework="pt") as b,
        ):
            assert all(torch.allclose(a.get_tensor(k), b.get_tensor(k), atol=1e-5) for k in a.keys())


@pytest.mark.parametrize("aware", [False, True])
def test_one_mtt_iteration_gives_finite_loss_and_gradients(data, experts, aware) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY_MTT, {"domain_aware": aware, "mask_init_mode": "normal"}).resolved()
    base, objective, images, _, _ = _build(
        ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
    )
    g = torch.Generator().manual_seed(0)
    l_cls, l_dom = objective.losses(images, g)
    total = l_cls if l_dom is None else l_cls + 0.01 * l_dom
    total.backward()
    assert torch.isfinite(total)
    assert images.grad is not None and torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert base.syn_lr.grad is not None and torch.isfinite(base.syn_lr.grad)
    if aware:
        z = objective.extra_parameters()[0]
        assert z.grad is not None and z.grad.abs().sum() > 0


def test_mtt_condense_records_the_learned_lr_for_evaluation(data, workspace, experts) -> None:
    ds, labels = data
    art, _ = condense_run(ds, labels, build(CondenseConfig, TINY_MTT), workspace, experts=experts)
    assert art.tensor("images").shape == (3, 3, 8, 8)
    assert art.info["eval_lr"] > 0 and art.info["experts"] == experts.name


def test_learned_lr_is_kept_positive(data, workspace, experts, monkeypatch) -> None:
    from stages.methods import mtt

    ds, labels = data
    real_unroll = mtt.MTT.unroll

    def pushes_lr_down(self, *args):  # d loss / d syn_lr = +1e6: one SGD step takes the lr far below zero
        return real_unroll(self, *args) + 1e6 * self.syn_lr

    monkeypatch.setattr(mtt.MTT, "unroll", pushes_lr_down)
    cfg = build(CondenseConfig, TINY_MTT, {"iterations": 2})
    art, _ = condense_run(ds, labels, cfg, workspace, experts=experts)
    assert art.info["eval_lr"] == pytest.approx(cfg.min_syn_lr)
    assert art.metrics["syn_lr_clamped"] == 2


def test_nan_triggers_rollback_with_lower_learning_rates(data, workspace, experts, monkeypatch) -> None:
    from stages.methods import mtt

    ds, labels = data
    real_unroll, calls = mtt.MTT.unroll, {"n": 0}

    def flaky(self, *args):
        calls["n"] += 1
        out = real_unroll(self, *args)
        return out * float("nan") if calls["n"] == 5 else out  # one bad iteration

    monkeypatch.setattr(mtt.MTT, "unroll", flaky)
    art, _ = condense_run(ds, labels, build(CondenseConfig, TINY_MTT, {"iterations": 4}), workspace, experts=experts)
    rollbacks = art.metrics["rollbacks"]
    assert len(rollbacks) == 1 and rollbacks[0]["lr"]["images"] == pytest.approx(50.0)
    assert torch.isfinite(art.tensor("images")).all()


def test_nan_every_time_fails_after_the_retries(data, workspace, experts, monkeypatch) -> None:
    from stages.methods import mtt

    ds, labels = data
    monkeypatch.setattr(mtt.MTT, "unroll", lambda self, *a: torch.tensor(float("nan"), requires_grad=True))
    with pytest.raises(ChddlError, match="non-finite loss"):
        condense_run(ds, labels, build(CondenseConfig, TINY_MTT, {"nan_retries": 2}), workspace, experts=experts)


def test_mtt_without_experts_names_the_command(data, workspace) -> None:
    ds, labels = data
    with pytest.raises(ChddlError, match="chddl pretrain-experts"):
        condense_run(ds, labels, build(CondenseConfig, TINY_MTT), workspace)


def test_experts_from_another_dataset_are_refused(data, workspace, experts, tmp_path) -> None:
    other = load_dataset(
        ingest(
            str(make_npz(tmp_path / "o.npz", n=60, size=8, domains=3)), build(DatasetConfig, {"size": 8}), workspace
        )[0]
    )
    other_labels = load_labels(label_run(other, build(LabelConfig, {"num_domains": 2}), workspace)[0], other)
    with pytest.raises(ChddlError, match="another dataset"):
        condense_run(other, other_labels, build(CondenseConfig, TINY_MTT), workspace, experts=experts)


def test_experts_of_another_architecture_are_refused(data, experts) -> None:
    ds, labels = data
    with pytest.raises(ChddlError, match="architecture convnet, but condensation uses alexnet"):
        ExpertStore(experts).check_compatible("alexnet", ds.size, ds.num_classes, ds.mean, ds.std, 0)


def test_experts_with_another_normalisation_are_refused(data, experts) -> None:
    ds, _ = data
    with pytest.raises(ChddlError, match="normalisation"):
        ExpertStore(experts).check_compatible("convnet", ds.size, ds.num_classes, (0.5, 0.5, 0.5), ds.std, 0)


def test_start_epoch_beyond_the_stored_epochs_is_refused(data, workspace, experts) -> None:
    ds, labels = data
    with pytest.raises(ChddlError, match=r"reaches epoch 4, beyond the 3 stored in .*--max-start-epoch at most 3"):
        condense_run(ds, labels, build(CondenseConfig, TINY_MTT, {"max_start_epoch": 4}), workspace, experts=experts)


def test_the_last_stored_epoch_can_be_a_target(data, workspace, experts) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY_MTT, {"max_start_epoch": 3, "expert_epochs": 1, "iterations": 1})
    art, _ = condense_run(ds, labels, cfg, workspace, experts=experts)
    assert torch.isfinite(art.tensor("images")).all()


def test_expert_epochs_longer_than_the_experts_say_which_setting_fits(data, workspace, experts) -> None:
    ds, labels = data
    with pytest.raises(ChddlError, match="--expert-epochs at most 3 with --max-start-epoch 1, or train longer"):
        condense_run(ds, labels, build(CondenseConfig, TINY_MTT, {"expert_epochs": 5}), workspace, experts=experts)


def test_truncated_expert_file_is_detected(experts) -> None:
    path = experts.path / expert_file("class", 0)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ChddlError, match="missing or truncated"):
        ExpertStore(experts)


def test_corrupt_expert_file_is_detected(experts) -> None:
    path = experts.path / expert_file("class", 0)
    data = bytearray(path.read_bytes())
    data[-10] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(ChddlError, match="corrupt"):
        ExpertStore(experts).pair("class", 0, 0, 1, torch.device("cpu"))


def test_checkpointed_student_gives_the_same_gradients(data, experts) -> None:
    ds, labels = data
    grads = []
    for ck in (False, True):
        cfg = build(
            CondenseConfig, TINY_MTT, {"domain_aware": False, "checkpoint_student": ck, "syn_steps": 3}
        ).resolved()
        base, objective, images, _, _ = _build(
            ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
        )
        objective.class_loss(images, torch.Generator().manual_seed(0)).backward()
        grads.append((images.grad.clone(), base.syn_lr.grad.clone()))
    assert torch.allclose(grads[0][0], grads[1][0], rtol=1e-4, atol=1e-7)
    assert torch.allclose(grads[0][1], grads[1][1], rtol=1e-4)


def test_compiled_student_gives_the_eager_gradients(data, experts, monkeypatch) -> None:
    # traced without code generation (inductor's compile time stays out of the suite; tests/test_student_step.py)
    from stages.methods import mtt, student

    monkeypatch.setattr(
        mtt, "CompiledStudentStep", lambda *a, **k: student.CompiledStudentStep(*a, backend="aot_eager", **k)
    )
    ds, labels = data
    grads = []
    # eager; compiled, each step made again in its backward pass; compiled, each step's residuals kept
    for compiled, checkpointed in (("off", True), ("on", True), ("on", False)):
        cfg = build(
            CondenseConfig,
            TINY_MTT,
            {"domain_aware": False, "syn_steps": 3, "compile": compiled, "checkpoint_student": checkpointed},
        ).resolved()
        base, objective, images, _, _ = _build(
            ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
        )
        step = base.compiled_step
        assert (step is not None) == (compiled == "on") and (step is None or step.keep == (not checkpointed))
        objective.class_loss(images, torch.Generator().manual_seed(0)).backward()
        grads.append((images.grad.clone(), base.syn_lr.grad.clone()))
    (images_eager, lr_eager), *compiled_grads = grads
    assert images_eager.abs().max() > 0
    for images_compiled, lr_compiled in compiled_grads:
        assert (images_compiled - images_eager).abs().max() <= 1e-4 * images_eager.abs().max()
        assert torch.allclose(lr_compiled, lr_eager, rtol=1e-4)


def test_summed_step_back_propagates_one_graph_at_a_time_with_the_same_gradient(data, workspace, experts) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY_MTT, {"share_real": False})
    base, objective, images, _, _ = _build(
        ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
    )
    assert objective.separable
    grads = []
    for separate in (True, False):
        g = torch.Generator().manual_seed(3)
        for p in (images, base.syn_lr, objective.masks.z):
            p.grad = None
        if separate:
            objective.class_loss(images, g).backward()
            (0.01 * objective.domain_loss(images, g)).backward()
        else:
            l_cls, l_dom = objective.losses(images, g)
            (l_cls + 0.01 * l_dom).backward()
        grads.append([p.grad.clone() for p in (images, base.syn_lr, objective.masks.z)])
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_shared_theta_prime_needs_no_domain_experts(data, workspace) -> None:
    ds, labels = data
    class_only = experts_run(ds, labels, build(ExpertsConfig, TINY_EXPERTS, {"domain_experts": False}), workspace)[0]
    with pytest.raises(ChddlError, match="no domain experts"):
        condense_run(ds, labels, build(CondenseConfig, TINY_MTT), workspace, experts=class_only)
    art, _ = condense_run(
        ds, labels, build(CondenseConfig, TINY_MTT, {"theta_prime": "shared"}), workspace, experts=class_only
    )
    assert art.config["theta_prime"] == "shared" and torch.isfinite(art.tensor("images")).all()


def test_shared_theta_prime_starts_the_domain_student_from_a_class_expert(data, experts, monkeypatch) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY_MTT, {"theta_prime": "shared"}).resolved()
    base, objective, images, _, _ = _build(
        ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
    )
    used = []
    real_pair = base.store.pair
    monkeypatch.setattr(base.store, "pair", lambda expert_set, *a: used.append(expert_set) or real_pair(expert_set, *a))
    objective.losses(images, torch.Generator().manual_seed(0))
    assert used == ["class", "class"]


def test_algorithm1_steps_each_pseudo_domain_from_its_own_experts(data, experts, monkeypatch) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, TINY_MTT, {"schedule": "algorithm1"}).resolved()
    base, objective, images, _, _ = _build(
        ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
    )
    used = []
    real_pair = base.store.pair
    monkeypatch.setattr(base.store, "pair", lambda expert_set, *a: used.append(expert_set) or real_pair(expert_set, *a))
    g = torch.Generator().manual_seed(0)
    assert [rows for rows, _ in objective.class_losses(images, g)] == [None]  # MTT's loss does not split by class
    for d in (1, 0):
        assert torch.isfinite(objective.domain_loss_of(d, images, g))
    assert used == ["class", "domain1", "domain0"]


def test_mtt_condenses_with_algorithm1(data, workspace, experts) -> None:
    ds, labels = data
    art, _ = condense_run(
        ds, labels, build(CondenseConfig, TINY_MTT, {"schedule": "algorithm1"}), workspace, experts=experts
    )
    assert torch.isfinite(art.tensor("images")).all() and art.info["eval_lr"] > 0


@pytest.mark.parametrize("checkpointed", [False, True])
def test_mtt_differentiates_through_a_vision_transformer_student(data, workspace, checkpointed) -> None:
    ds, labels = data
    vit = build(
        ExpertsConfig, TINY_EXPERTS, {"arch": "vit_tiny", "num_experts": 1, "epochs": 2, "domain_experts": False}
    )
    store = experts_run(ds, labels, vit, workspace)[0]
    cfg = build(
        CondenseConfig,
        TINY_MTT,
        {"arch": "vit_tiny", "iterations": 1, "max_start_epoch": 1, "domain_aware": False},
        {"checkpoint_student": checkpointed},
    )
    art, _ = condense_run(ds, labels, cfg, workspace, experts=store)
    assert torch.isfinite(art.tensor("images")).all()


@pytest.mark.parametrize(
    "given, theta_prime, expected",
    [(None, "own", 3), (5, "own", 5), (None, "shared", 5)],  # D = 2: ceil(5 / 2) = 3 from a domain expert
)
def test_the_domain_student_takes_ceil_syn_steps_over_d_steps_unless_told(
    data, experts, monkeypatch, given, theta_prime, expected
):
    ds, labels = data
    cfg = build(
        CondenseConfig, TINY_MTT, {"syn_steps": 5, "domain_syn_steps": given, "theta_prime": theta_prime}
    ).resolved()
    base, objective, images, _, _ = _build(
        ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg)
    )
    lengths = []
    real_unroll = base.unroll

    def unroll(syn, labels, theta0, target, g, steps=None):
        lengths.append(steps or base.syn_steps)  # unroll takes `steps or syn_steps` student steps
        return real_unroll(syn, labels, theta0, target, g, steps)

    monkeypatch.setattr(base, "unroll", unroll)
    objective.losses(images, torch.Generator().manual_seed(0))
    assert lengths == [5, expected]  # the class student, then the domain student
    assert base.run_stats()["domain_syn_steps"] == expected


def test_the_default_domain_student_has_a_cache_key_of_its_own() -> None:
    # sets made when the default was syn_steps (the key then held null) are not served for the new default
    def key(given: int | None) -> str:
        cfg = build(CondenseConfig, {"base": "mtt", "syn_steps": 8, "domain_syn_steps": given}).resolved()
        return artifact_key("condensed", cfg.key_fields(), {}, 1)

    fields = build(CondenseConfig, {"base": "mtt", "syn_steps": 8}).resolved().key_fields()
    assert fields["domain_syn_steps"] == "ceil(syn_steps/D)"
    assert len({key(None), key(8), key(2)}) == 3
