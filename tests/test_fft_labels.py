"""FFT pseudo-domain scores, Mean-Sort, the labelers and the agreement metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stages.domain.agreement import agreement, ari, nmi, purity
from stages.domain.features import crop_size, fft_scores
from stages.domain.kmeans import kmeans
from stages.domain.labelers import LABELERS, LabelerInput, mean_sort
from stages.errors import ChddlError


def numpy_fft_score(img_hwc_uint8: np.ndarray, beta: float) -> float:
    """Direct transcription of the paper's eq. (2) with numpy."""
    x = img_hwc_uint8.astype(np.float64) / 255.0
    H, W, _ = x.shape
    h, w = max(1, math.floor(beta * H + 0.5)), max(1, math.floor(beta * W + 0.5))
    values = []
    for c in range(3):
        amp = np.fft.fftshift(np.abs(np.fft.fft2(x[:, :, c])))
        top, left = H // 2 - h // 2, W // 2 - w // 2
        values.append(amp[top : top + h, left : left + w])
    return float(np.mean(values))


@pytest.mark.parametrize("beta", [0.05, 0.1, 0.25, 0.5, 1.0])
@pytest.mark.parametrize("size", [16, 32, 33])
def test_fft_scores_equal_numpy_reference(beta: float, size: int) -> None:
    rng = np.random.default_rng(size)
    images = rng.integers(0, 256, (7, size, size, 3), dtype=np.uint8)
    ours = fft_scores(torch.from_numpy(images).permute(0, 3, 1, 2), beta, chunk=3)
    ref = np.array([numpy_fft_score(im, beta) for im in images])
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5)


def test_crop_is_at_least_one_pixel() -> None:
    assert crop_size(32, 32, 0.001) == (1, 1)
    assert crop_size(32, 32, 0.1) == (3, 3)
    assert crop_size(64, 64, 0.1) == (6, 6)


def test_mean_sort_cuts_equal_slices_in_score_order() -> None:
    scores = torch.tensor([5.0, 1.0, 4.0, 2.0, 3.0, 0.0, 7.0, 6.0])
    labels = mean_sort(scores, 4)
    assert labels.tolist() == [2, 0, 2, 1, 1, 0, 3, 3]
    assert torch.bincount(labels).tolist() == [2, 2, 2, 2]


def test_mean_sort_slice_sizes_differ_by_at_most_one() -> None:
    labels = mean_sort(torch.randn(1003, generator=torch.Generator().manual_seed(0)).double(), 4)
    counts = torch.bincount(labels, minlength=4)
    assert int(counts.max() - counts.min()) <= 1 and int(counts.sum()) == 1003


def test_mean_sort_breaks_ties_by_index_deterministically() -> None:
    labels = mean_sort(torch.zeros(8, dtype=torch.float64), 2)
    assert labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]


def _input(name: str, n: int = 60, d: int = 3) -> LabelerInput:
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (n, 3, 16, 16), generator=g, dtype=torch.uint8)
    return LabelerInput(
        images=images,
        mean=(0.5,) * 3,
        std=(0.25,) * 3,
        num_domains=d,
        beta=0.25,
        seed=0,
        true_domains=torch.arange(n) % d,
        kmeans_restarts=2,
    )


@pytest.mark.parametrize("name", LABELERS.names())
def test_each_labeler_returns_d_labels_in_range(name: str) -> None:
    out = LABELERS.get(name)(_input(name))
    assert out.labels.shape == (60,)
    assert out.labels.dtype == torch.int64
    assert int(out.labels.min()) >= 0 and int(out.labels.max()) <= 2


@pytest.mark.parametrize("name", ["fft", "fft-kmeans", "logvar-kmeans", "random"])
def test_labelers_are_deterministic(name: str) -> None:
    a = LABELERS.get(name)(_input(name)).labels
    b = LABELERS.get(name)(_input(name)).labels
    assert torch.equal(a, b)


def test_oracle_without_true_domains_is_refused() -> None:
    inp = _input("oracle")
    inp.true_domains = None
    with pytest.raises(ChddlError, match="true domain"):
        LABELERS.get("oracle")(inp)


def test_unknown_labeler_lists_valid_names() -> None:
    with pytest.raises(ChddlError, match="valid: fft, fft-kmeans"):
        LABELERS.get("nope")


def test_fft_labels_separate_a_dark_and_a_bright_domain() -> None:
    dark = torch.full((20, 3, 8, 8), 20, dtype=torch.uint8)
    bright = torch.full((20, 3, 8, 8), 230, dtype=torch.uint8)
    images = torch.cat([bright, dark])
    inp = LabelerInput(images=images, mean=(0.5,) * 3, std=(0.2,) * 3, num_domains=2, beta=0.1, seed=0)
    assert LABELERS.get("fft")(inp).labels.tolist() == [1] * 20 + [0] * 20


def test_kmeans_recovers_well_separated_clusters() -> None:
    g = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(30, 2, generator=g) for c in centers])
    labels, _ = kmeans(x, 3, seed=0)
    truth = np.repeat(np.arange(3), 30)
    assert nmi(labels.numpy(), truth) == pytest.approx(1.0)


def test_agreement_scores_on_hand_made_cases() -> None:
    truth = np.array([0, 0, 1, 1, 2, 2])
    assert agreement(np.array([2, 2, 0, 0, 1, 1]), truth) == {"nmi": 1.0, "ari": 1.0, "purity": 1.0}
    pred = np.array([0, 0, 0, 1, 1, 1])
    # rows: {0:2, 1:1} and {1:1, 2:2} -> majority 2 + 2 of 6
    assert purity(pred, truth) == pytest.approx(4 / 6)
    # by hand: pair counts index 2, expected 6*3/15 = 1.2, max (6+3)/2 -> ARI 0.8/3.3
    assert ari(pred, truth) == pytest.approx(0.8 / 3.3)
    # MI = (2/3) ln 2; entropies ln 2 and ln 3, arithmetic mean normalisation
    assert nmi(pred, truth) == pytest.approx((2 / 3) * math.log(2) / ((math.log(2) + math.log(3)) / 2))
    assert nmi(np.zeros(6), truth) == pytest.approx(0.0)


@pytest.mark.parametrize("name", LABELERS.names())
def test_every_setting_that_changes_a_labelers_output_is_in_its_cache_key(name: str) -> None:
    import dataclasses

    from stages.label import LabelConfig

    changed = {"beta": 0.5, "kmeans_restarts": 1, "logvar_layers": 1, "seed": 7}
    base = LABELERS.get(name)(_input(name)).labels
    key = LabelConfig(labeler=name, num_domains=3).key_fields()
    for setting, value in changed.items():
        other = LABELERS.get(name)(dataclasses.replace(_input(name), **{setting: value})).labels
        if not torch.equal(base, other):
            assert setting in key, (name, setting)
