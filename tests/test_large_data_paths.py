"""Paths that keep memory bounded on large datasets compute exactly what the whole-array paths did."""

from __future__ import annotations

import torch

from stages.artifacts import tensor_fingerprint
from stages.config import build
from stages.data.dataset import NormalizedRows, Rows, load_dataset
from stages.data.ingest import DatasetConfig, channel_statistics, ingest


def _images(n: int = 300, size: int = 8) -> torch.Tensor:
    return torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))


def test_channel_statistics_equal_the_float64_mean_and_std_of_the_selected_rows() -> None:
    images, rows = _images(), torch.arange(1, 300, 3)
    pixels = images[rows].to(torch.float64) / 255.0
    mean, std = channel_statistics(images, rows)
    assert torch.allclose(mean, pixels.mean(dim=(0, 2, 3)), rtol=0, atol=1e-12)
    assert torch.allclose(std, pixels.std(dim=(0, 2, 3)), rtol=0, atol=1e-12)


def test_rows_gather_only_what_is_indexed() -> None:
    images, rows = _images(), torch.tensor([5, 2, 9, 0])
    view = Rows(images, rows)
    assert len(view) == 4 and view.shape == (4, 3, 8, 8)
    assert torch.equal(view[1:3], images[torch.tensor([2, 9])])
    assert torch.equal(view[torch.tensor([3, 0])], images[torch.tensor([0, 5])])


def test_a_uint8_real_pool_yields_exactly_the_normalised_images(workspace) -> None:
    art, _ = ingest("builtin:demo", build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    train = ds.train_indices
    pool = ds.real_pool_images(train, torch.device("cpu"))
    assert isinstance(pool, NormalizedRows) and pool.images is ds.images  # no copy of the training split
    pick = torch.tensor([7, 0, 3, len(train) - 1])
    got = pool[pick]
    assert torch.equal(got, ds.normalized(train[pick]))
    assert got.is_contiguous(memory_format=torch.channels_last)


def test_the_fingerprint_is_unchanged_by_hashing_in_place() -> None:
    import hashlib

    t = _images(4)
    h = hashlib.blake2b(digest_size=16)
    h.update(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.numpy().tobytes())
    assert tensor_fingerprint(t) == h.hexdigest()


def test_tensor_files_written_in_place_read_back_through_safetensors(tmp_path) -> None:
    from safetensors.torch import load_file

    from stages.artifacts import write_safetensors

    tensors = {
        "images": _images(5),
        "mean": torch.randn(3, dtype=torch.float64),
        "weights": torch.randn(4, 6).t().contiguous(),
        "half": torch.randn(2, 3).bfloat16(),
        "mask": torch.tensor([True, False, True]),
        "labels": torch.arange(7),
        "scalar": torch.tensor(2.5),
        "none": torch.zeros(0, 4, dtype=torch.int32),
    }
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = load_file(str(tmp_path / "t.safetensors"))
    assert sorted(back) == sorted(tensors)
    for name, t in tensors.items():
        assert back[name].dtype == t.dtype and back[name].shape == t.shape and torch.equal(back[name], t), name
