"""Dataset ingestion: every supported layout and every bad input."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from stages.config import build
from stages.data.dataset import load_dataset
from stages.data.demo import CLASSES, DOMAINS, generate
from stages.data.ingest import DatasetConfig, ingest, stratified_split
from stages.errors import ChddlError
from tests.conftest import make_npz, make_tree, write_image


def _ingest(source: Path | str, workspace, **cfg):
    art, hit = ingest(str(source), build(DatasetConfig, cfg), workspace)
    return load_dataset(art), hit


def test_npz_with_split_and_domains_keeps_them(tmp_path, workspace) -> None:
    ds, hit = _ingest(make_npz(tmp_path / "d.npz"), workspace, size=16)
    assert not hit
    assert ds.images.shape == (40, 3, 16, 16) and ds.images.dtype == torch.uint8
    assert ds.class_names == ["c0", "c1", "c2"] and ds.domain_names == ["d0", "d1"]
    assert len(ds.test_indices) == 8 and ds.domains is not None


def test_npz_is_resized_to_the_configured_size(tmp_path, workspace) -> None:
    ds, _ = _ingest(make_npz(tmp_path / "d.npz", size=20), workspace, size=8)
    assert ds.images.shape[-2:] == (8, 8)


def test_npz_without_split_gets_a_stratified_split(tmp_path, workspace) -> None:
    ds, _ = _ingest(make_npz(tmp_path / "d.npz", n=60, split=False), workspace, size=16, test_fraction=0.2)
    assert len(ds.test_indices) == 12
    for c in range(3):
        assert int((ds.labels[ds.test_indices] == c).sum()) == 4


def test_npz_images_round_trip_exactly(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz")
    ds, _ = _ingest(path, workspace, size=16)
    original = np.load(path)["images"]
    assert np.array_equal(ds.images.permute(0, 2, 3, 1).numpy(), original)


def test_npz_with_mismatched_lengths_is_refused(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", labels=np.arange(39) % 3)
    with pytest.raises(ChddlError, match="'labels' has 39 entries but there are 40 images"):
        _ingest(path, workspace)


def test_npz_with_pickled_objects_is_refused(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", class_names=np.array([{"a": 1}, 2, 3], dtype=object))
    with pytest.raises(ChddlError, match="Python objects"):
        _ingest(path, workspace)


def test_npz_with_a_single_class_is_refused(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", labels=np.zeros(40, dtype=np.int64), class_names=np.array(["only"]))
    with pytest.raises(ChddlError, match="single class"):
        _ingest(path, workspace)


def test_folder_with_domains_and_classes(tmp_path, workspace) -> None:
    root = make_tree(tmp_path / "tree", ["art", "photo"], ["cat", "dog"], per=5)
    ds, _ = _ingest(root, workspace, size=8)
    assert ds.class_names == ["cat", "dog"] and ds.domain_names == ["art", "photo"]
    assert ds.images.shape == (20, 3, 8, 8)
    assert int((ds.domains == 1).sum()) == 10


def test_folder_with_classes_only(tmp_path, workspace) -> None:
    ds, _ = _ingest(make_tree(tmp_path / "tree", None, ["a", "b", "c"], per=4), workspace, size=8)
    assert ds.domains is None and ds.class_names == ["a", "b", "c"]


def test_folder_with_train_and_test_subfolders(tmp_path, workspace) -> None:
    root = tmp_path / "tree"
    make_tree(root, None, ["a", "b"], per=4, prefix="train")
    make_tree(root, None, ["a", "b"], per=1, prefix="test")
    ds, _ = _ingest(root, workspace, size=8)
    assert len(ds.train_indices) == 8 and len(ds.test_indices) == 2


def test_folder_with_split_list_files(tmp_path, workspace) -> None:
    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=3)
    (root / "train.txt").write_text("a/img_0.png 0\na/img_1.png 0\nb/img_0.png 1\nb/img_1.png 1\n")
    (root / "test.txt").write_text("a/img_2.png\nb/img_2.png\n")
    ds, _ = _ingest(root, workspace, size=8)
    assert len(ds.train_indices) == 4 and len(ds.test_indices) == 2


@pytest.mark.parametrize(
    "suffix,mode",
    [
        (".png", "L"),
        (".png", "P"),
        (".png", "RGBA"),
        (".png", "I;16"),
        (".jpg", "RGB"),
        (".bmp", "RGB"),
        (".webp", "RGB"),
        (".jpeg", "L"),
    ],
)
def test_folder_converts_every_image_mode_to_rgb(tmp_path, workspace, suffix, mode) -> None:
    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=2)
    write_image(root / "a" / f"odd{suffix}", size=10, mode=mode)
    ds, _ = _ingest(root, workspace, size=8)
    assert ds.images.shape == (5, 3, 8, 8)
    assert not ds.artifact.info["skipped_files"]


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path, workspace) -> None:
    from PIL import Image

    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=1)
    Image.fromarray(np.full((8, 8), 32768, dtype=np.uint16)).save(root / "a" / "mid.png")
    ds, _ = _ingest(root, workspace, size=8)
    mid = ds.images[ds.labels == 0][1]  # sorted file order: img_0.png, mid.png
    assert int(mid.min()) == int(mid.max()) == 128


def test_corrupt_files_are_skipped_and_listed(tmp_path, workspace) -> None:
    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=2)
    (root / "a" / "broken.jpg").write_bytes(b"not an image")
    ds, _ = _ingest(root, workspace, size=8)
    assert ds.images.shape[0] == 4
    assert ds.artifact.info["skipped_files"] == [str(root / "a" / "broken.jpg")]


def test_corrupt_files_fail_under_strict(tmp_path, workspace) -> None:
    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=2)
    (root / "a" / "broken.jpg").write_bytes(b"not an image")
    with pytest.raises(ChddlError, match="cannot be decoded"):
        _ingest(root, workspace, size=8, strict=True)


def test_missing_path_is_refused(tmp_path, workspace) -> None:
    with pytest.raises(ChddlError, match="no such file or directory"):
        _ingest(tmp_path / "nope", workspace)


def test_empty_folder_is_refused(tmp_path, workspace) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ChddlError, match="no image files"):
        _ingest(tmp_path / "empty", workspace)


def test_folder_without_image_files_is_refused(tmp_path, workspace) -> None:
    (tmp_path / "t" / "a").mkdir(parents=True)
    (tmp_path / "t" / "a" / "notes.txt").write_text("x")
    with pytest.raises(ChddlError, match="no image files"):
        _ingest(tmp_path / "t", workspace)


def test_class_folder_without_images_is_refused(tmp_path, workspace) -> None:
    root = make_tree(tmp_path / "tree", None, ["a", "b"], per=2)
    (root / "c").mkdir()
    with pytest.raises(ChddlError, match="class folder .*c has no image files"):
        _ingest(root, workspace)


def test_single_class_folder_is_refused(tmp_path, workspace) -> None:
    with pytest.raises(ChddlError, match="single class"):
        _ingest(make_tree(tmp_path / "tree", None, ["a"], per=3), workspace)


def test_archive_asks_to_be_extracted(tmp_path, workspace) -> None:
    (tmp_path / "d.tar.gz").write_bytes(b"x")
    with pytest.raises(ChddlError, match="extract it first"):
        _ingest(tmp_path / "d.tar.gz", workspace)


def _cifar_batch(path: Path, n: int, label_key: bytes, seed: int) -> None:
    rng = np.random.default_rng(seed)
    with path.open("wb") as fh:
        pickle.dump(
            {b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8), label_key: list(rng.integers(0, 10, n))}, fh
        )


def test_cifar10_folder_is_read_without_download(tmp_path, workspace) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for i in range(1, 6):
        _cifar_batch(folder / f"data_batch_{i}", 4, b"labels", i)
    _cifar_batch(folder / "test_batch", 3, b"labels", 9)
    with (folder / "batches.meta").open("wb") as fh:
        pickle.dump({b"label_names": [f"n{i}".encode() for i in range(10)]}, fh)
    ds, _ = _ingest(tmp_path, workspace)
    assert ds.images.shape == (23, 3, 32, 32)
    assert len(ds.test_indices) == 3 and ds.class_names[0] == "n0"


def test_cifar100_folder_is_read(tmp_path, workspace) -> None:
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    _cifar_batch(folder / "train", 6, b"fine_labels", 1)
    _cifar_batch(folder / "test", 2, b"fine_labels", 2)
    with (folder / "meta").open("wb") as fh:
        pickle.dump({b"fine_label_names": [f"f{i}".encode() for i in range(100)]}, fh)
    ds, _ = _ingest(folder, workspace)
    assert ds.num_classes == 100 and ds.images.shape[0] == 8


def test_cifar_pickle_that_would_run_code_is_refused(tmp_path, workspace) -> None:
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / name).write_bytes(pickle.dumps(Evil()))
    with pytest.raises(ChddlError, match="not a valid CIFAR batch"):
        _ingest(folder, workspace)


def test_stratified_split_is_seeded_and_per_cell() -> None:
    labels = torch.arange(100) % 2
    domains = (torch.arange(100) // 2) % 2
    a = stratified_split(labels, domains, 0.2, seed=3)
    b = stratified_split(labels, domains, 0.2, seed=3)
    assert torch.equal(a, b)
    for cell in range(4):
        assert int(a[labels * 2 + domains == cell].sum()) == 5


def test_train_per_class_keeps_a_seeded_subset_of_each_class_and_the_whole_test_split(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", n=60)
    full, _ = _ingest(path, workspace, size=16)
    sub, hit = _ingest(path, workspace, size=16, train_per_class=5)
    again, hit_again = _ingest(path, workspace, size=16, train_per_class=5)
    assert not hit and hit_again  # a subset is its own cached dataset, found again
    for c in range(3):
        assert int((sub.labels[sub.train_indices] == c).sum()) == 5
    assert len(sub.test_indices) == len(full.test_indices) == 12
    assert torch.equal(sub.images[sub.test_indices], full.images[full.test_indices])
    assert torch.equal(sub.images, again.images)
    # the kept training images are real training images of the source, not copies
    full_train = {bytes(im.numpy()) for im in full.images[full.train_indices]}
    assert all(bytes(im.numpy()) in full_train for im in sub.images[sub.train_indices])


def test_test_per_class_cuts_the_test_split_only(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz", n=60)
    full, _ = _ingest(path, workspace, size=16)
    sub, _ = _ingest(path, workspace, size=16, test_per_class=2)
    assert torch.equal(sub.images[sub.train_indices], full.images[full.train_indices])
    for c in range(3):
        assert int((sub.labels[sub.test_indices] == c).sum()) == 2


def test_train_per_class_larger_than_a_class_keeps_every_image(tmp_path, workspace) -> None:
    path = make_npz(tmp_path / "d.npz")
    full, _ = _ingest(path, workspace, size=16)
    sub, _ = _ingest(path, workspace, size=16, train_per_class=1000)
    assert len(sub.train_indices) == len(full.train_indices)


@pytest.mark.parametrize("option", ["train_per_class", "test_per_class"])
def test_a_negative_subset_size_is_refused(tmp_path, workspace, option) -> None:
    with pytest.raises(ChddlError, match=f"--{option.replace('_', '-')} must be 0"):
        _ingest(make_npz(tmp_path / "d.npz"), workspace, **{option: -1})


def test_demo_dataset_is_deterministic_and_multi_domain() -> None:
    a, b = generate(16, seed=0), generate(16, seed=0)
    assert torch.equal(a.images, b.images)
    assert a.images.shape[1:] == (3, 16, 16)
    assert len(a.class_names) == len(CLASSES) >= 5 and len(a.domain_names) == len(DOMAINS) >= 3
    assert 1000 <= len(a.labels) <= 3000
    # domains differ in their pixel statistics (mean brightness)
    means = [a.images[a.domains == d].float().mean().item() for d in range(len(DOMAINS))]
    assert max(means) - min(means) > 40
