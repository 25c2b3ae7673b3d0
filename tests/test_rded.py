"""RDED: crops scored by a teacher, the most realistic stitched, region soft labels; no optimisation loop."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torchvision.transforms.v2 import functional as TF

from stages import api
from stages.condense import CondenseConfig
from stages.condense import _build as condense_build
from stages.condense import run as condense_run
from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.ingest import DatasetConfig, ingest
from stages.errors import ChddlError
from stages.methods.loop import iteration_generator
from stages.methods.rded import RDED, cells, crop_boxes, cut, stitch
from stages.teacher import TeacherConfig, load_teacher
from stages.teacher import run as teacher_run
from tests.conftest import make_npz


class BrightnessTeacher(nn.Module):
    """Two classes; class 1's logit is the image's mean, class 0's its negative: the brighter a crop, the
    lower its cross-entropy to class 1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3))
        return torch.stack([-m, m], 1)


@pytest.fixture
def data(tmp_path, workspace):
    art, _ = ingest(str(make_npz(tmp_path / "d.npz", n=60, size=16)), build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    teacher, _ = teacher_run(ds, build(TeacherConfig, {"epochs": 2, "batch_size": 16}), workspace)
    return ds, teacher


def test_crop_boxes_lie_inside_the_image_with_areas_in_the_scale_range() -> None:
    boxes = crop_boxes(2000, 32, 0.25, torch.Generator().manual_seed(0))
    top, left, side = boxes.unbind(1)
    assert (top >= 0).all() and (left >= 0).all() and (top + side <= 32).all() and (left + side <= 32).all()
    assert side.min() == 16 and side.max() == 32  # sqrt(0.25) x 32 .. 32
    assert torch.equal(boxes, crop_boxes(2000, 32, 0.25, torch.Generator().manual_seed(0)))


def test_batched_cuts_equal_torchvisions_resized_crop_box_by_box() -> None:
    g = torch.Generator().manual_seed(1)
    images, boxes = torch.randn(40, 3, 32, 32, generator=g), crop_boxes(40, 32, 0.08, g)
    expected = torch.stack(
        [
            TF.resized_crop(x, int(t), int(le), int(s), int(s), [16, 16], antialias=True)
            for x, (t, le, s) in zip(images, boxes)
        ]
    )
    assert torch.allclose(cut(images, boxes, 16), expected, atol=1e-6)


def test_stitching_puts_patch_k_times_n_plus_i_in_cell_k_of_image_i() -> None:
    n, factor = 3, 2
    patches = torch.arange(n * factor * factor, dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 3, 4, 4)
    out = stitch(patches, 8, factor, n)
    for i in range(n):
        assert out[i, 0, 0, 0] == i and out[i, 0, 0, 4] == n + i  # cells 0 and 1 of the top row
        assert out[i, 0, 4, 0] == 2 * n + i and out[i, 0, 4, 4] == 3 * n + i
    regions = cells(out, factor)  # each cell zero-padded back to the full size, centred
    assert regions.shape == (n, 4, 3, 8, 8) and regions[1, 2, 0, 2:6, 2:6].eq(2 * n + 1).all()
    assert regions[1, 2, 0, 0].eq(0).all()


@pytest.mark.parametrize("factor", [1, 2])
def test_the_brightest_images_crops_are_kept_and_stitched_in_rank_order(factor) -> None:
    values = torch.tensor([0.1, 0.9, -0.5, 0.7, 0.3, 0.5, -0.2, 0.8])  # one constant image each
    real = values.view(-1, 1, 1, 1).expand(-1, 3, 8, 8).clone()
    rded = RDED(BrightnessTeacher(), candidates=8, crops=3, factor=factor, min_scale=0.3)
    ipc = 2
    out = rded.synthesize_class(real, 1, ipc, torch.Generator().manual_seed(0))
    ranked = values.sort(descending=True).values  # every crop of a constant image is that constant
    for i in range(ipc):
        for k, cell in enumerate(cells(out[i : i + 1], factor)[0]):
            side = 8 // factor
            start = (8 - side) // 2
            assert torch.allclose(cell[:, start : start + side, start : start + side], ranked[k * ipc + i])


def test_rded_writes_a_set_with_region_logits_and_no_loop(data, workspace) -> None:
    ds, teacher = data
    cfg = build(
        CondenseConfig, {"base": "rded", "ipc": 2, "domain_aware": False, "rded_candidates": 10, "rded_factor": 2}
    )
    art, hit = condense_run(ds, None, cfg, workspace, teacher=teacher)
    assert not hit and art.tensor("images").shape == (2 * ds.num_classes, 3, 16, 16)
    assert art.tensor("region_logits").shape == (2 * ds.num_classes, 4, ds.num_classes)
    assert art.tensor("loss_history").shape == (0, 2) and art.metrics["iterations_run"] == 0
    assert art.meta["inputs"]["teacher"] == teacher.name
    assert "iterations" not in CondenseConfig.key_fields(cfg.resolved())  # the loop's settings leave its key
    again, _ = condense_run(ds, None, cfg, workspace, teacher=teacher, force=True)
    assert torch.equal(again.tensor("images"), art.tensor("images"))  # seeded per class


def test_a_classs_images_do_not_depend_on_the_other_classes(data, workspace) -> None:
    ds, teacher = data
    cfg = build(CondenseConfig, {"base": "rded", "ipc": 1, "domain_aware": False, "rded_candidates": 8})
    whole, _ = condense_run(ds, None, cfg, workspace, teacher=teacher)
    rded = RDED(load_teacher(teacher, ds), 8, 5, 1, 0.08)  # the defaults
    _, objective, *_ = condense_build(ds, None, cfg.resolved(), torch.device("cpu"), teacher=rded.teacher)
    made = rded.synthesize(objective.pool, [1], 1, lambda c: iteration_generator(0, c))  # class 1 alone
    assert torch.equal(made.images[1], whole.tensor("images")[1]) and made.images[0].eq(0).all()


def test_chddl_with_rded_is_refused_saying_why(data, workspace) -> None:
    with pytest.raises(ChddlError, match="CHDDL does not apply to --base rded.*leave out --domain-aware"):
        build(CondenseConfig, {"base": "rded", "domain_aware": True})


def test_rded_without_a_teacher_names_the_command_that_makes_one(data, workspace) -> None:
    ds, _ = data
    with pytest.raises(ChddlError, match="--base rded needs a teacher.*chddl train-teacher"):
        condense_run(ds, None, build(CondenseConfig, {"base": "rded", "domain_aware": False}), workspace)


def test_an_rded_set_evaluates_with_the_teachers_soft_labels(data, workspace) -> None:
    _, teacher = data
    cond = api.condense(workspace=workspace, base="rded", ipc=1, domain_aware=False, rded_candidates=8)
    res = api.evaluate(workspace=workspace, soft_labels=str(teacher.path), runs=1, epochs=2)
    assert res.artifact.meta["inputs"]["train"] == cond.artifact.name
    (arch,) = res.artifact.config["archs"]
    assert res.artifact.info["labels"] == "soft" and 0 <= res.artifact.metrics[arch]["mean"] <= 100
