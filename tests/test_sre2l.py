"""SRe2L: the teacher (squeeze), recover and its CHDDL form, and soft-label evaluation."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from stages import api
from stages.artifacts import Workspace
from stages.condense import CondenseConfig
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.evaluate import EvaluateConfig, baseline
from stages.evaluate import run as evaluate_run
from stages.label import LabelConfig, load_labels
from stages.label import run as label_run
from stages.methods.base import MatchBatch, RealPool
from stages.methods.sre2l import SRe2L, batch_norms, group_statistics, real_statistics
from stages.models import create_model
from stages.teacher import TeacherConfig, load_teacher
from stages.teacher import run as teacher_run
from stages.training import SoftLabels, distillation_loss, train_network
from tests.conftest import make_npz

TINY_TEACHER = {"epochs": 3, "batch_size": 16}


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    lab, _ = label_run(ds, build(LabelConfig, {"num_domains": 3}), workspace)
    return ds, load_labels(lab, ds)


@pytest.fixture
def teacher(data, workspace):
    ds, _ = data
    art, _ = teacher_run(ds, build(TeacherConfig, TINY_TEACHER), workspace)
    return art


def _bn_net(seed: int = 0) -> torch.nn.Module:
    return create_model("convnet_bn", 3, 16, seed=seed).eval().requires_grad_(False)


def _images(n: int = 12, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 16, 16, generator=torch.Generator().manual_seed(seed))


def _batch(x: torch.Tensor, groups: torch.Tensor, num_groups: int, labels: torch.Tensor | None = None) -> MatchBatch:
    labels = torch.zeros(len(x), dtype=torch.long) if labels is None else labels
    return MatchBatch(torch.arange(0), torch.arange(0), x, labels, groups, num_groups)


def _pool() -> RealPool:
    return RealPool(torch.zeros(1, 3, 16, 16), torch.zeros(1, dtype=torch.long))


# -- the batch-norm statistics -------------------------------------------------
def test_the_domain_statistic_loss_is_zero_for_the_real_batch_the_statistics_came_from() -> None:
    net, x = _bn_net(), _images()
    groups = torch.tensor([0, 1, 2] * 4)
    stats = real_statistics(net, x, groups, 3)
    method = SRe2L(net, r_bn=1.0, first_bn_multiplier=10.0, jitter=0, flip=False, domain_stats=stats)
    same = method.loss("domain", _batch(x, groups, 3), _pool(), torch.Generator())
    other = method.loss("domain", _batch(x * 1.5 + 0.2, groups, 3), _pool(), torch.Generator())
    assert float(same) == pytest.approx(0.0, abs=1e-4)
    assert float(other) > 1.0


def test_the_class_statistic_term_is_zero_when_the_running_statistics_are_the_batchs() -> None:
    net, x = _bn_net(), _images()
    labels = torch.tensor([0, 1, 2] * 4)
    for i, layer in enumerate(batch_norms(net)):  # layer by layer: each changes only the inputs after it
        mean, var = real_statistics(net, x, torch.zeros(len(x), dtype=torch.long), 1)[i]
        layer.running_mean.copy_(mean[0])
        layer.running_var.copy_(var[0])
    method = SRe2L(net, r_bn=1.0, first_bn_multiplier=10.0, jitter=0, flip=False)
    loss = method.loss("class", _batch(x, labels, 3, labels), _pool(), torch.Generator())
    assert float(loss) == pytest.approx(float(F.cross_entropy(net(x), labels)), abs=1e-4)


def test_per_domain_statistics_are_each_domains_own_mean_and_population_variance() -> None:
    net, x = _bn_net(), _images(10)
    groups = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2, 0])
    whole = real_statistics(net, x, groups, 3)
    chunked = real_statistics(net, x, groups, 3, chunk=3)
    first = batch_norms(net)[0]
    seen = []
    handle = first.register_forward_hook(lambda m, a, o: seen.append(a[0]))
    net(x[groups == 1])
    handle.remove()
    h = seen[0].transpose(0, 1).flatten(1)
    assert torch.allclose(whole[0][0][1], h.mean(dim=1), atol=1e-5)
    assert torch.allclose(whole[0][1][1], h.var(dim=1, unbiased=False), atol=1e-4)
    for (m1, v1), (m2, v2) in zip(whole, chunked):
        assert torch.allclose(m1, m2, atol=1e-5) and torch.allclose(v1, v2, atol=1e-4)


def test_group_statistics_of_one_group_are_the_batch_statistics() -> None:
    x = _images(6).mul(2).add(1)
    mean, var, counts = group_statistics(x, torch.zeros(6, dtype=torch.long), 1)
    assert counts.tolist() == [6.0]
    assert torch.allclose(mean[0], x.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(var[0], x.transpose(0, 1).flatten(1).var(dim=1, unbiased=False), atol=1e-4)


# -- soft labels ---------------------------------------------------------------
def test_the_distillation_loss_is_the_temperature_scaled_kl() -> None:
    s, t = torch.randn(5, 4), torch.randn(5, 4)
    p = F.softmax(t / 3, dim=1)
    manual = (p * (p.log() - F.log_softmax(s / 3, dim=1))).sum(dim=1).mean() * 9
    assert float(distillation_loss(s, t, 3.0)) == pytest.approx(float(manual), rel=1e-5)
    assert float(distillation_loss(t, t, 3.0)) == pytest.approx(0.0, abs=1e-6)


def test_a_soft_label_training_step_moves_the_student_towards_the_teacher() -> None:
    teacher, student, x = _bn_net(1), create_model("convnet", 3, 16, seed=2), _images(16)
    soft = SoftLabels(teacher, 4.0)
    with torch.no_grad():
        before = float(distillation_loss(student(x), teacher(x), 4.0))
    train_network(
        student,
        x,
        torch.zeros(16, dtype=torch.long),  # hard labels all 0: ignored under soft labels
        epochs=5,
        lr=0.01,
        momentum=0.9,
        weight_decay=0.0,
        batch_size=16,
        dsa=None,
        g=torch.Generator().manual_seed(0),
        decay=False,
        soft=soft,
    )
    student.eval()
    with torch.no_grad():
        after = float(distillation_loss(student(x), teacher(x), 4.0))
    assert after < 0.8 * before
    assert not teacher.training  # the teacher labels in evaluation mode


# -- the teacher stage ---------------------------------------------------------
def test_an_interrupted_teacher_resumes_to_the_uninterrupted_result(data, tmp_path) -> None:
    ds, _ = data
    cfg = build(TeacherConfig, TINY_TEACHER)
    straight, _ = teacher_run(ds, cfg, Workspace(tmp_path / "a"))
    ws = Workspace(tmp_path / "b")
    with pytest.raises(KeyboardInterrupt):
        teacher_run(ds, cfg, ws, stop_after=1)
    resumed, hit = teacher_run(ds, cfg, ws)
    assert not hit and resumed.info["resumed_from_epoch"] == 1
    a, b = straight.tensors(), resumed.tensors()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert 0 <= resumed.metrics["test_acc"] <= 100 and resumed.info["batch_norm_layers"] == 3


def test_a_teacher_without_batch_norm_is_refused(data, workspace) -> None:
    ds, _ = data
    with pytest.raises(ChddlError, match="no batch norm.*convnet_bn"):
        teacher_run(ds, build(TeacherConfig, TINY_TEACHER | {"arch": "convnet"}), workspace)


def test_a_teacher_of_another_dataset_is_refused(teacher, tmp_path, workspace) -> None:
    other, _ = ingest(str(make_npz(tmp_path / "o.npz", n=48, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    with pytest.raises(ChddlError, match="another dataset.*train-teacher"):
        load_teacher(teacher, load_dataset(other))


def test_soft_labels_from_an_artifact_that_is_not_a_teacher_are_refused(data, teacher, workspace) -> None:
    cond = api.condense(workspace=workspace, base="dm", ipc=1, iterations=1, batch_real=4, domain_aware=False)
    with pytest.raises(ChddlError, match="needs a teacher artifact.*'condensed'.*train-teacher"):
        api.evaluate(workspace=workspace, soft_labels=str(cond.artifact.path), runs=1, epochs=1)


# -- recover -------------------------------------------------------------------
@pytest.mark.parametrize("aware", [False, True])
def test_sre2l_condenses_with_and_without_chddl_inside_the_pixel_range(data, teacher, workspace, aware) -> None:
    ds, labels = data
    cfg = build(CondenseConfig, {"base": "sre2l", "ipc": 2, "iterations": 6, "domain_aware": aware, "log_every": 1})
    art, _ = condense_run(ds, labels if aware else None, cfg, workspace, teacher=teacher)
    images = art.tensor("images")
    mean, std = torch.tensor(ds.mean).view(1, 3, 1, 1), torch.tensor(ds.std).view(1, 3, 1, 1)
    pixels = images * std + mean
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert art.meta["inputs"]["teacher"] == teacher.name and art.info["arch"] == "convnet_bn"
    history = art.tensor("loss_history")
    assert history[-1, 0] < history[0, 0]  # cross-entropy + statistics fall
    if aware:
        assert art.info["bn_statistics"] is not None and history[-1, 1] > 0
        assert workspace.find(art.info["bn_statistics"]).meta["inputs"]["teacher"] == teacher.name


def test_the_cosine_schedule_ends_near_zero_learning_rate(data, teacher, workspace) -> None:
    ds, _ = data
    cfg = build(CondenseConfig, {"base": "sre2l", "ipc": 1, "iterations": 4, "domain_aware": False})
    art, _ = condense_run(ds, None, cfg, workspace, teacher=teacher)
    # the last iteration ran at lr * (1 + cos(3 pi / 4)) / 2
    assert art.metrics["final_lr"]["images"] == pytest.approx(0.25 * (1 + torch.cos(torch.tensor(0.75 * torch.pi))) / 2)


def test_sre2l_without_a_teacher_names_the_command_that_makes_one(data, workspace) -> None:
    ds, _ = data
    with pytest.raises(ChddlError, match="needs a teacher.*chddl train-teacher"):
        condense_run(ds, None, build(CondenseConfig, {"base": "sre2l", "domain_aware": False}), workspace)


def test_soft_and_hard_label_evaluations_are_different_artifacts(data, teacher, workspace) -> None:
    ds, _ = data
    train = baseline(ds, "random", 2, 0)
    cfg = build(EvaluateConfig, {"runs": 1, "epochs": 2})
    hard, _ = evaluate_run(train, ds, cfg, workspace)
    soft, _ = evaluate_run(train, ds, cfg, workspace, teacher=teacher)
    assert hard.key != soft.key and "temperature" not in hard.config and soft.config["temperature"] == 4.0
    assert (hard.info["labels"], soft.info["labels"], soft.info["teacher"]) == ("hard", "soft", teacher.name)


def test_sre2l_refuses_a_teacher_without_batch_norm(data, workspace) -> None:
    ds, _ = data
    net = create_model("convnet", ds.num_classes, ds.size)
    fake = workspace.write(
        stage="teacher",
        name="teacher-convnet-fake",
        key="fake",
        config={},
        inputs={"dataset": ds.artifact.name},
        tensors={f"model/{k}": v for k, v in net.state_dict().items()},
        fingerprint=ds.fingerprint,
        info={"arch": "convnet", "num_classes": ds.num_classes, "image_size": ds.size},
    )
    cfg = build(CondenseConfig, {"base": "sre2l", "domain_aware": False, "iterations": 1})
    with pytest.raises(ChddlError, match="no batch norm.*convnet_bn"):
        condense_run(ds, None, cfg, workspace, teacher=fake)


def test_sre2l_masks_default_to_adam_and_the_other_bases_to_sgd() -> None:
    sre2l = build(CondenseConfig, {"base": "sre2l"}).resolved()
    dm = build(CondenseConfig, {"base": "dm"}).resolved()
    assert (sre2l.mask_optimizer, sre2l.mask_lr) == ("adam", 0.01)
    assert (dm.mask_optimizer, dm.mask_lr) == ("sgd", 1.0)
    explicit = build(CondenseConfig, {"base": "sre2l", "mask_optimizer": "adam"}).resolved()
    assert explicit.key_fields() == sre2l.key_fields()


def test_a_teacher_of_a_dataset_without_test_images_records_no_test_accuracy(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", n=30, size=16, split=False)
    np.savez(path, **dict(np.load(path)), split=np.zeros(30, dtype=np.int64))  # every image in the training split
    art, _ = ingest(str(path), build(DatasetConfig, {"size": 16}), workspace)
    teacher, _ = teacher_run(load_dataset(art), build(TeacherConfig, {"epochs": 1, "batch_size": 16}), workspace)
    assert teacher.metrics["test_acc"] is None and "per_domain" not in teacher.metrics
    assert teacher.metrics["final_train_loss"] > 0
