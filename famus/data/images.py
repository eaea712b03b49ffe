"""Decoding image files into one uint8 tensor, keeping their channel count unless told otherwise.

Two passes over the files, both on a thread pool (Pillow releases the GIL while decoding): a
header pass (mode and size, a few KB per file: catches unreadable files early and decides the
channel count and size), then one decode per file straight into a preallocated uint8 array. No
float copy of the data is ever made: ``N`` images take ``N * C * H * W`` bytes.

No file can exhaust the machine: the header pass refuses an image of more than ``max_pixels``
pixels (:data:`DEFAULT_MAX_PIXELS` unless ``dataset_options.max_pixels`` says otherwise) before
anything is decoded, Pillow's own decompression-bomb guard is set to the same limit, and the
decoded arrays plus the decodes under way must fit the memory budget
(:func:`famus.data.memory.memory_budget`): fewer decodes run at once where big images need it.
"""

from __future__ import annotations

import math
import re
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from famus.data.errors import DataError, check_regular_file, shown
from famus.data.memory import Budget, memory_budget, size_text

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp")
# Pillow modes with one channel of intensity (alpha, if any, is dropped)
GRAY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
T = TypeVar("T")
# pixels per image famus decodes unless told otherwise (8192 x 8192; Pillow's own default warns at 89 M)
DEFAULT_MAX_PIXELS = 2**26
# bytes per pixel Pillow holds for an image of each mode (every other mode: 4)
_MODE_BYTES = {"1": 1, "L": 1, "P": 1, "I;16": 2, "I;16B": 2, "I;16L": 2, "I;16N": 2}


def is_image_file(path: Path) -> bool:
    """Whether ``path`` has one of :data:`IMAGE_EXTENSIONS` (case-insensitive)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _pool_map(fn: Callable[[int], T], n: int, workers: int) -> list[T]:
    """``[fn(i) for i in range(n)]`` on threads (one worker: in this thread); the first exception cancels the
    queued work and is raised."""
    if workers <= 1 or n <= 1:
        return [fn(i) for i in range(n)]
    pool = ThreadPoolExecutor(max_workers=workers)
    try:
        return list(pool.map(fn, range(n)))
    except RuntimeError as e:
        if "can't start new thread" not in str(e):
            raise
        raise DataError(f"cannot start {workers} decoding threads (out of memory or address space); pass "
                        "dataset_options.workers=1") from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _unreadable(file: Path, where: str, exc: Exception) -> DataError:
    detail = shown(" ".join(str(exc).split()) or type(exc).__name__, 200)
    return DataError(f"image {shown(file)}{where} is corrupt or unreadable ({detail}); fix or remove it")


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} Mpx" if n >= 10**6 else f"{n} pixels"


def _too_large(file: Path, where: str, pixels: int, max_pixels: int, size: str = "") -> DataError:
    return DataError(f"image {shown(file)}{where} is {size}{_pixels(pixels)}, more than the {_pixels(max_pixels)} "
                     "famus decodes per image; shrink or remove it, or raise dataset_options.max_pixels if this "
                     "machine has the memory")


def _bomb(file: Path, where: str, exc: Exception, max_pixels: int) -> DataError:
    """Pillow's decompression-bomb guard tripped (the header claims over ``2 * max_pixels`` pixels)."""
    m = re.search(r"\((\d+) pixels\)", str(exc))
    return _too_large(file, where, int(m.group(1)) if m else 2 * max_pixels + 1, max_pixels)


@contextmanager
def pillow_limit(max_pixels: int) -> Iterator[None]:
    """Pillow's decompression-bomb guard at ``max_pixels`` inside the block (its warning silenced: the header
    pass refuses those images itself, with a clearer message), restored after."""
    before = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = before


def probe(file: Path, where: str = "", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[str, tuple[int, int]]:
    """``(mode, (H, W))`` of one image from its header; ``where`` (e.g. ``" (line 3 of a.txt)"``) goes in errors.

    Nothing is decoded. A path that is not a regular file (``/dev/zero``, a FIFO) is refused without opening it,
    and an image of more than ``max_pixels`` pixels is refused.
    """
    check_regular_file(file, "image", "check the path (and --data-dir)", where)
    try:
        with Image.open(file) as img:
            mode, (w, h) = img.mode, img.size
    except Image.DecompressionBombError as exc:
        raise _bomb(file, where, exc, max_pixels) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(file, where, exc) from exc
    if w * h > max_pixels:
        raise _too_large(file, where, w * h, max_pixels, f"{w}x{h}, ")
    return mode, (h, w)


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


def decode_bytes(mode: str, source: tuple[int, int], channels: int, size: tuple[int, int]) -> int:
    """Peak bytes one :func:`decode` holds: the decoded image, its conversion, the resize's intermediate and
    output, and the array copy (Pillow keeps RGB as 4 bytes a pixel). JPEG drafts need less: an upper bound."""
    (sh, sw), (h, w) = source, size
    out = 1 if channels == 1 else 4
    converted = 0 if mode == ("L" if channels == 1 else "RGB") else sh * sw * out
    return sh * sw * _MODE_BYTES.get(mode, 4) + converted + sh * w * out + 2 * h * w * out


def check_memory(probes: Sequence[tuple[str, tuple[int, int]]], files: Sequence[Path], channels: int,
                 size: tuple[int, int], what: str, workers: int = 8) -> int:
    """Refuse, with the numbers, images whose uint8 array and decoding would not fit the memory budget
    (:func:`~famus.data.memory.memory_budget`); return how many decodes may run at once (at most ``workers``).

    Args:
        probes: ``(mode, (H, W))`` of every file, from its header; files: the files, for the message.
        channels, size: the decoded format; what: the dataset, for the message.
    """
    n = len(probes)
    need = n * channels * size[0] * size[1]
    budget = memory_budget()
    if budget is None or not n:
        return workers
    peaks = [decode_bytes(mode, src, channels, size) for mode, src in probes]
    big = max(range(n), key=peaks.__getitem__)
    if need + peaks[big] > budget.bytes:
        (bh, bw) = probes[big][1]
        raise DataError(
            f"{what}: {n} images of {channels}x{size[0]}x{size[1]} need {size_text(need)} as uint8, plus "
            f"{size_text(peaks[big])} to decode the largest ({shown(files[big])}, {bw}x{bh}): more than "
            f"{budget.why}; pass a smaller dataset_options.image_size, fewer images, or shrink the largest ones"
        )
    left = Budget(budget.bytes - need, budget.why, budget.per_thread)
    return left.threads(workers, peaks[big])


def decode(file: Path, size: tuple[int, int], channels: int, where: str = "") -> np.ndarray:
    """One image as uint8 ``(H, W, channels)``, converted (``L`` or ``RGB``) and resized (bilinear)."""
    mode = "RGB" if channels == 3 else "L"
    h, w = size
    try:
        with Image.open(file) as img:
            img.draft(mode, (w, h))  # JPEG: let the decoder downscale by 1/2..1/8 for free first
            if img.mode != mode:  # (converting to the same mode would copy the whole image)
                img = img.convert(mode)
            if img.size != (w, h):
                img = img.resize((w, h), Image.Resampling.BILINEAR)
            arr = np.asarray(img, dtype=np.uint8)
    except Image.DecompressionBombError as exc:  # the file changed since its header was read
        raise _bomb(file, where, exc, Image.MAX_IMAGE_PIXELS or 0) from None
    except MemoryError:
        raise DataError(f"out of memory decoding image {shown(file)}{where}; shrink it, or pass a smaller "
                        "dataset_options.image_size or workers") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise _unreadable(file, where, exc) from exc
    if arr.shape[:2] != (h, w):  # e.g. a multi-frame file whose frames differ
        raise DataError(f"image {shown(file)}{where} decoded to {arr.shape[1]}x{arr.shape[0]}, not the {w}x{h} "
                        "asked for; re-save it as a plain single-frame image")
    return arr.reshape(h, w, channels)


def probe_all(files: Sequence[Path], wheres: Sequence[str], workers: int = 8,
              max_pixels: int = DEFAULT_MAX_PIXELS) -> list[tuple[str, tuple[int, int]]]:
    """:func:`probe` of every file, on ``workers`` threads."""
    return _pool_map(lambda i: probe(files[i], wheres[i], max_pixels), len(files), workers)


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
    max_pixels: int | None = None,
) -> dict[str, Tensor]:
    """Decode several splits (e.g. train, val, test) to one shared format.

    Args:
        splits: split name -> ``(files, wheres)``; the first split's first image gives the default size.
        channels, image_size: see :func:`resolve_format` (``None``: keep the images' own).
        workers: decoding threads (fewer run at once where the memory budget needs it).
        what: the dataset, for error messages.
        max_pixels: the most pixels an image may have (``None``: :data:`DEFAULT_MAX_PIXELS`).

    Returns:
        split name -> uint8 ``(N, C, H, W)``, the same ``C, H, W`` for every split.

    Raises:
        DataError: a missing, unreadable or too large image, or images that would not fit in memory.
    """
    max_pixels = check_max_pixels(max_pixels)
    files = [f for fs, _ in splits.values() for f in fs]
    wheres = [w for _, ws in splits.values() for w in ws]
    budget = memory_budget()
    with pillow_limit(max_pixels):  # the header pass: a few KB per thread (but its stack, where that counts)
        probes = probe_all(files, wheres, budget.threads(workers, 2**20) if budget else workers, max_pixels)
        c, size = resolve_format(probes, channels, image_size)
        workers = check_memory(probes, files, c, size, what, workers)
        return {name: decode_all(fs, ws, c, size, workers) for name, (fs, ws) in splits.items()}


def check_max_pixels(max_pixels: int | None) -> int:
    """``dataset_options.max_pixels`` checked (a positive integer; ``None``: :data:`DEFAULT_MAX_PIXELS`)."""
    if max_pixels is None:
        return DEFAULT_MAX_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, (int, float)) or not math.isfinite(max_pixels) \
            or max_pixels < 1 or max_pixels != int(max_pixels):
        raise DataError(f"dataset_options.max_pixels must be a positive whole number of pixels, got {max_pixels!r}")
    return int(max_pixels)
