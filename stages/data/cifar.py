"""Reader for torchvision's on-disk CIFAR-10/100 folders, never downloading.

Those files are Python pickles. They are read with an unpickler that can
only build plain containers and numpy arrays, so a tampered file cannot run
code (torchvision's own reader uses an unrestricted ``pickle.load``).
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch

from stages.data.raw import TEST, TRAIN, RawDataset
from stages.data.resize import resize_uint8
from stages.errors import ChddlError

_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}

LAYOUTS = {
    "cifar-10-batches-py": (
        ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5"],
        ["test_batch"],
        "batches.meta",
        b"labels",
        b"label_names",
    ),
    "cifar-100-python": (["train"], ["test"], "meta", b"fine_labels", b"fine_label_names"),
}


class _SafeUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _load(path: Path) -> dict:
    try:
        with path.open("rb") as fh:
            return _SafeUnpickler(fh, encoding="bytes").load()
    except FileNotFoundError:
        raise ChddlError(f"CIFAR folder is incomplete: {path} is missing") from None
    except (pickle.UnpicklingError, EOFError, OSError, ValueError) as exc:
        raise ChddlError(f"{path} is not a valid CIFAR batch file ({exc})") from None


def find_cifar_dir(path: Path) -> Path | None:
    """The CIFAR batches folder at or directly under ``path``, if any."""
    for candidate in (path, *(path / name for name in LAYOUTS)):
        if candidate.is_dir() and candidate.name in LAYOUTS:
            return candidate
    return None


def read_cifar(path: Path, size: int) -> RawDataset:
    """Read ``cifar-10-batches-py`` or ``cifar-100-python`` (train + test)."""
    folder = find_cifar_dir(path)
    if folder is None:
        raise ChddlError(f"{path} is not a CIFAR folder (expected {' or '.join(LAYOUTS)})")
    train_files, test_files, meta_file, label_key, names_key = LAYOUTS[folder.name]
    images, labels, split = [], [], []
    for files, split_id in ((train_files, TRAIN), (test_files, TEST)):
        for name in files:
            batch = _load(folder / name)
            try:
                data = np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
                labels.append(np.asarray(batch[label_key], dtype=np.int64))
            except (KeyError, ValueError) as exc:
                raise ChddlError(f"{folder / name} is not a valid CIFAR batch file ({exc})") from None
            images.append(data)
            split.append(np.full(len(data), split_id, dtype=np.int64))
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in _load(folder / meta_file).get(names_key, [])]
    raw = RawDataset(
        images=resize_uint8(torch.from_numpy(np.concatenate(images)), size),
        labels=torch.from_numpy(np.concatenate(labels)),
        class_names=names,
        split=torch.from_numpy(np.concatenate(split)),
        source_format=folder.name,
    )
    raw.check(str(folder))
    return raw
