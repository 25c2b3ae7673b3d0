"""Evaluation: accuracy bookkeeping, baselines, protocol selection, errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from stages.artifacts import Workspace
from stages.condense import CondenseConfig
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.evaluate import EvaluateConfig, baseline, from_condensed, run, summarise
from stages.training import accuracy, group_accuracy
from tests.conftest import make_npz

FAST = {"runs": 2, "epochs": 2}


@pytest.fixture
def dataset(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    return load_dataset(art)


def test_accuracy_on_a_hand_made_case() -> None:
    pred, target = torch.tensor([0, 1, 2, 2, 1]), torch.tensor([0, 1, 1, 2, 0])
    assert accuracy(pred, target) == pytest.approx(60.0)


def test_per_domain_accuracies_weight_each_domain_by_its_own_images() -> None:
    pred = torch.tensor([0, 0, 0, 1, 1, 1, 1, 1])
    target = torch.tensor([0, 0, 1, 1, 1, 1, 1, 0])
    domains = torch.tensor([0, 0, 0, 1, 1, 1, 1, 2])
    per = group_accuracy(pred, target, domains, 4)
    assert per[:3].tolist() == pytest.approx([200 / 3, 100.0, 0.0])
    assert torch.isnan(per[3])
    assert accuracy(pred, target) == pytest.approx(75.0)  # 6 of 8, not the mean of the domains


def test_summary_uses_population_std() -> None:
    assert summarise(np.array([1.0, 3.0])) == {"mean": 2.0, "std": 1.0}


def test_random_baseline_picks_ipc_real_images_per_class_from_train(dataset) -> None:
    ts = baseline(dataset, "random", 3, seed=0)
    assert torch.bincount(ts.labels).tolist() == [3, 3, 3]
    again = baseline(dataset, "random", 3, seed=0)
    assert torch.equal(ts.images, again.images)
    assert not torch.equal(ts.images, baseline(dataset, "random", 3, seed=1).images)


def test_whole_baseline_is_the_training_split(dataset) -> None:
    assert len(baseline(dataset, "whole", 0, 0).labels) == len(dataset.train_indices)


def test_evaluation_reports_overall_and_per_domain(dataset, workspace) -> None:
    art, hit = run(baseline(dataset, "random", 2, 0), dataset, build(EvaluateConfig, FAST), workspace)
    m = art.metrics["convnet"]
    assert not hit and len(m["runs"]) == 2 and 0 <= m["mean"] <= 100
    assert set(m["per_domain"]) == {"d0", "d1"}
    assert art.tensor("accuracy").shape == (1, 2)
    assert art.info["ipc"] == 2 and art.info["train_kind"] == "random"
    assert run(baseline(dataset, "random", 2, 0), dataset, build(EvaluateConfig, FAST), workspace)[1]


def test_interrupted_then_resumed_evaluation_equals_an_uninterrupted_one(dataset, workspace, tmp_path) -> None:
    cfg = build(EvaluateConfig, {"runs": 3, "epochs": 2, "archs": ("convnet", "alexnet")})
    full, _ = run(baseline(dataset, "random", 2, 0), dataset, cfg, Workspace(tmp_path / "full"))
    with pytest.raises(KeyboardInterrupt):
        run(baseline(dataset, "random", 2, 0), dataset, cfg, workspace, stop_after=4)
    resumed, hit = run(baseline(dataset, "random", 2, 0), dataset, cfg, workspace)
    assert not hit and resumed.info["resumed_runs"] == 4 and full.info["resumed_runs"] == 0
    assert torch.equal(full.tensor("accuracy"), resumed.tensor("accuracy"))
    assert torch.equal(
        full.tensor("per_domain_accuracy").nan_to_num(-1), resumed.tensor("per_domain_accuracy").nan_to_num(-1)
    )
    assert not workspace.partial_dir(resumed.name).exists()


def test_a_forced_evaluation_ignores_the_runs_of_an_interrupted_one(dataset, workspace) -> None:
    cfg = build(EvaluateConfig, FAST)
    with pytest.raises(KeyboardInterrupt):
        run(baseline(dataset, "random", 2, 0), dataset, cfg, workspace, stop_after=1)
    art, _ = run(baseline(dataset, "random", 2, 0), dataset, cfg, workspace, force=True)
    assert art.info["resumed_runs"] == 0


def test_target_domain_scores_only_that_domain(dataset, workspace) -> None:
    art, _ = run(
        baseline(dataset, "random", 2, 0), dataset, build(EvaluateConfig, FAST, {"target_domain": "d1"}), workspace
    )
    assert art.info["num_test"] == int((dataset.domains[dataset.test_indices] == 1).sum())


def test_unknown_target_domain_is_refused(dataset, workspace) -> None:
    with pytest.raises(ChddlError, match="unknown target domain 'sketch'; this dataset has: d0, d1"):
        run(
            baseline(dataset, "random", 2, 0),
            dataset,
            build(EvaluateConfig, FAST, {"target_domain": "sketch"}),
            workspace,
        )


def test_a_set_missing_test_classes_is_refused(dataset, workspace) -> None:
    ts = baseline(dataset, "random", 2, 0)
    keep = ts.labels != 2
    ts.images, ts.labels = ts.images[keep], ts.labels[keep]
    with pytest.raises(ChddlError, match="classes the training set lacks: c2"):
        run(ts, dataset, build(EvaluateConfig, FAST), workspace)


@pytest.mark.parametrize(
    "values,message",
    [({"runs": 0}, "--runs must be at least 1"), ({"archs": ("convnet", "lenet")}, "unknown architecture 'lenet'")],
)
def test_bad_settings_are_refused(values, message) -> None:
    with pytest.raises(ChddlError, match=message):
        build(EvaluateConfig, values)


def test_evaluating_something_that_is_not_a_condensed_set_is_refused(dataset) -> None:
    with pytest.raises(ChddlError, match="not a condensed set"):
        from_condensed(dataset.artifact, dataset)


def test_condensed_set_round_trip_through_evaluation(dataset, workspace) -> None:
    cond, _ = condense_run(
        dataset,
        None,
        build(CondenseConfig, {"domain_aware": False, "ipc": 2, "iterations": 2, "batch_real": 8, "compile": "off"}),
        workspace,
    )
    ts = from_condensed(cond, dataset)
    art, _ = run(ts, dataset, build(EvaluateConfig, FAST), workspace)
    assert art.info["train_kind"] == "condensed" and art.info["num_train"] == 6 and art.info["ipc"] == 2


@pytest.mark.slow
def test_torchrun_evaluation_equals_a_single_process(dataset, workspace, tmp_path) -> None:
    import os
    import subprocess
    import sys

    from stages.artifacts import read_artifact

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as each torchrun rank below: the same CPU kernels, so the same floating-point results
    try:
        single, _ = run(
            baseline(dataset, "random", 2, 0), dataset, build(EvaluateConfig, {"runs": 3, "epochs": 2}), workspace
        )
    finally:
        torch.set_num_threads(threads)
    ws2 = str(tmp_path / "ws2")
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "chddl_cli", "-q", "-w", ws2, "label", str(dataset.artifact.path)],
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
            ws2,
            "evaluate",
            "--baseline",
            "random",
            "--ipc",
            "2",
            "--runs",
            "3",
            "--epochs",
            "2",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    multi = read_artifact(next((tmp_path / "ws2" / "artifacts").glob("eval-*")), "evaluation")
    assert multi.key == single.key
    assert torch.allclose(multi.tensor("accuracy"), single.tensor("accuracy"), atol=1e-6)


def test_networks_trained_together_match_networks_trained_one_by_one() -> None:
    from stages.data.augment import DSA
    from stages.models.registry import create_model
    from stages.training import train_network, train_networks

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(12, 3, 16, 16, generator=g), torch.arange(12) % 3
    opts = dict(
        epochs=4, lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=8, dsa=DSA("color_crop_cutout_flip_scale_rotate")
    )
    alone = [create_model("convnet", 3, 16, seed=s) for s in (1, 2)]
    for net, s in zip(alone, (1, 2)):
        train_network(net, x, y, g=torch.Generator().manual_seed(s), **opts)
    together = [create_model("convnet", 3, 16, seed=s) for s in (1, 2)]
    train_networks(together, x, y, gens=[torch.Generator().manual_seed(s) for s in (1, 2)], **opts)
    for a, b in zip(alone, together):
        for pa, pb in zip(a.parameters(), b.parameters()):
            assert torch.allclose(pa, pb, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(next(together[0].parameters()), next(together[1].parameters()))


def test_parallel_runs_give_the_same_accuracies_and_the_same_artifact_key(dataset, workspace) -> None:
    one, _ = run(baseline(dataset, "random", 2, 0), dataset, build(EvaluateConfig, {"runs": 3, "epochs": 3}), workspace)
    many, _ = run(
        baseline(dataset, "random", 2, 0),
        dataset,
        build(EvaluateConfig, {"runs": 3, "epochs": 3, "parallel": 2}),
        workspace,
        force=True,
    )
    assert many.name == one.name
    assert np.allclose(many.tensor("accuracy").numpy(), one.tensor("accuracy").numpy())
