"""Decoding one image file into an RGB uint8 array of the configured size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if arr.max(initial=0) > 255 else 255.0
        img = Image.fromarray(np.clip(arr / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")


def decode_image(path: Path, size: int) -> np.ndarray | None:
    """(3, size, size) uint8 array, or None when the file cannot be decoded.

    Grayscale, palette, RGBA (composited on white) and 16-bit images are
    converted to 8-bit RGB; the image is resized to size x size (Lanczos). A
    JPEG larger than twice the size is decoded at a reduced scale (libjpeg's
    DCT scaling, PIL's draft mode) that still leaves at least ``size`` pixels
    a side, so the decoder does a fraction of the work before the resize.
    """
    try:
        with Image.open(path) as img:
            if img.format == "JPEG":
                img.draft("RGB", (size, size))
            img.load()
            rgb = _to_rgb(img)
            if rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
            return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        return None


def decode_into(path: Path, size: int, out: np.ndarray) -> bool:
    """Decode ``path`` as :func:`decode_image` into ``out`` (3, size, size) uint8; False when it cannot be read."""
    image = decode_image(path, size)
    if image is None:
        return False
    out[...] = image
    return True
