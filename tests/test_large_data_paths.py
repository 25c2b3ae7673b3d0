"""Paths that keep memory bounded on large datasets compute exactly what the whole-array paths did."""

from __future__ import annotations

import pytest
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


def test_a_view_written_a_few_rows_at_a_time_reads_back_as_the_whole_tensor(tmp_path, monkeypatch) -> None:
    from safetensors.torch import load_file

    import stages.artifacts
    from stages.artifacts import write_safetensors

    monkeypatch.setattr(stages.artifacts, "WRITE_BLOCK_BYTES", 100)  # one row of 96 bytes per block
    alpha = torch.rand(5, 2, 1, 2, 2)
    tensors = {"alpha": alpha.expand(-1, -1, 3, -1, -1), "columns": torch.randn(4, 6).t(), "scalar": torch.tensor(1.5)}
    write_safetensors(tmp_path / "t.safetensors", tensors)
    back = load_file(str(tmp_path / "t.safetensors"))
    assert all(torch.equal(back[k], t) for k, t in tensors.items())


def test_mapped_tensors_read_back_as_the_file_holds_them(workspace) -> None:
    from stages.artifacts import read_artifact

    tensors = {
        "images": torch.randint(0, 256, (5, 3, 4, 4), dtype=torch.uint8),
        "f32": torch.randn(3, 7),
        "f64": torch.randn(2, dtype=torch.float64),
        "i64": torch.arange(9),
        "flag": torch.tensor([True, False, True]),
        "scalar": torch.tensor(2.5),
        "half": torch.randn(4).half(),
    }
    art = workspace.write(stage="demo", name="m-abc", key="abc", config={}, inputs={}, tensors=tensors, cost={})
    mapped = read_artifact(art.path, "demo").tensors(mapped=("images", "f32"))
    assert mapped.keys() == tensors.keys()
    for name, value in tensors.items():
        assert mapped[name].dtype == value.dtype and torch.equal(mapped[name], value), name


def test_a_datasets_images_stay_in_their_file_until_rows_are_read(workspace) -> None:
    art, _ = ingest("builtin:demo", build(DatasetConfig, {"size": 16}), workspace)
    ds = load_dataset(art)
    file_bytes = (art.path / "tensors.safetensors").stat().st_size
    assert ds.images.untyped_storage().nbytes() == file_bytes  # a view of the mapped file, not a copy
    assert torch.equal(ds.images, _images_in_file(art))


def _images_in_file(art) -> torch.Tensor:
    from safetensors.torch import load_file

    return load_file(str(art.path / "tensors.safetensors"))["images"]


@pytest.mark.parametrize("zca", [False, True])
def test_a_rank_pool_yields_its_classes_rows_and_refuses_the_others(workspace, zca) -> None:
    art, _ = ingest("builtin:demo", build(DatasetConfig, {"size": 16, "zca": zca}), workspace)
    ds = load_dataset(art)
    train = ds.train_indices
    own = torch.isin(ds.labels[train], torch.tensor([1, 4]))
    whole, part = ds.real_pool_images(train, torch.device("cpu")), ds.real_pool_images(train, torch.device("cpu"), own)
    mine, other = torch.nonzero(own).flatten(), torch.nonzero(~own).flatten()
    pick = mine[torch.tensor([3, 0, len(mine) - 1])]
    assert torch.equal(part[pick], whole[pick])
    with pytest.raises(IndexError):
        part[other[:1]]
