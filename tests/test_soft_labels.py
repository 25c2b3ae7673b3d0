"""Soft labels a condensed set carries (RDED's region labels): used by evaluate unless --hard-labels, and
exported; DD-Ranking exports normalised with DD-Ranking's statistics for the datasets it knows."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from chddl_cli.app import app
from stages import api, export
from stages.condense import CondenseConfig
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.ddranking import CIFAR10_CLASSES, known_dataset
from stages.errors import ChddlError
from stages.evaluate import carried_soft_labels
from stages.teacher import TeacherConfig
from stages.teacher import run as teacher_run
from stages.training import StoredSoftLabels, distillation_loss, train_network
from tests.conftest import make_npz

runner = CliRunner()


class FakeSet:
    """The two tensors ``carried_soft_labels`` looks at."""

    def __init__(self, **tensors: torch.Tensor) -> None:
        self._t = tensors

    def has_tensor(self, name: str) -> bool:
        return name in self._t

    def tensor(self, name: str) -> torch.Tensor:
        return self._t[name]


@pytest.fixture
def rded(tmp_path, workspace):
    """A 3-class 16 px dataset (classes c0-c2, unknown to DD-Ranking), its teacher and an RDED set of it."""
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    teacher, _ = teacher_run(load_dataset(art), build(TeacherConfig, {"epochs": 2, "batch_size": 16}), workspace)
    cond = api.condense(workspace=workspace, base="rded", ipc=2, rded_candidates=8).artifact
    return art, teacher, cond


def test_one_region_gives_its_logits_and_several_the_log_of_their_mean_probabilities() -> None:
    regions = torch.tensor([[[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]]])  # one image, two regions, three classes
    one = carried_soft_labels(FakeSet(region_logits=regions[:, :1]))
    assert torch.equal(one, regions[:, 0])
    p1 = np.exp([1.0, 2.0, 0.0]) / np.exp([1.0, 2.0, 0.0]).sum()
    p2 = np.exp([3.0, 0.0, 0.0]) / np.exp([3.0, 0.0, 0.0]).sum()
    both = carried_soft_labels(FakeSet(region_logits=regions))
    assert np.allclose(both.exp().numpy()[0], (p1 + p2) / 2, atol=1e-6)
    assert carried_soft_labels(FakeSet(images=torch.zeros(1))) is None


def test_stored_soft_labels_are_looked_up_by_the_batchs_rows() -> None:
    stored = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    student, rows = torch.randn(3, 4), torch.tensor([5, 0, 2])
    loss = StoredSoftLabels(stored, 2.0).loss(student, torch.zeros(3, 3, 8, 8), rows)
    assert float(loss) == pytest.approx(float(distillation_loss(student, stored[rows], 2.0)))


def test_training_on_stored_soft_labels_moves_the_student_towards_them() -> None:
    from stages.models import create_model

    g = torch.Generator().manual_seed(0)
    x, target = torch.randn(16, 3, 16, 16, generator=g), torch.randn(16, 3, generator=g) * 3
    net = create_model("convnet", 3, 16, seed=1)
    with torch.no_grad():
        before = float(distillation_loss(net.eval()(x), target, 1.0))
    soft = StoredSoftLabels(target, 1.0)
    train_network(
        net, x, torch.zeros(16, dtype=torch.long), epochs=30, lr=0.01, momentum=0.9, weight_decay=0.0,
        batch_size=8, dsa=None, g=torch.Generator().manual_seed(2), decay=False, soft=soft,
    )  # fmt: skip
    with torch.no_grad():
        after = float(distillation_loss(net.eval()(x), target, 1.0))
    assert after < 0.5 * before


def test_rded_runs_without_chddl_by_default_and_refuses_it_when_asked() -> None:
    assert build(CondenseConfig, {"base": "rded"}).domain_aware is False
    assert build(CondenseConfig, {"base": "dm"}).domain_aware is True
    with pytest.raises(ChddlError, match="CHDDL does not apply to --base rded.*leave out --domain-aware"):
        build(CondenseConfig, {"base": "rded", "domain_aware": True})


def test_an_rded_set_is_evaluated_on_its_own_soft_labels_by_default(rded, workspace) -> None:
    _, _, cond = rded
    res = api.evaluate(workspace=workspace, runs=1, epochs=2)
    art = res.artifact
    assert art.info["labels"] == "set" and art.config["labels"] == "set" and art.info["teacher"] is None
    assert art.name.split("-")[-2] == "setlabels" and art.meta["inputs"]["train"] == cond.name


def test_hard_labels_give_the_key_an_evaluation_without_soft_labels_has(rded, workspace) -> None:
    res = api.evaluate(workspace=workspace, runs=1, epochs=2, hard_labels=True)
    assert res.artifact.info["labels"] == "hard" and "labels" not in res.artifact.config
    assert "temperature" not in res.artifact.config  # the key of hard-label evaluations made before


def test_a_teacher_and_hard_labels_together_are_refused(rded, workspace) -> None:
    _, teacher, _ = rded
    with pytest.raises(ChddlError, match="--soft-labels and --hard-labels exclude each other"):
        api.evaluate(workspace=workspace, soft_labels=str(teacher.path), hard_labels=True, runs=1, epochs=1)


def test_exports_carry_the_sets_soft_labels(rded, workspace, tmp_path) -> None:
    _, _, cond = rded
    expected = cond.tensor("region_logits")[:, 0].float()
    data = np.load(export.run(cond, tmp_path / "npz", "npz") / "condensed.npz")
    assert np.array_equal(data["soft_labels"], expected.numpy())
    out = export.run(cond, tmp_path / "ddr", "ddranking")
    assert torch.equal(torch.load(out / "soft_labels.pt"), expected)
    meta = yaml.safe_load((out / "chddl_export.yaml").read_text())
    assert "soft_labels.pt" in meta["files"] and "soft_labels.pt" in meta["soft_labels"]


def test_the_evaluate_help_lists_hard_labels() -> None:
    result = runner.invoke(app, ["evaluate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0 and "--hard-labels" in result.output


@pytest.mark.parametrize(
    ("names", "size", "source", "known"),
    [
        (list(CIFAR10_CLASSES), 32, "npz", "CIFAR10"),
        (list(CIFAR10_CLASSES), 64, "npz", None),  # DD-Ranking's CIFAR-10 is 32 px
        (sorted(CIFAR10_CLASSES, reverse=True), 32, "npz", None),  # another class order: labels.pt would differ
        ([f"n{i:08d}" for i in range(200)], 64, "folder/tiny-imagenet", "TinyImageNet"),
        ([f"n{i:08d}" for i in range(200)], 64, "npz", None),
        (["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"], 32, "npz", None),  # PACS
    ],
)
def test_which_datasets_ddranking_knows(names, size, source, known) -> None:
    assert known_dataset(names, size, source) == known


def _cifar_named_set(tmp_path, workspace):
    path = make_npz(tmp_path / "c.npz", n=60, size=32, classes=10, split=False, class_names=np.array(CIFAR10_CLASSES))
    art, _ = ingest(str(path), build(DatasetConfig, {"size": 32}), workspace)
    cfg = {"ipc": 1, "iterations": 1, "batch_real": 4, "compile": "off", "domain_aware": False}
    return load_dataset(art), api.condense(workspace=workspace, dataset=art.path, **cfg).artifact


def test_a_cifar10_export_for_ddranking_is_normalised_with_ddrankings_statistics(tmp_path, workspace) -> None:
    ds, cond = _cifar_named_set(tmp_path, workspace)
    out = export.run(cond, tmp_path / "ddr", "ddranking", ds)
    pixels = cond.tensor("images") * cond.tensor("std").view(1, 3, 1, 1) + cond.tensor("mean").view(1, 3, 1, 1)
    mean, std = torch.tensor([0.4914, 0.4822, 0.4465]), torch.tensor([0.2023, 0.1994, 0.2010])
    expected = (pixels - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1)
    assert torch.allclose(torch.load(out / "images.pt"), expected, atol=1e-5)
    assert not torch.allclose(expected, cond.tensor("images"), atol=1e-2)  # the statistics differ here
    meta = yaml.safe_load((out / "chddl_export.yaml").read_text())
    assert meta["ddranking"]["dataset"] == "CIFAR10" and meta["ddranking"]["std"] == [0.2023, 0.1994, 0.2010]


def test_a_dataset_ddranking_does_not_know_keeps_chddls_tensors(rded, tmp_path) -> None:
    _, _, cond = rded
    out = export.run(cond, tmp_path / "ddr", "ddranking")
    assert torch.equal(torch.load(out / "images.pt"), cond.tensor("images").float())
    assert yaml.safe_load((out / "chddl_export.yaml").read_text())["ddranking"]["dataset"] is None


def test_the_set_labels_protocol_is_named_in_the_report_column() -> None:
    from stages.report.inventory import label_protocol

    class Eval:
        info, config = {"labels": "set"}, {"temperature": 4.0}

    assert label_protocol(Eval()) == "the set's soft labels (T 4.0)"
