"""The published datasets' folder layouts, each generated small in its exact shape: classes, domains, split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from stages.config import build
from stages.data.folder import read_folder
from stages.data.ingest import DatasetConfig, ingest
from stages.data.raw import TEST, TRAIN
from stages.errors import ChddlError
from tests.conftest import write_image


def _counts(raw) -> tuple[int, int]:
    return int((raw.split == TRAIN).sum()), int((raw.split == TEST).sum())


def test_office_home_as_unpacked(tmp_path) -> None:
    root = tmp_path / "OfficeHomeDataset_10072016"
    for d in ("Art", "Clipart", "Product", "Real World"):
        for c in ("Alarm_Clock", "Backpack", "Batteries"):
            for i in range(2):
                write_image(root / d / c / f"{i + 1:05d}.jpg", size=20)
    (root / "ImageInfo.csv").write_text("image,url\n")
    (root / "imagelist.txt").write_text("Art/Alarm_Clock/00001.jpg\n")
    raw = read_folder(root, 8)
    assert raw.domain_names == ["Art", "Clipart", "Product", "Real World"]
    assert raw.class_names == ["Alarm_Clock", "Backpack", "Batteries"]
    assert len(raw.labels) == 24 and raw.split is None  # no split in the archive: a stratified one is drawn
    assert raw.source_format == "folder/class-folders"


def test_vlcs_as_domainbed_lays_it_out(tmp_path) -> None:
    root = tmp_path / "VLCS"
    for d in ("Caltech101", "LabelMe", "SUN09", "VOC2007"):
        for c in ("bird", "car", "chair", "dog", "person"):
            write_image(root / d / c / "img_1.jpg", size=10)
    raw = read_folder(root, 8)
    assert raw.domain_names == ["Caltech101", "LabelMe", "SUN09", "VOC2007"]
    assert raw.class_names == ["bird", "car", "chair", "dog", "person"]
    assert torch.bincount(raw.domains).tolist() == [5, 5, 5, 5]


def _domainnet(root: Path) -> Path:
    classes = ["aircraft_carrier", "airplane", "alarm_clock"]
    for d in ("clipart", "sketch"):
        train, test = [], []
        for k, c in enumerate(classes):
            for i in range(4):
                rel = f"{d}/{c}/{d}_{k:03d}_{i:06d}.jpg"
                write_image(root / rel, size=10, seed=i)
                if i < 2:
                    train.append(f"{rel} {k}")
                elif i == 2:
                    test.append(f"{rel} {k}")  # the fourth image is in neither list
        (root / f"{d}_train.txt").write_text("\n".join(train) + "\n")
        (root / f"{d}_test.txt").write_text("\n".join(test) + "\n")
    return root


def test_domainnet_split_comes_from_its_official_lists(tmp_path) -> None:
    raw = read_folder(_domainnet(tmp_path / "domainnet"), 8)
    assert raw.class_names == ["aircraft_carrier", "airplane", "alarm_clock"]
    assert raw.domain_names == ["clipart", "sketch"]
    assert _counts(raw) == (12, 6)  # 2 train + 1 test per class and domain; unlisted images unused
    assert raw.source_format == "folder/domain-split-lists"


def _pacs_kfold(root: Path) -> Path:
    classes = ["dog", "elephant", "giraffe"]
    for d in ("art_painting", "sketch"):
        lists = {"train": [], "crossval": [], "test": []}
        for k, c in enumerate(classes):
            for i, split in enumerate(("train", "train", "crossval", "test")):
                rel = f"{d}/{c}/pic_{i + 1:03d}.{'png' if d == 'sketch' else 'jpg'}"
                write_image(root / "kfold" / rel, size=12, seed=i)
                lists[split].append(f"{rel} {k + 1}")  # PACS labels count from 1
        for split, lines in lists.items():
            (root / "pacs_label").mkdir(parents=True, exist_ok=True)
            (root / "pacs_label" / f"{d}_{split}_kfold.txt").write_text("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("crossval, sizes", [("train", (18, 6)), ("test", (12, 12)), ("ignore", (12, 6))])
def test_pacs_official_kfold_lists(tmp_path, crossval, sizes) -> None:
    raw = read_folder(_pacs_kfold(tmp_path / "PACS"), 8, crossval=crossval)
    assert raw.class_names == ["dog", "elephant", "giraffe"]
    assert raw.domain_names == ["art_painting", "sketch"]
    assert _counts(raw) == sizes
    assert raw.source_format == "folder/pacs-kfold"


def _tiny_imagenet(root: Path) -> Path:
    wnids = ["n01443537", "n01629819", "n01641577"]
    root.mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(reversed(wnids)) + "\n")
    (root / "words.txt").write_text(
        "n01443537\tgoldfish, Carassius auratus\nn01629819\tEuropean fire salamander\nn01641577\tbullfrog\n"
        "n99999999\tunused\n"
    )
    annotations = []
    for k, w in enumerate(wnids):
        for i in range(3):
            write_image(root / "train" / w / "images" / f"{w}_{i}.JPEG", size=16, seed=i)
        (root / "train" / w / f"{w}_boxes.txt").write_text(f"{w}_0.JPEG\t0\t0\t10\t10\n")
        write_image(root / "val" / "images" / f"val_{k}.JPEG", size=16)
        annotations.append(f"val_{k}.JPEG\t{w}\t0\t0\t10\t10")
    (root / "val" / "val_annotations.txt").write_text("\n".join(annotations) + "\n")
    write_image(root / "test" / "images" / "test_0.JPEG", size=16)  # unlabelled: not used
    return root


def test_tiny_imagenet_as_unpacked(tmp_path) -> None:
    raw = read_folder(_tiny_imagenet(tmp_path / "tiny-imagenet-200"), 8)
    assert raw.class_names == ["goldfish", "European fire salamander", "bullfrog"]
    assert raw.domain_names is None
    assert _counts(raw) == (9, 3)
    assert raw.labels[raw.split == TEST].tolist() == [0, 1, 2]


def test_imagenet_style_train_and_val_folders(tmp_path) -> None:
    root = tmp_path / "imagenet"
    for split, n in (("train", 3), ("val", 1)):
        for c in ("n01440764", "n01443537"):
            for i in range(n):
                write_image(root / split / c / f"{c}_{i}.JPEG", size=10)
    raw = read_folder(root, 8)
    assert raw.class_names == ["n01440764", "n01443537"] and _counts(raw) == (6, 2)


def test_a_preset_exists_for_every_dataset_of_the_paper() -> None:
    from stages.config import load_preset

    for name, size in (
        ("pacs_64", 64),
        ("vlcs", 64),
        ("officehome", 64),
        ("domainnet", 64),
        ("tinyimagenet", 64),
        ("cifar100", 32),
    ):
        assert load_preset(name, "datasets")["dataset"]["size"] == size, name


# Bad input: one line naming the file and the problem, nothing written.


def _refused(source: Path, workspace, match: str) -> None:
    with pytest.raises(ChddlError, match=match):
        ingest(str(source), build(DatasetConfig, {"size": 8}), workspace)
    artifacts = workspace.root / "artifacts"
    assert not artifacts.exists() or not any(artifacts.iterdir())


def test_a_split_list_naming_a_missing_image_is_refused(tmp_path, workspace) -> None:
    root = _domainnet(tmp_path / "dn")
    with (root / "clipart_test.txt").open("a") as fh:
        fh.write("clipart/airplane/gone.jpg 1\n")
    _refused(root, workspace, r"clipart_test.txt line 4 names .*gone.jpg, which does not exist")


def test_a_label_outside_the_class_range_is_refused(tmp_path, workspace) -> None:
    root = _domainnet(tmp_path / "dn")
    text = (root / "sketch_train.txt").read_text().replace("airplane/sketch_001_000000.jpg 1", "x/sketch_001.jpg 9")
    (root / "sketch_train.txt").write_text(text)
    write_image(root / "sketch" / "x" / "sketch_001.jpg", size=10)
    _refused(root, workspace, r"sketch_train.txt line 3: label 9 is outside the class range 0..3")


def test_an_empty_split_list_is_refused(tmp_path, workspace) -> None:
    root = _domainnet(tmp_path / "dn")
    (root / "sketch_test.txt").write_text("\n")
    _refused(root, workspace, r"sketch_test.txt is empty")


def test_an_annotation_naming_an_unknown_class_is_refused(tmp_path, workspace) -> None:
    root = _tiny_imagenet(tmp_path / "tiny")
    with (root / "val" / "val_annotations.txt").open("a") as fh:
        fh.write("val_0.JPEG\tn00000000\t0\t0\t1\t1\n")
    _refused(root, workspace, r"val_annotations.txt line 4 names class n00000000, which wnids.txt does not list")


def test_a_class_folder_without_images_is_refused(tmp_path, workspace) -> None:
    root = tmp_path / "vlcs"
    for c in ("bird", "car"):
        write_image(root / "LabelMe" / c / "1.jpg", size=10)
    (root / "LabelMe" / "chair").mkdir()
    _refused(root, workspace, r"class folder .*LabelMe/chair has no image files")


def test_a_truncated_jpeg_is_skipped_and_listed_or_refused_under_strict(tmp_path, workspace) -> None:
    root = _domainnet(tmp_path / "dn")
    broken = root / "clipart" / "airplane" / "clipart_001_000000.jpg"
    broken.write_bytes(broken.read_bytes()[:40])
    art, _ = ingest(str(root), build(DatasetConfig, {"size": 8}), workspace)
    assert art.info["skipped_files"] == [str(broken)] and art.info["num_images"] == 17
    with pytest.raises(ChddlError, match="cannot be decoded"):
        ingest(str(root), build(DatasetConfig, {"size": 8, "strict": True}), workspace)


def test_the_ingest_benchmark_reads_the_same_images_both_ways(tmp_path) -> None:
    import json
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = subprocess.run(
        [sys.executable, "bench/ingest_speed.py", "--images", "24", "--source-px", "48", "--size", "16"]
        + ["--rounds", "1", "--torch-workers", "0", "--json"],
        capture_output=True,
        text=True,
        cwd=root,
        check=True,
    )
    result = json.loads(out.stdout)
    assert result["chddl"]["images"] == result["torchvision"]["images"] == 24
    assert result["time_ratio"] > 0 and result["chddl"]["peak_rss_gb"] > 0


@pytest.mark.parametrize(
    "values, message", [({"workers": -1}, "--workers must be 0"), ({"crossval": "val"}, "unknown --crossval 'val'")]
)
def test_bad_ingest_options_are_refused_in_one_line(tmp_path, workspace, values, message) -> None:
    with pytest.raises(ChddlError, match=message):
        ingest(str(_pacs_kfold(tmp_path / "PACS")), build(DatasetConfig, {"size": 8} | values), workspace)
    assert not (workspace.root / "artifacts").exists() or not any((workspace.root / "artifacts").iterdir())
