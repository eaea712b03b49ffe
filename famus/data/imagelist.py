"""Image-list datasets: text files of ``relative/path.jpg label`` lines.

This is the annotation layout of Clothing1M, WebVision and CNWL. Images are decoded with
Pillow, converted to RGB (or L), resized to a square and packed into one uint8 tensor.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from famus.data.errors import DataError


def read_list(path: str | os.PathLike[str]) -> tuple[list[str], list[int], list[int]]:
    """Parse an annotation list.

    Blank lines and lines starting with ``#`` are skipped. The label is the last
    whitespace-separated token, so paths may contain spaces.

    Returns:
        ``(paths, labels, line_numbers)`` in file order.

    Raises:
        DataError: missing file or a malformed line (with its 1-based line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image list {path} not found; pass train_list=/test_list= (relative to --data-dir)")
    paths: list[str] = []
    labels: list[int] = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2 or not parts[1].isdigit():
                raise DataError(
                    f"bad line {number} in {path}: expected '<relative/path> <integer label>', "
                    f"got {text[:80]!r}; fix or remove that line"
                )
            paths.append(parts[0])
            labels.append(int(parts[1]))
            lines.append(number)
    return paths, labels, lines


def _decode(file: Path, size: int, mode: str, where: str) -> np.ndarray:
    if not file.is_file():
        raise DataError(
            f"image {file} (listed on {where}) not found; "
            "check --data-dir is the root the list is relative to"
        )
    try:
        with Image.open(file) as img:
            # draft() lets the JPEG decoder downscale by 1/2..1/8 for free before resizing.
            img.draft(mode, (size, size))
            img = img.convert(mode).resize((size, size), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise DataError(
            f"image {file} (listed on {where}) is corrupt ({exc}); re-download or remove it"
        ) from exc
    return arr.reshape(size, size, -1)


def load_images(
    list_path: str | os.PathLike[str],
    root: str | os.PathLike[str],
    image_size: int,
    channels: int,
    workers: int = 8,
) -> tuple[Tensor, Tensor]:
    """Decode every image named in ``list_path``.

    Args:
        list_path: annotation list.
        root: directory the listed paths are relative to (absolute paths are kept).
        image_size: side S of the square output.
        channels: 3 (RGB) or 1 (grayscale).
        workers: decoding threads (Pillow releases the GIL while decoding).

    Returns:
        ``(x, y)``: uint8 (N, channels, S, S) and int64 (N,).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")
    paths, labels, lines = read_list(list_path)
    mode = "RGB" if channels == 3 else "L"
    root = Path(root)
    out = np.empty((len(paths), image_size, image_size, channels), dtype=np.uint8)

    def work(i: int) -> None:
        out[i] = _decode(root / paths[i], image_size, mode, f"line {lines[i]} of {list_path}")

    # Decoding is inherently per file; threads overlap the I/O and the GIL-free decode.
    pool = ThreadPoolExecutor(max_workers=max(1, workers))
    try:
        for _ in pool.map(work, range(len(paths))):
            pass
    finally:
        # On the first bad image, drop the queued work instead of decoding the rest.
        pool.shutdown(wait=True, cancel_futures=True)
    x = torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()
    return x, torch.tensor(labels, dtype=torch.long)
