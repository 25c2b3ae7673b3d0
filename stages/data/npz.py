"""Reader for ``.npz`` files: images, labels and optional metadata arrays."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import torch

from stages.data.raw import RawDataset
from stages.data.resize import resize_uint8
from stages.errors import ChddlError


def _names(data: np.lib.npyio.NpzFile, key: str) -> list[str] | None:
    return [str(x) for x in data[key].tolist()] if key in data.files else None


def _images(arr: np.ndarray, path: Path) -> torch.Tensor:
    if arr.ndim == 3:
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or 3 not in (arr.shape[1], arr.shape[-1]):
        raise ChddlError(f"{path}: 'images' must be (N, H, W, 3), got shape {arr.shape}")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.floating) and arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
            arr = np.round(arr * 255.0).astype(np.uint8)
        else:
            what = f"{arr.dtype} values in [{arr.min():.3g}, {arr.max():.3g}]" if arr.size else str(arr.dtype)
            raise ChddlError(f"{path}: 'images' must be uint8 in [0, 255] or floats in [0, 1], got {what}")
    t = torch.from_numpy(np.ascontiguousarray(arr))
    return t if t.shape[1] == 3 and t.shape[-1] != 3 else t.permute(0, 3, 1, 2).contiguous()


def _streamed_images(data: np.lib.npyio.NpzFile, size: int, block_bytes: int = 1 << 23) -> torch.Tensor | None:
    """``images`` read from the archive block by block into (N, 3, size, size) uint8,
    resized on the way: memory is the result plus one block. None when the array
    is not plain uint8 (N, H, W, 3) or (N, 3, H, W) (then it is read whole)."""
    member = "images.npy"
    if member not in data.zip.namelist():
        return None
    with data.zip.open(member) as fh:
        version = np.lib.format.read_magic(fh)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(fh)
        if dtype != np.uint8 or fortran_order or len(shape) != 4 or 3 not in (shape[1], shape[-1]):
            return None
        channels_first = shape[1] == 3 and shape[-1] != 3
        per_image = int(np.prod(shape[1:]))
        rows = max(1, block_bytes // per_image)
        out = torch.empty((shape[0], 3, size, size), dtype=torch.uint8)
        for start in range(0, shape[0], rows):
            n = min(rows, shape[0] - start)
            buf = fh.read(n * per_image)
            if len(buf) != n * per_image:
                raise ValueError(f"'images' ends after {start * per_image + len(buf)} of {shape[0] * per_image} bytes")
            block = torch.from_numpy(np.frombuffer(buf, dtype=np.uint8).reshape(n, *shape[1:]).copy())
            block = block if channels_first else block.permute(0, 3, 1, 2)
            resize_uint8(block.contiguous(), size, out=out[start : start + n])
        return out


def read_npz(path: Path, size: int) -> RawDataset:
    """Load an npz with ``images`` (N,H,W,3 uint8) and ``labels``; optional
    ``domains``, ``split`` (0 train / 1 test), ``class_names``, ``domain_names``.
    Loaded with ``allow_pickle=False``: object arrays are refused. Float
    images are accepted when they lie in [0, 1] (scaled by 255 and rounded)."""
    if not zipfile.is_zipfile(path):
        raise ChddlError(
            f"{path} is not an .npz archive (not a zip file); write one with numpy.savez(path, images=..., labels=...)"
        )
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as exc:
        raise ChddlError(f"{path} is not a readable .npz file ({exc})") from None
    with data:
        try:
            for required in ("images", "labels"):
                if required not in data.files:
                    raise ChddlError(f"{path} has no '{required}' array (found: {', '.join(data.files)})")
            images = _streamed_images(data, size)
            resized = images is not None
            if images is None:
                images = _images(data["images"], path)
            labels = torch.from_numpy(data["labels"].astype(np.int64))
            domains = torch.from_numpy(data["domains"].astype(np.int64)) if "domains" in data.files else None
            split = torch.from_numpy(data["split"].astype(np.int64)) if "split" in data.files else None
            class_names = _names(data, "class_names")
            domain_names = _names(data, "domain_names")
        except (zipfile.BadZipFile, EOFError, OSError) as exc:
            raise ChddlError(f"{path} is damaged ({exc}); copy or write it again") from None
        except ValueError as exc:
            raise ChddlError(
                f"{path} holds Python objects or malformed arrays ({exc}); save plain numeric/string arrays"
            ) from None
    if class_names is None:
        class_names = [f"class_{i}" for i in range(int(labels.max()) + 1 if labels.numel() else 0)]
    if domains is not None and domain_names is None:
        domain_names = [f"domain_{i}" for i in range(int(domains.max()) + 1)]
    raw = RawDataset(
        images=images,
        labels=labels,
        class_names=class_names,
        domains=domains,
        domain_names=domain_names,
        split=split,
        source_format="npz",
    )
    raw.check(str(path))
    if not resized:
        raw.images = resize_uint8(raw.images, size)
    return raw
