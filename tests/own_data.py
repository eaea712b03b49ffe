"""Small generated datasets in the user's own layouts: class folders, arrays, list files.

Every class has its own fixed random 8x8 pattern; each image is that pattern plus noise, so a
small MLP learns them within a few epochs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("zebra", "ant", "moth")  # not in sorted order: indices follow sorted(CLASSES)
SIZE = 8


def patterns(n_classes: int = len(CLASSES), size: int = SIZE, channels: int = 1, seed: int = 0) -> np.ndarray:
    """``(K, size, size, channels)`` uint8 class patterns."""
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n_classes, size, size, channels)).astype(np.uint8)


def images(label: int, n: int, seed: int, channels: int = 1, noise: float = 40.0, size: int = SIZE) -> np.ndarray:
    """``(n, size, size, channels)`` uint8 images of class ``label``."""
    rng = np.random.default_rng(seed)
    base = patterns(channels=channels, size=size)[label].astype(np.float64)
    return np.clip(base + rng.normal(0, noise, (n, size, size, channels)), 0, 255).astype(np.uint8)


def save(arr: np.ndarray, path: Path) -> None:
    """One ``(H, W, C)`` uint8 image to ``path`` (grayscale when C is 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).save(path)


def write_class_folders(root: Path, per_class: int, seed: int, channels: int = 1, classes=CLASSES,
                        ext: str = "png", marker: int | None = None, noise: float = 40.0) -> Path:
    """``root/<class>/<i>.<ext>``; ``marker`` sets the top-left pixel of every image (to recognise them later)."""
    for k, name in enumerate(classes):
        label = sorted(CLASSES).index(name) if name in CLASSES else k
        for i, img in enumerate(images(label, per_class, seed + 100 * k, channels, noise)):
            if marker is not None:
                img[0, 0] = marker
            save(img, root / name / f"{i:03d}.{ext}")
    return root


def write_split_folders(root: Path, train: int = 20, val: int = 6, test: int = 10, seed: int = 0,
                        channels: int = 1, noise: float = 40.0) -> Path:
    """``root/train``, ``root/val``, ``root/test``, each with one folder per class."""
    for offset, (split, n) in enumerate((("train", train), ("val", val), ("test", test))):
        if n:
            write_class_folders(root / split, n, seed + 17 * offset, channels, noise=noise)
    return root


def write_list(root: Path, name: str, per_class: int, seed: int) -> Path:
    """Images under ``root/imgs`` and a list file ``root/<name>`` of ``imgs/x.png <class name>`` lines."""
    lines = []
    for k, cls in enumerate(CLASSES):
        for i, img in enumerate(images(sorted(CLASSES).index(cls), per_class, seed + 100 * k)):
            rel = f"imgs/{name}-{cls}-{i}.png"
            save(img, root / rel)
            lines.append(f"{rel} {cls}")
    (root / name).write_text("\n".join(lines) + "\n")
    return root / name


def arrays_of(per_class: int, seed: int, channels: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """``(x (N, H, W, C) uint8, y (N,) class names)`` in class order."""
    xs, ys = [], []
    for k, cls in enumerate(CLASSES):
        xs.append(images(sorted(CLASSES).index(cls), per_class, seed + 100 * k, channels))
        ys += [cls] * per_class
    return np.concatenate(xs), np.array(ys)
