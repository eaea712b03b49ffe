"""A trusted (clean) set from its own file or folder: ``--meta-data PATH``.

``PATH`` is any of the training data's formats:

* a folder ``PATH/<class_name>/*.png`` (:mod:`famus.data.folder`);
* an ``.npz`` file, or an ``X.npy,Y.npy`` pair (:mod:`famus.data.arrays`);
* any other file: a ``path label`` list (:mod:`famus.data.imagelist`), image paths relative to the
  list's own folder.

Labels are class names of the training data (or integer class indices). Images are decoded to the
training images' channel count and size, so the trusted set is normalised and fed exactly like them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from torch import Tensor

from famus.data.arrays import from_spec, to_examples
from famus.data.datasets import Dataset, check_finite_features
from famus.data.errors import DataError
from famus.data.folder import ClassFolders
from famus.data.imagelist import ImageList
from famus.data.images import convert_channels, load_image_splits
from famus.data.labels import map_label_array, map_labels


@dataclass
class TrustedSet:
    """Examples ``x`` (the training data's dtype and shape), int64 labels ``y`` ``(M,)``, each example's file
    (or None) and the path it was read from."""

    x: Tensor
    y: Tensor
    paths: list[str] | None
    source: str


def load_trusted(path: str | os.PathLike[str], like: Dataset, layout: str | None = None,
                 workers: int = 8) -> TrustedSet:
    """Read a trusted set shaped and labelled like the training data ``like`` (see the module docstring)."""
    text = os.fspath(path)
    p = Path(text).expanduser()
    if "," in text or p.suffix == ".npz":
        return _from_arrays(text, like, layout)
    if not p.exists():
        raise DataError(f"--meta-data {text} not found; give a folder of class folders, an .npz, an 'X.npy,Y.npy' "
                        "pair or a 'path label' list")
    if like.is_features:
        raise DataError(f"the training data are feature vectors, so --meta-data must be an .npz or an 'X.npy,Y.npy' "
                        f"pair, not {text}")
    if p.is_dir():
        folders = ClassFolders(p)
        files, wheres, paths = folders.files, folders.wheres(), folders.paths
        y = map_labels(folders.tokens, like.class_names, like.num_classes,
                       lambda i: f"class folder {folders.files[i].relative_to(p).parts[0]} in {p}")
    else:
        lst = ImageList(p, p.parent)
        if not len(lst):
            raise DataError(f"--meta-data list {p} is empty; add '<path> <label>' lines")
        files, wheres, paths = lst.files, lst.wheres, lst.paths
        y = map_labels(lst.tokens, like.class_names, like.num_classes, lst.where)
    x = load_image_splits({"meta": (files, wheres)}, like.channels, like.image_size, workers,
                          f"--meta-data {text}")["meta"]
    return TrustedSet(x, y, paths, text)


def _from_arrays(text: str, like: Dataset, layout: str | None) -> TrustedSet:
    """An ``.npz`` or ``X.npy,Y.npy`` trusted set, converted to the training data's channels and checked."""
    src = from_spec(text, Path("."))
    x = to_examples(src.x, src.where, layout)
    if x.dtype != like.train_x.dtype:
        kind = "feature vectors" if like.is_features else "images"
        raise DataError(f"--meta-data {text} does not hold {kind} like the training data; give the same kind")
    if not like.is_features:
        x = convert_channels(x, like.channels)
    check_finite_features(x, f"--meta-data {text} (the meta split)")
    if x.shape[1:] != like.train_x.shape[1:]:
        raise DataError(f"--meta-data {text}: examples of shape {tuple(x.shape[1:])}, but the training ones are "
                        f"{tuple(like.train_x.shape[1:])}")
    y = map_label_array(src.y, like.class_names, like.num_classes, src.where)
    if x.shape[0] != y.shape[0]:
        raise DataError(f"--meta-data {text}: {x.shape[0]} examples but {y.shape[0]} labels")
    return TrustedSet(x, y, None, text)
