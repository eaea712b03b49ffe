"""Decoding image files into one uint8 tensor, keeping their channel count unless told otherwise.

Two passes over the files, both on a thread pool (Pillow releases the GIL while decoding): a
header pass (mode and size, a few KB per file: catches unreadable files early and decides the
channel count and size), then one decode per file straight into a preallocated uint8 array. No
float copy of the data is ever made: ``N`` images take ``N * C * H * W`` bytes.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from famus.data.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Pillow modes with one channel of intensity (alpha, if any, is dropped)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
T = TypeVar("T")


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _pool_map(fn: Callable[[int], T], n: int, workers: int) -> list[T]:
    """``[fn(i) for i in range(n)]`` on threads; the first exception cancels the queued work and is raised."""
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        return list(pool.map(fn, range(n)))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _unreadable(file: Path, where: str, exc: Exception) -> DataError:
    detail = " ".join(str(exc).split()) or type(exc).__name__
    return DataError(f"image {file}{where} is corrupt or unreadable ({detail}); fix or remove it")


def probe(file: Path, where: str = "") -> tuple[str, tuple[int, int]]:
    """``(mode, (H, W))`` of one image from its header; ``where`` (e.g. ``" (line 3 of a.txt)"``) goes in errors."""
    if not file.is_file():
        raise DataError(f"image {file}{where} not found; check the path (and --data-dir)")
    try:
        with Image.open(file) as img:
            return img.mode, (img.height, img.width)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _unreadable(file, where, exc) from exc


def resolve_format(
    probes: Sequence[tuple[str, tuple[int, int]]],
    channels: int | None = None,
    image_size: int | Sequence[int] | None = None,
) -> tuple[int, tuple[int, int]]:
    """The channel count and ``(H, W)`` to decode to.

    Args:
        probes: ``(mode, (H, W))`` of every image (all splits, so they share one format).
        channels: 1 or 3; ``None`` keeps the images' own: 1 when every image is grayscale, else 3.
        image_size: S (square) or ``(H, W)``; ``None`` keeps the first image's size.
    """
    if channels is None:
        channels = 1 if all(mode in GRAY_MODES for mode, _ in probes) else 3
    if channels not in (1, 3):
        raise DataError(f"channels must be 1 (grayscale) or 3 (RGB), got {channels}")
    if image_size is None:
        if not probes:
            raise DataError("no images to take the size from; pass dataset_options.image_size")
        size = probes[0][1]
    elif isinstance(image_size, int):
        size = (image_size, image_size)
    else:
        size = tuple(int(s) for s in image_size)
    if len(size) != 2 or min(size) < 1:
        raise DataError(f"image_size must be S or [H, W] with positive sides, got {image_size}")
    return channels, (int(size[0]), int(size[1]))


def check_memory(n: int, channels: int, size: tuple[int, int], what: str) -> None:
    """Refuse, with the numbers, a uint8 array that would not fit in half of the physical memory."""
    need = n * channels * size[0] * size[1]
    try:
        have = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return
    if need > have // 2:
        raise DataError(
            f"{what}: {n} images of {channels}x{size[0]}x{size[1]} need {need / 2**30:.1f} GiB as uint8, more than "
            f"half of this machine's {have / 2**30:.1f} GiB; pass a smaller dataset_options.image_size"
        )


def decode(file: Path, size: tuple[int, int], channels: int, where: str = "") -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``, converted (``L`` or ``RGB``) and resized (bilinear)."""
    mode = "RGB" if channels == 3 else "L"
    h, w = size
    try:
        with Image.open(file) as img:
            img.draft(mode, (w, h))  # JPEG: let the decoder downscale by 1/2..1/8 for free first
            img = img.convert(mode)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise _unreadable(file, where, exc) from exc
    return arr.reshape(h, w, channels)


def probe_all(files: Sequence[Path], wheres: Sequence[str], workers: int = 8) -> list[tuple[str, tuple[int, int]]]:
    """:func:`probe` of every file, on ``workers`` threads."""
    return _pool_map(lambda i: probe(files[i], wheres[i]), len(files), workers)


def decode_all(
    files: Sequence[Path], wheres: Sequence[str], channels: int, size: tuple[int, int], workers: int = 8
) -> Tensor:
    """Decode every file into one uint8 tensor ``(N, channels, H, W)`` (one preallocated array, no copies)."""
    out = np.empty((len(files), size[0], size[1], channels), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = decode(files[i], size, channels, wheres[i])

    _pool_map(work, len(files), workers)
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def convert_channels(x: Tensor, channels: int) -> Tensor:
    """uint8 ``(N, C, H, W)`` to ``channels`` channels.

    1 -> 3 repeats the channel; 3 (or 4: alpha dropped) -> 1 is the ITU-R 601-2 luma of Pillow's ``L`` mode,
    ``(299 R + 587 G + 114 B) / 1000`` rounded.
    """
    c = x.shape[1]
    if c == 4:
        x, c = x[:, :3], 3
    if c == channels:
        return x.contiguous()
    if c == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1).contiguous()
    if c == 3 and channels == 1:
        weights = torch.tensor([299, 587, 114], dtype=torch.int32).view(1, 3, 1, 1)
        return ((x.to(torch.int32) * weights).sum(1, keepdim=True) + 500).div(1000, rounding_mode="floor").to(
            torch.uint8
        )
    raise DataError(f"cannot convert {c}-channel images to {channels} channels; use 1 (grayscale) or 3 (RGB)")


def load_image_splits(
    splits: dict[str, tuple[Sequence[Path], Sequence[str]]],
    channels: int | None = None,
    image_size: int | Sequence[int] | None = None,
    workers: int = 8,
    what: str = "images",
) -> dict[str, Tensor]:
    """Decode several splits (e.g. train, val, test) to one shared format.

    Args:
        splits: split name -> ``(files, wheres)``; the first split's first image gives the default size.
        channels, image_size: see :func:`resolve_format` (``None``: keep the images' own).
        workers: decoding threads.
        what: the dataset, for error messages.

    Returns:
        split name -> uint8 ``(N, C, H, W)``, the same ``C, H, W`` for every split.
    """
    files = [f for fs, _ in splits.values() for f in fs]
    wheres = [w for _, ws in splits.values() for w in ws]
    c, size = resolve_format(probe_all(files, wheres, workers), channels, image_size)
    check_memory(len(files), c, size, what)
    return {name: decode_all(fs, ws, c, size, workers) for name, (fs, ws) in splits.items()}
