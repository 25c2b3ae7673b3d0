"""DATM: MTT with a moving matching window, learned soft labels and correctly classified initial images."""

from __future__ import annotations

import pytest
import safetensors
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from chddl_cli.app import app
from stages import api
from stages.condense import CondenseConfig, _build, _expert_store
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.models import create_model
from stages.pretrain_experts import ExpertsConfig, expert_file
from stages.pretrain_experts import run as experts_run
from tests.conftest import make_npz

runner = CliRunner()
TINY_DATM = {
    "base": "datm",
    "ipc": 2,
    "iterations": 3,
    "syn_steps": 2,
    "expert_epochs": 1,
    "max_start_epoch": 3,
    "lr_img": 100.0,
    "batch_real": 8,
    "log_every": 1,
    "domain_aware": False,
}


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=90, size=8)), build(DatasetConfig, {"size": 8}), workspace)
    ds = load_dataset(art)
    labels = load_labels(label_run(ds, build(LabelConfig, {"num_domains": 2}), workspace)[0], ds)
    experts = experts_run(
        ds, labels, build(ExpertsConfig, {"num_experts": 2, "epochs": 4, "batch_size": 32}), workspace
    )
    return ds, labels, experts[0]


def _built(data, **settings):
    ds, labels, experts = data
    cfg = build(CondenseConfig, TINY_DATM, settings).resolved()
    return _build(ds, labels, cfg, torch.device("cpu"), _expert_store(experts, ds, labels, cfg))


def _final_expert(experts, ds, k: int) -> torch.nn.Module:
    net = create_model("convnet", ds.num_classes, ds.size)
    with safetensors.safe_open(str(experts.path / expert_file("class", k)), framework="pt") as fh:
        final = {n: fh.get_tensor(f"{experts.info['epochs']:03d}/{n}").float() for n in experts.info["parameters"]}
    net.load_state_dict(final, strict=False)
    return net.eval()


def test_the_window_grows_from_current_to_max_start_epoch(data) -> None:
    base, *_ = _built(data, current_max_start_epoch=1, expansion_end_epoch=4, min_start_epoch=0)
    assert [base.window(i) for i in (0, 1, 2, 4, 9)] == [(0, 1), (0, 1), (0, 2), (0, 3), (0, 3)]
    fixed, *_ = _built(data, min_start_epoch=1)
    assert fixed.window(0) == fixed.window(100) == (1, 3)


def test_start_epochs_stay_inside_the_window(data) -> None:
    base, *_ = _built(data, current_max_start_epoch=2, expansion_end_epoch=1000, min_start_epoch=1)
    base.new_round(0, ("class",), torch.Generator())
    g = torch.Generator().manual_seed(0)
    assert {base.start_epoch(g) for _ in range(50)} == {1}


def test_initial_images_are_real_images_the_first_expert_classifies_correctly(data) -> None:
    ds, _, experts = data
    base, _, images, syn_labels, train = _built(data)
    net = _final_expert(experts, ds, 0)
    with torch.no_grad():
        right = net(images.detach()).argmax(dim=1) == syn_labels
    assert bool(right.all()) or base.init_fallbacks["images"] == int((~right).sum())
    real = ds.normalized(train, torch.device("cpu"))
    for x in images.detach():  # each one is a real training image
        assert bool(((real - x).abs().flatten(1).amax(dim=1) < 1e-5).any())


def test_initial_soft_labels_average_the_logits_of_the_experts_that_are_right(data) -> None:
    ds, _, experts = data
    base, _, images, syn_labels, _ = _built(data)
    with torch.no_grad():
        logits = torch.stack([_final_expert(experts, ds, k)(images.detach()) for k in range(2)])
    expected = []
    for i, c in enumerate(syn_labels.tolist()):
        right = [k for k in range(2) if int(logits[k, i].argmax()) == c] or [0, 1]
        expected.append(torch.stack([logits[k, i] for k in right]).mean(dim=0))
    assert torch.allclose(base.label_logits.detach(), torch.stack(expected), atol=1e-5)


def test_the_student_trains_on_the_soft_labels(data) -> None:
    base, _, images, syn_labels, _ = _built(data)
    with torch.no_grad():
        base.label_logits.copy_(torch.randn_like(base.label_logits))
    theta, _ = base.store.pair("class", 0, 0, 1, torch.device("cpu"))
    theta = theta.clone().requires_grad_(True)
    x = images.detach()[:3]
    targets = torch.softmax(base.label_logits, dim=1)[:3]
    after = base._student_step(theta, x, targets, base.syn_lr)
    out = torch.func.functional_call(base.net, base.store.unflatten(theta), (x,))
    manual = -(targets * F.log_softmax(out, dim=1)).sum(dim=1).mean()  # DATM's SoftCrossEntropy
    grad = torch.autograd.grad(manual, theta, retain_graph=True)[0]
    assert torch.allclose(after, theta - base.syn_lr * grad, atol=1e-6)
    (label_grad,) = torch.autograd.grad(after.sum(), base.label_logits)
    assert label_grad[:3].abs().sum() > 0 and label_grad[3:].abs().sum() == 0


def test_the_compiled_student_gives_the_eager_gradients_of_images_and_soft_labels(data, monkeypatch) -> None:
    # traced without code generation, as in tests/test_student_step.py
    from stages.methods import mtt, student

    monkeypatch.setattr(
        mtt, "CompiledStudentStep", lambda *a, **k: student.CompiledStudentStep(*a, backend="aot_eager", **k)
    )
    grads = []
    # eager; compiled and recomputed; compiled with each step's residuals kept (--no-checkpoint-student)
    for compiled, checkpointed in (("off", True), ("on", True), ("on", False)):
        base, objective, images, _, _ = _built(data, compile=compiled, checkpoint_student=checkpointed)
        assert base.compiled_step is None or base.compiled_step.keep == (not checkpointed)
        objective.class_loss(images, torch.Generator().manual_seed(0)).backward()
        grads.append((images.grad.clone(), base.label_logits.grad.clone()))
    (images_eager, labels_eager), *compiled_grads = grads
    assert images_eager.abs().max() > 0 and labels_eager.abs().max() > 0
    for images_compiled, labels_compiled in compiled_grads:
        assert (images_compiled - images_eager).abs().max() <= 1e-4 * images_eager.abs().max()
        assert (labels_compiled - labels_eager).abs().max() <= 1e-4 * labels_eager.abs().max()


def test_a_set_stores_learned_soft_labels_and_evaluate_trains_on_them(data, workspace) -> None:
    ds, labels, experts = data
    art, _ = condense_run(ds, labels, build(CondenseConfig, TINY_DATM), workspace, experts=experts)
    soft = art.tensor("soft_labels")
    assert soft.shape == (len(art.tensor("images")), ds.num_classes) and bool(torch.isfinite(soft).all())
    assert art.info["soft_label_temperature"] == 1.0 and art.info["eval_lr"] > 0
    res = api.evaluate(str(art.path), workspace=workspace, runs=1, epochs=2)
    assert res.artifact.info["labels"] == "set" and res.artifact.config["temperature"] == 1.0


def test_labels_move_and_updates_above_the_threshold_are_skipped(data, workspace) -> None:
    ds, labels, experts = data
    moved, _ = condense_run(
        ds, labels, build(CondenseConfig, TINY_DATM, {"threshold": 100.0}), workspace, experts=experts
    )
    frozen, _ = condense_run(
        ds, labels, build(CondenseConfig, TINY_DATM, {"threshold": 1e-9}), workspace, experts=experts
    )
    start, *_ = _built(data)
    assert frozen.metrics["updates_skipped"] == 3 and "updates_skipped" not in moved.metrics
    assert torch.equal(frozen.tensor("soft_labels"), start.label_logits.detach())
    assert not torch.equal(moved.tensor("soft_labels"), start.label_logits.detach())


def test_resume_equals_an_uninterrupted_run(data, workspace) -> None:
    ds, labels, experts = data
    cfg = build(CondenseConfig, TINY_DATM, {"checkpoint_every": 1})
    with pytest.raises(KeyboardInterrupt):
        condense_run(ds, labels, cfg, workspace, experts=experts, stop_after=1)
    resumed, _ = condense_run(ds, labels, cfg, workspace, experts=experts)
    whole, _ = condense_run(ds, labels, cfg, workspace, experts=experts, force=True)
    assert resumed.metrics["resumed_from"] == 1
    for name in ("images", "soft_labels"):
        assert torch.equal(resumed.tensor(name), whole.tensor(name))


def test_datm_with_chddl_trains_the_views_on_their_images_soft_labels(data, workspace) -> None:
    ds, labels, experts = data
    art, _ = condense_run(
        ds, labels, build(CondenseConfig, TINY_DATM, {"domain_aware": True}), workspace, experts=experts
    )
    assert art.info["domain_aware"] and bool(torch.isfinite(art.tensor("images")).all())
    base, objective, images, *_ = _built(data, domain_aware=True)
    views, view_labels, _ = objective._flat_views(images)
    batch = type("B", (), {"syn": views})()
    targets = base.targets(batch)
    probs = torch.softmax(base.label_logits, dim=1)
    assert torch.equal(targets[1], probs[0]) and torch.equal(targets[2], probs[1])  # D = 2 views per image


def test_datm_without_experts_is_refused_in_one_line(tmp_path, workspace) -> None:
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=8)), build(DatasetConfig, {"size": 8}), workspace)
    with pytest.raises(ChddlError, match="--base datm needs expert trajectories.*chddl pretrain-experts"):
        condense_run(load_dataset(art), None, build(CondenseConfig, TINY_DATM), workspace)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"current_max_start_epoch": 5}, "--current-max-start-epoch 5 must lie in"),
        ({"min_start_epoch": 3}, "--min-start-epoch 3 must lie in"),
        ({"threshold": 0.0}, "--threshold must be positive"),
    ],
)
def test_a_window_outside_the_range_is_refused(settings, message) -> None:
    with pytest.raises(ChddlError, match=message):
        build(CondenseConfig, TINY_DATM, settings)


def test_a_window_beyond_the_experts_epochs_is_refused(data, workspace) -> None:
    ds, labels, experts = data
    cfg = build(CondenseConfig, TINY_DATM, {"max_start_epoch": 5})
    with pytest.raises(ChddlError, match="beyond the 4 stored"):
        condense_run(ds, labels, cfg, workspace, experts=experts)


def test_condense_help_lists_datm_and_rded() -> None:
    result = runner.invoke(app, ["condense", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "datm" in result.output and "rded" in result.output
