"""``arrays``: images or feature vectors with labels, from ``.npz`` files or ``.npy`` pairs.

Examples:

* images: uint8 ``(N, H, W)`` (one channel), ``(N, C, H, W)`` or ``(N, H, W, C)`` (C = 1, 3 or 4;
  the layout is guessed from which axis has 1, 3 or 4 entries, or set with ``layout``);
* feature vectors: numeric ``(N, D)``, held as float32 ``(N, D, 1, 1)`` (use ``--model mlp``).

Labels: 1-D integer indices or class names (strings; indices in sorted order of the names, or the
order of ``classes``). Integer labels give ``max + 1`` classes when every class below the maximum
occurs; sparse ones need ``num_classes``. Arrays are read with ``allow_pickle=False``: object arrays
are refused, and so is an array whose header asks for more than the memory budget
(:func:`famus.data.memory.memory_budget`), before it is read. NaN or inf features are refused.

Where the splits come from (``--data-dir PATH``, or the ``train``/``val``/``test`` options, each
an ``.npz`` file or an ``X.npy,Y.npy`` pair, relative to ``--data-dir``):

* ``PATH`` an ``.npz`` file: keys ``x``/``y`` (or ``images``, ``features``, ``data`` / ``labels``,
  ``targets``) are the training split; ``x_train``/``y_train`` (or ``train_x``...), ``x_val``,
  ``x_test`` the named splits; an optional ``classes`` key holds the class names;
* ``PATH`` a folder: ``train.npz`` (or ``train_x.npy`` + ``train_y.npy``, ``x_train.npy`` +
  ``y_train.npy``), and optionally ``val.*`` and ``test.*`` likewise.
"""

from __future__ import annotations

import math
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from famus.data.datasets import DATASETS, Dataset, _finish
from famus.data.errors import DataError, check_regular_file, shown
from famus.data.images import convert_channels
from famus.data.labels import check_num_classes, class_names_of, infer_num_classes, map_label_array
from famus.data.memory import memory_budget, size_text

X_KEYS = ("x", "images", "features", "data", "X")
Y_KEYS = ("y", "labels", "targets", "Y")
NAME_KEYS = ("classes", "class_names")


@dataclass
class ArraySource:
    """Examples ``x`` and labels ``y`` as read (numpy), the class names stored beside them, and where from."""

    x: np.ndarray
    y: np.ndarray
    names: list[str] | None
    where: str


def _unreadable(path: Path, exc: Exception) -> DataError:
    detail = shown(" ".join(str(exc).split()), 200)
    return DataError(f"{shown(path)} is not a readable .npy/.npz file of plain arrays ({detail}); re-save it with "
                     "numpy.savez (no object arrays)")


def _check_header(f: Any, where: str) -> None:
    """Refuse an ``.npy`` stream whose header asks for more bytes than the memory budget, before reading it."""
    try:
        version = np.lib.format.read_magic(f)
        shape, _fortran, dtype = (np.lib.format.read_array_header_1_0(f) if version == (1, 0)
                                  else np.lib.format.read_array_header_2_0(f))
    except (ValueError, OSError, EOFError, SyntaxError) as exc:
        raise DataError(f"{where} is not a readable .npy array ({shown(str(exc), 200)}); re-save it with numpy.savez"
                        ) from None
    need = math.prod(shape) * dtype.itemsize
    budget = memory_budget()
    if budget is not None and need > budget.bytes:
        raise DataError(f"{where} holds an array of shape {shape} ({dtype}), {size_text(need)}: more than "
                        f"{budget.why}; use a smaller dataset")


def _load(path: Path) -> Any:
    check_regular_file(path, "array file", "check --data-dir and the file name")
    try:
        if not zipfile.is_zipfile(path):
            with open(path, "rb") as f:
                _check_header(f, shown(path))
        return np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise _unreadable(path, exc) from exc


def _member(npz: Any, key: str, path: Path) -> np.ndarray:
    """``npz[key]``, its header checked against the memory budget first."""
    try:
        with npz.zip.open(key if key in npz.zip.namelist() else f"{key}.npy") as f:
            _check_header(f, f"{shown(path)} [{key}]")
        return npz[key]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise _unreadable(path, exc) from exc


def _pick(keys: list[str], names: tuple[str, ...], split: str | None) -> str | None:
    forms = [n for n in names] if split is None else [f"{n}_{split}" for n in names] + [f"{split}_{n}" for n in names]
    return next((k for k in forms if k in keys), None)


def from_npz(path: Path, split: str | None) -> ArraySource | None:
    """The ``split``'s arrays of an ``.npz`` (``split=None``: the plain keys); None when it has none."""
    npz = _load(path)
    if isinstance(npz, np.ndarray):
        raise DataError(f"{path} holds one array; give an .npz with keys x and y, or an 'X.npy,Y.npy' pair")
    with npz:
        keys = list(npz.keys())
        kx, ky = _pick(keys, X_KEYS, split), _pick(keys, Y_KEYS, split)
        if kx is None or ky is None:
            return None
        kn = next((k for k in NAME_KEYS if k in keys), None)
        # arrays are read here: an object array is refused now (allow_pickle=False)
        names = [str(n) for n in _member(npz, kn, path).tolist()] if kn else None
        return ArraySource(_member(npz, kx, path), _member(npz, ky, path), names, f"{shown(path)} [{kx}, {ky}]")


def from_spec(spec: str | list[str], root: Path) -> ArraySource:
    """One split from an ``.npz`` path or an ``X.npy,Y.npy`` pair (a list or a comma-separated string)."""
    parts = spec if isinstance(spec, list) else [s.strip() for s in str(spec).split(",")]
    if len(parts) == 2:
        px, py = root / parts[0], root / parts[1]
        x, y = _load(px), _load(py)
        if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray)):
            raise DataError(f"{px} and {py} must be .npy files of one array each (examples, labels)")
        return ArraySource(x, y, None, f"{shown(px)} + {shown(py)}")
    path = root / parts[0]
    src = from_npz(path, None) if len(parts) == 1 and path.suffix == ".npz" else None
    if src is None:
        raise DataError(f"cannot read examples and labels from {spec!r}: give an .npz with keys x and y (or images/"
                        "labels, features/labels) or an 'X.npy,Y.npy' pair")
    return src


def find_split(root: Path, split: str) -> ArraySource | None:
    """``split``'s arrays in a folder (``split.npz``, ``split_x.npy`` + ``split_y.npy``, ``x_split.npy`` + ...)
    or in one ``.npz`` file holding every split; None when there are none."""
    if root.is_file():
        src = from_npz(root, split)
        return from_npz(root, None) if src is None and split == "train" else src
    if (root / f"{split}.npz").is_file():
        return from_spec(f"{split}.npz", root)
    for fx, fy in ((f"{split}_x.npy", f"{split}_y.npy"), (f"x_{split}.npy", f"y_{split}.npy")):
        if (root / fx).is_file() and (root / fy).is_file():
            return from_spec([fx, fy], root)
    return None


def to_examples(x: np.ndarray, where: str, layout: str | None = None) -> Tensor:
    """uint8 ``(N, C, H, W)`` images or float32 ``(N, D, 1, 1)`` features from an array as stored."""
    if x.ndim == 2:
        if x.dtype.kind not in "biuf":
            raise DataError(f"feature vectors in {where} must be numbers, got {x.dtype}")
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).view(x.shape[0], x.shape[1], 1, 1)
    if x.ndim not in (3, 4):
        raise DataError(f"examples in {where} have shape {x.shape}; expected (N, D) features or (N, H, W), "
                        "(N, C, H, W), (N, H, W, C) images")
    if x.dtype != np.uint8:
        raise DataError(f"images in {where} are {x.dtype}; famus keeps images as uint8 0-255: convert them, e.g. "
                        "(x * 255).round().astype(numpy.uint8)")
    if x.ndim == 3:
        return torch.from_numpy(np.ascontiguousarray(x)).unsqueeze(1)
    layout = layout or _guess_layout(x.shape, where)
    if layout not in ("nchw", "nhwc"):
        raise DataError(f"layout must be 'nchw' or 'nhwc', got {layout!r}")
    t = torch.from_numpy(np.ascontiguousarray(x))
    return t.permute(0, 3, 1, 2).contiguous() if layout == "nhwc" else t


def _guess_layout(shape: tuple[int, ...], where: str) -> str:
    first, last = shape[1] in (1, 3, 4), shape[3] in (1, 3, 4)
    if first != last:
        return "nchw" if first else "nhwc"
    raise DataError(f"cannot tell the channel axis of images of shape {shape} in {where}; pass "
                    "dataset_options.layout=nchw or nhwc")


@DATASETS.register("arrays")
def arrays(
    data_dir: str | None = None,
    train: str | list[str] | None = None,
    val: str | list[str] | None = None,
    test: str | list[str] | None = None,
    layout: str | None = None,
    channels: int | None = None,
    classes: list[str] | None = None,
    num_classes: int | None = None,
) -> Dataset:
    """Images or feature vectors from ``.npz``/``.npy`` files (see the module docstring).

    Args:
        data_dir: an ``.npz`` file or a folder (the root of relative ``train``/``val``/``test``).
        train, val, test: explicit sources (an ``.npz`` or an ``X.npy,Y.npy`` pair).
        layout: ``nchw`` or ``nhwc`` for 4-D image arrays (default: guessed).
        channels: convert images to 1 or 3 channels (default: keep them; a 4th, alpha, channel is dropped).
        classes: class names in index order (default: a ``classes`` array in the file, or the sorted
            names of string labels).
        num_classes: with integer labels; default ``max label + 1`` over all splits, when every class below
            it occurs (sparse labels need ``num_classes`` to confirm the count).
    """
    root = Path(data_dir or ".")
    given = {"train": train, "val": val, "test": test}
    sources = {s: from_spec(spec, root if root.is_dir() else root.parent) if spec is not None else find_split(root, s)
               for s, spec in given.items()}
    if sources["train"] is None:
        raise DataError(f"no training arrays in {root}; give an .npz with keys x and y (or x_train/y_train), a "
                        "folder with train.npz, or dataset_options.train=FILE")
    found = {s: src for s, src in sources.items() if src is not None}
    if not len(found["train"].y):
        raise DataError(f"{found['train'].where} holds no examples; the training split needs some")
    xs = {s: to_examples(src.x, src.where, layout) for s, src in found.items()}
    xs = {s: _set_channels(x, channels, found[s].where) for s, x in xs.items()}
    train_src = found["train"]
    names = class_names_of([str(t) for t in np.unique(train_src.y)] if train_src.y.dtype.kind in "US" else [],
                           classes or train_src.names)
    num_classes = check_num_classes(num_classes)
    if names and num_classes is not None and num_classes != len(names):
        raise DataError(f"num_classes={num_classes} but the labels name {len(names)} classes; drop num_classes")
    # integer labels: negative ones (and, with num_classes, those >= it) are refused here, naming the example
    ys = {s: map_label_array(src.y, names, None if names else num_classes, src.where) for s, src in found.items()}
    top = len(names) if names else infer_num_classes(torch.cat(list(ys.values())).unique().tolist(), num_classes,
                                                     found["train"].where)
    for s in found:
        if xs[s].shape[0] != ys[s].shape[0]:
            raise DataError(f"{found[s].where}: {xs[s].shape[0]} examples but {ys[s].shape[0]} labels")
        if xs[s].shape[1:] != xs["train"].shape[1:]:
            raise DataError(f"{found[s].where}: examples of shape {tuple(xs[s].shape[1:])}, but the training ones are "
                            f"{tuple(xs['train'].shape[1:])}")
    x = xs["train"]
    test_split = (xs["test"], ys["test"]) if "test" in xs else (x.new_empty((0, *x.shape[1:])), ys["train"][:0])
    extra = {"val_x": xs["val"], "val_y": ys["val"]} if "val" in xs else {}
    return _finish("arrays", (x, ys["train"]), test_split, top, names, **extra)


def _set_channels(x: Tensor, channels: int | None, where: str) -> Tensor:
    if x.dtype == torch.float32:
        if channels is not None:
            raise DataError(f"{where} holds feature vectors; dataset_options.channels applies to images only")
        return x
    if channels is None:
        return convert_channels(x, 3) if x.shape[1] == 4 else x
    return convert_channels(x, channels)
