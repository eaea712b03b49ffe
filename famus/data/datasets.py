"""In-memory datasets and their loaders.

A :class:`Dataset` holds whole splits as uint8 tensors, so batching is a single index
operation and augmentation runs batched in torch (see :mod:`famus.data.augment`).
Feature vectors (``arrays`` of shape (N, D)) are held as float32 (N, D, 1, 1).
Normalisation constants are always computed from the TRAINING split (exactly, from
per-channel byte histograms), so every loader — including custom image lists — is
normalised the same way; for CIFAR-10 they match the usual (0.4914, 0.4822, 0.4465) /
(0.2470, 0.2435, 0.2616).

Your own data: ``folder`` (:mod:`famus.data.folder`), ``arrays`` (:mod:`famus.data.arrays`) and
``listfile`` (here), registered on import of :mod:`famus.data`.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from famus.data.errors import DataError, is_utf8, shown
from famus.data.idx import read_idx
from famus.data.safe_pickle import safe_load
from famus.data.split import stratified_split
from famus.registry import Registry


@dataclass(repr=False)
class Dataset:
    """A labelled image (or feature-vector) dataset held in memory.

    Attributes:
        name: registry name it was loaded with.
        train_x: uint8 (N, C, H, W) images, or float32 (N, D, 1, 1) feature vectors.
        train_y: int64 (N,) labels in ``[0, num_classes)``.
        test_x: like ``train_x``, (M, ...); M may be 0 (no test set).
        test_y: int64 (M,).
        num_classes: number of classes K.
        mean: per-channel mean on the 0-1 scale (features: on their own scale), length C (from the training split).
        std: per-channel std on the same scale, length C.
        class_names: K names (index order), or None when unknown.
        val_x, val_y: a validation split given with the data (a ``val/`` folder), or None.
        train_paths, val_paths, test_paths: each example's file (relative to the data root), or None.
        flip: whether random horizontal flips suit these images (CIFAR: yes; your own data: opt-in).
    """

    name: str
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    class_names: list[str] | None = None
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    train_paths: list[str] | None = None
    val_paths: list[str] | None = None
    test_paths: list[str] | None = None
    flip: bool = False

    def __post_init__(self) -> None:
        splits = [("train", self.train_x, self.train_y), ("test", self.test_x, self.test_y)]
        if self.val_x is not None:
            splits.append(("val", self.val_x, self.val_y))
        for split, x, y in splits:
            _check_split(split, x, y, self.num_classes)
            check_finite_features(x, f"dataset {self.name!r}: the {split} split")
            if x.shape[1:] != self.train_x.shape[1:] or x.dtype != self.train_x.dtype:
                raise ValueError(
                    f"train/{split} shapes differ: {tuple(self.train_x.shape[1:])} vs {tuple(x.shape[1:])}"
                )
        if not len(self.mean) == len(self.std) == self.channels:
            raise ValueError(f"mean/std need {self.channels} entries, got {len(self.mean)}/{len(self.std)}")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"class_names has {len(self.class_names)} entries, expected {self.num_classes}")
        # class names and paths go to UTF-8 files (classes.json, example_scores.csv): refuse now, not after training
        for what, names in (("class name", self.class_names), ("train path", self.train_paths),
                            ("val path", self.val_paths), ("test path", self.test_paths)):
            bad = next((n for n in names or () if not is_utf8(n)), None)
            if bad is not None:
                raise DataError(f"dataset {self.name!r}: the {what} {shown(bad)} is not valid UTF-8 (a file name "
                                "in another encoding?); rename it")
        for split, paths, x in (("train", self.train_paths, self.train_x), ("val", self.val_paths, self.val_x),
                                ("test", self.test_paths, self.test_x)):
            if paths is not None and (x is None or len(paths) != x.shape[0]):
                n = 0 if x is None else x.shape[0]
                raise ValueError(f"{split}_paths has {len(paths)} entries for {n} examples")

    @property
    def is_features(self) -> bool:
        """Whether the examples are feature vectors (float32 (N, D, 1, 1)) rather than uint8 images."""
        return self.train_x.dtype == torch.float32

    @property
    def channels(self) -> int:
        """Number of image channels C (feature vectors: the dimension D)."""
        return int(self.train_x.shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)``."""
        return int(self.train_x.shape[2]), int(self.train_x.shape[3])

    def __repr__(self) -> str:
        shape = "x".join(str(s) for s in self.train_x.shape[1:])
        val = "" if self.val_x is None else f", val={self.val_x.shape[0]}"
        return (
            f"Dataset({self.name!r}, train={self.train_x.shape[0]}{val}, test={self.test_x.shape[0]}, "
            f"{'features' if self.is_features else 'image'}={shape}, classes={self.num_classes})"
        )


def _check_split(split: str, x: Tensor, y: Tensor | None, num_classes: int) -> None:
    """uint8 (N, C, H, W) images or float32 (N, D, 1, 1) features, with int64 (N,) labels in range."""
    images = x.dtype == torch.uint8 and x.dim() == 4
    features = x.dtype == torch.float32 and x.dim() == 4 and tuple(x.shape[2:]) == (1, 1)
    if not (images or features):
        raise ValueError(
            f"{split}_x must be uint8 (N, C, H, W) images or float32 (N, D, 1, 1) features, "
            f"got {x.dtype} {tuple(x.shape)}"
        )
    if y is None or y.dtype != torch.int64 or y.shape != (x.shape[0],):
        got = None if y is None else f"{y.dtype} {tuple(y.shape)}"
        raise ValueError(f"{split}_y must be int64 ({x.shape[0]},), got {got}")
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{split}_y has labels outside [0, {num_classes})")


def check_finite_features(x: Tensor, what: str) -> None:
    """Refuse float features holding NaN or inf, naming ``what`` (e.g. ``"the test split"``) and the count."""
    if not x.is_floating_point():
        return
    bad = ~torch.isfinite(x.flatten(1))
    count = int(bad.sum())
    if count:
        rows = bad.any(1)
        raise DataError(f"{what} holds {count} NaN or inf feature values (in {int(rows.sum())} of {x.shape[0]} "
                        f"examples, the first is example {int(rows.nonzero()[0, 0])}); fix or drop those examples")


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Exact per-channel mean and std: on the 0-1 scale for uint8 images (N, C, H, W), on their own
    scale for float32 features (N, D, 1, 1).

    For images a 256-bin histogram per channel, so no float copy of the data is made.
    """
    if x.dtype == torch.float32 and x.dim() == 4:
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()
        std = flat.std(1, unbiased=False) if flat.shape[1] else torch.ones(x.shape[1], dtype=torch.float64)
        mean = flat.mean(1) if flat.shape[1] else torch.zeros(x.shape[1], dtype=torch.float64)
        # a constant feature is left as it is (std 1) rather than blown up
        return tuple(mean.tolist()), tuple(torch.where(std > 1e-8, std, torch.ones_like(std)).tolist())
    if x.dtype != torch.uint8 or x.dim() != 4:
        raise ValueError(f"expected uint8 (N, C, H, W), got {x.dtype} {tuple(x.shape)}")
    values = torch.arange(256, dtype=torch.float64) / 255.0
    means, stds = [], []
    for c in range(x.shape[1]):  # loop over channels (1 or 3), not examples
        hist = torch.bincount(x[:, c].reshape(-1), minlength=256).to(torch.float64).cpu()
        n = hist.sum().clamp_min(1)
        mean = (hist * values).sum() / n
        var = (hist * (values - mean) ** 2).sum() / n
        means.append(float(mean))
        # A constant channel would divide by zero when normalising.
        stds.append(max(float(var.sqrt()), 1e-8))
    return tuple(means), tuple(stds)


def _finish(
    name: str,
    train: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    class_names: list[str] | None,
    **extra: Any,
) -> Dataset:
    """A :class:`Dataset` normalised with the training split's statistics (``extra``: val, paths, flip)."""
    mean, std = channel_stats(train[0])
    return Dataset(name, train[0], train[1], test[0], test[1], num_classes, mean, std, class_names, **extra)


# Loaders take (data_dir, **options) and return a Dataset.
DATASETS: Registry[Callable[..., Dataset]] = Registry("dataset")


def load_dataset(name: str, data_dir: str | os.PathLike[str] | None = None, **options: Any) -> Dataset:
    """Load the registered dataset ``name`` (see ``DATASETS.names()``).

    Args:
        name: ``fashion-mnist``, ``cifar10``, ``cifar100``, ``digits``, ``listfile``, ``folder`` or ``arrays``.
        data_dir: where the files are; None uses the loader's default.
        **options: loader-specific options (e.g. ``seed`` for digits, ``train_list`` for listfile).

    Returns:
        :class:`Dataset` with uint8 (N, C, H, W) images and int64 labels.

    Raises:
        UnknownNameError: unknown name (lists the valid ones).
        DataError: missing/corrupt files or an unknown option.
    """
    loader = DATASETS.get(name)
    valid = [p for p in inspect.signature(loader).parameters if p != "data_dir"]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise DataError(
            f"dataset {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    if data_dir is not None:
        data_dir = os.path.expanduser(os.fspath(data_dir))
    return loader(data_dir=data_dir, **options)


# --------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_CLASSES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]


def _find_idx(root: Path, base: str) -> Path:
    # Also accept torchvision's FashionMNIST/raw layout under the given directory.
    for folder in (root, root / "raw", root / "FashionMNIST" / "raw"):
        for candidate in (folder / f"{base}.gz", folder / base):
            if candidate.is_file():
                return candidate
    raise DataError(
        f"fashion-mnist: {base}(.gz) not found in {root}; install it with "
        f"`apt-get install dataset-fashion-mnist` or pass --data-dir DIR holding the IDX files"
    )


def _idx_split(root: Path, prefix: str) -> tuple[Tensor, Tensor]:
    images_path = _find_idx(root, f"{prefix}-images-idx3-ubyte")
    labels_path = _find_idx(root, f"{prefix}-labels-idx1-ubyte")
    x, y = read_idx(images_path), read_idx(labels_path)
    if x.dtype != torch.uint8 or x.dim() != 3:
        raise DataError(
            f"{images_path} is corrupt (expected uint8 N x H x W images, got {x.dtype} {tuple(x.shape)})"
        )
    if y.dtype != torch.uint8 or y.dim() != 1 or y.numel() != x.shape[0]:
        raise DataError(
            f"{labels_path} is corrupt (expected {x.shape[0]} uint8 labels, got {tuple(y.shape)}); "
            "re-download"
        )
    if y.numel() and int(y.max()) >= 10:
        raise DataError(f"{labels_path} is corrupt (label {int(y.max())} >= 10); re-download")
    return x.unsqueeze(1).contiguous(), y.long()


@DATASETS.register("fashion-mnist")
def fashion_mnist(data_dir: str | None = None) -> Dataset:
    """Fashion-MNIST: uint8 (60000, 1, 28, 28) train, (10000, 1, 28, 28) test, 10 classes.

    ``data_dir`` (default ``/usr/share/datasets/fashion-mnist``, Debian package
    ``dataset-fashion-mnist``) holds ``train-images-idx3-ubyte[.gz]``, ``train-labels-idx1-ubyte[.gz]``,
    ``t10k-images-idx3-ubyte[.gz]`` and ``t10k-labels-idx1-ubyte[.gz]``.
    """
    root = Path(data_dir or FASHION_MNIST_DIR)
    return _finish(
        "fashion-mnist", _idx_split(root, "train"), _idx_split(root, "t10k"), 10, FASHION_MNIST_CLASSES
    )


# --------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 ("python version" pickles, read with the restricted unpickler)

CIFAR_URLS = {
    "cifar10": "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    "cifar100": "https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
}


def _get(d: Any, key: str, path: Path) -> Any:
    """``d[key]`` accepting bytes keys (the original files) or str keys."""
    if isinstance(d, dict):
        for k in (key.encode(), key):
            if k in d:
                return d[k]
    raise DataError(f"{path} is corrupt (no {key!r} entry); delete it and re-download")


def _find_cifar(name: str, data_dir: str | None, folder: str, marker: str) -> Path:
    archive = Path(CIFAR_URLS[name]).name
    fix = (
        f"download {CIFAR_URLS[name]}, extract it with `tar xzf {archive} -C DIR` "
        f"and pass --data-dir DIR (or DIR/{folder})"
    )
    if data_dir is None:
        raise DataError(f"{name} has no default location; {fix}")
    root = Path(data_dir)
    for candidate in (root, root / folder):
        if (candidate / marker).is_file():
            return candidate
    if (root / archive).is_file():
        raise DataError(
            f"{name}: found {root / archive} but it is not extracted; "
            f"run `tar xzf {root / archive} -C {root}`"
        )
    raise DataError(f"{name}: {folder}/{marker} not found in {root}; {fix}")


def _cifar_batch(path: Path, label_key: str) -> tuple[Tensor, Tensor]:
    if not path.is_file():
        raise DataError(f"{path} not found (incomplete extraction?); re-extract the CIFAR archive")
    batch = safe_load(path)
    data = _get(batch, "data", path)
    labels = np.asarray(_get(batch, label_key, path))
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{path} is corrupt (data must be uint8 (N, 3072), got {shape}); re-download")
    if labels.shape != (data.shape[0],) or labels.dtype.kind not in "iu":
        raise DataError(f"{path} is corrupt ({label_key} must be {data.shape[0]} integers); re-download")
    # Rows are 1024 red, 1024 green, 1024 blue values in row-major order: exactly (3, 32, 32).
    x = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return x, torch.from_numpy(labels.astype(np.int64))


def _names(meta: Any, key: str, path: Path) -> list[str]:
    return [n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, key, path)]


def _check_range(y: Tensor, num_classes: int, path: Path) -> None:
    if y.numel() and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise DataError(
            f"labels in {path} fall outside [0, {num_classes}); the file is corrupt, re-download it"
        )


@DATASETS.register("cifar10")
def cifar10(data_dir: str | None = None) -> Dataset:
    """CIFAR-10: uint8 (50000, 3, 32, 32) train, (10000, 3, 32, 32) test, 10 classes.

    ``data_dir`` is ``cifar-10-batches-py`` (``data_batch_1..5``, ``test_batch``, ``batches.meta``)
    or its parent.
    """
    root = _find_cifar("cifar10", data_dir, "cifar-10-batches-py", "batches.meta")
    parts = [_cifar_batch(root / f"data_batch_{i}", "labels") for i in range(1, 6)]
    train = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    test = _cifar_batch(root / "test_batch", "labels")
    meta_path = root / "batches.meta"
    names = _names(safe_load(meta_path), "label_names", meta_path)
    if len(names) != 10:
        raise DataError(f"{meta_path} is corrupt ({len(names)} label names, expected 10); re-download")
    _check_range(train[1], 10, root)
    _check_range(test[1], 10, root / "test_batch")
    return _finish("cifar10", train, test, 10, names, flip=True)


@DATASETS.register("cifar100")
def cifar100(data_dir: str | None = None, label_kind: str = "fine") -> Dataset:
    """CIFAR-100: uint8 (50000, 3, 32, 32) train, (10000, 3, 32, 32) test.

    ``data_dir`` is ``cifar-100-python`` (``train``, ``test``, ``meta``) or its parent.
    ``label_kind="fine"`` gives 100 classes, ``"coarse"`` the 20 superclasses.
    """
    if label_kind not in ("fine", "coarse"):
        raise DataError(f"cifar100 label_kind must be 'fine' or 'coarse', got {label_kind!r}")
    root = _find_cifar("cifar100", data_dir, "cifar-100-python", "meta")
    train = _cifar_batch(root / "train", f"{label_kind}_labels")
    test = _cifar_batch(root / "test", f"{label_kind}_labels")
    meta_path = root / "meta"
    names = _names(safe_load(meta_path), f"{label_kind}_label_names", meta_path)
    _check_range(train[1], len(names), root / "train")
    _check_range(test[1], len(names), root / "test")
    return _finish("cifar100", train, test, len(names), names, flip=True)


# --------------------------------------------------------------------------------------------
# scikit-learn digits (bundled, tiny: the default for smoke tests)


@DATASETS.register("digits")
def digits(data_dir: str | None = None, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits (1797 images): uint8 (~1437, 1, 8, 8) train, (~360, 1, 8, 8) test.

    Pixel values 0..16 are scaled to 0..255. The train/test split is stratified and fixed by
    ``seed``. ``data_dir`` is ignored (the data ships with scikit-learn).
    """
    from sklearn.datasets import load_digits  # local: keeps sklearn off the import path of the package

    bunch = load_digits()
    x = torch.from_numpy(np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(bunch.target.astype(np.int64))
    generator = torch.Generator().manual_seed(seed)
    train_idx, test_idx = stratified_split(y, test_fraction, generator, num_classes=10)
    names = [str(i) for i in range(10)]
    return _finish("digits", (x[train_idx], y[train_idx]), (x[test_idx], y[test_idx]), 10, names)
