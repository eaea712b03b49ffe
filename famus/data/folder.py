"""``folder``: images in one sub-folder per class, ``root/<class_name>/*.png``.

Layouts (``--data-dir root``)::

    root/cat/1.png, root/dog/2.jpg, ...               training images only (no test set)
    root/train/cat/..., root/val/..., root/test/...   with optional val/ (model selection) and test/

Image files are ``.png``, ``.jpg``, ``.jpeg``, ``.bmp``, ``.gif`` and ``.webp`` (any case), found
recursively under each class folder; other files are ignored. Class names map to indices in
sorted order (taken from the training folders); a ``val/`` or ``test/`` class must be one of them.
Class folder and image names must be valid UTF-8 (they are written to ``classes.json`` and
``example_scores.csv``): one that is not is refused at load, naming it.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from famus.data.datasets import DATASETS, Dataset, _finish
from famus.data.errors import DataError, is_utf8, shown
from famus.data.images import IMAGE_EXTENSIONS, is_image_file, load_image_splits
from famus.data.labels import map_labels

SPLITS = ("train", "val", "test")


class ClassFolders:
    """One split's image files (sorted by class, then path) and their class-name tokens.

    Raises:
        DataError: no class folders, image files outside class folders, an empty class folder, or a class folder
            or image whose name is not valid UTF-8.
    """

    def __init__(self, root: Path, base: Path | None = None) -> None:
        self.root = root
        self.base = base or root  # paths are written relative to this (the data root)
        if not root.is_dir():
            raise DataError(f"{root} is not a folder; pass --data-dir ROOT holding one folder per class")
        dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
        loose = sorted(p.name for p in root.iterdir() if p.is_file() and is_image_file(p))
        if loose:
            raise DataError(f"{root} holds images outside class folders ({loose[0]}, ...); move each image into "
                            f"{root}/<class_name>/")
        if not dirs:
            raise DataError(f"{root} has no class folders; put images in {root}/<class_name>/")
        self.class_names = [d.name for d in dirs]
        self.files: list[Path] = []
        self.tokens: list[str] = []
        for d in dirs:
            files = sorted(p for p in d.rglob("*") if p.is_file() and is_image_file(p))
            if not files:
                raise DataError(f"class folder {shown(d)} has no images ({', '.join(IMAGE_EXTENSIONS)}); add images "
                                "or remove the folder")
            for f in (d, *files):
                _check_utf8(f, root)
            self.files += files
            self.tokens += [d.name] * len(files)

    @property
    def paths(self) -> list[str]:
        """Each image's path relative to the data root (e.g. ``train/cat/1.png``)."""
        return [str(f.relative_to(self.base)) for f in self.files]

    def wheres(self) -> list[str]:
        return [""] * len(self.files)

    def labels(self, class_names: list[str]) -> Tensor:
        """int64 ``(N,)`` indices of this split's classes among ``class_names`` (the training classes)."""
        def where(i: int) -> str:
            return f"class folder {self.files[i].relative_to(self.root).parts[0]} in {self.root}"

        return map_labels(self.tokens, class_names, None, where)


def _check_utf8(path: Path, root: Path) -> None:
    """Refuse a class folder or image whose name (below ``root``) is not valid UTF-8, naming it escaped."""
    rel = path.relative_to(root)
    if not is_utf8(str(rel)):
        kind = "class folder" if path.is_dir() else "image"
        raise DataError(f"the {kind} {shown(path)} has a name that is not valid UTF-8; rename it (famus writes "
                        "class names and image paths to UTF-8 files: classes.json, example_scores.csv)")


def find_splits(root: Path) -> dict[str, Path]:
    """``{"train": ...}`` plus ``"val"`` and ``"test"`` where those sub-folders exist."""
    if not root.is_dir():
        raise DataError(f"--data-dir {root} is not a folder; pass the folder holding one sub-folder per class")
    present = {s: root / s for s in SPLITS if (root / s).is_dir()}
    if "train" not in present:
        if present:
            raise DataError(f"{root} has {'/'.join(present)}/ but no train/; add {root}/train/<class_name>/ or "
                            "drop the split folders")
        return {"train": root}
    others = sorted(p.name for p in root.iterdir() if p.is_dir() and p.name not in SPLITS and p.name[0] != ".")
    if others:
        raise DataError(f"{root} mixes split folders (train/) with other folders ({', '.join(others)}); put class "
                        f"folders inside {root}/train/")
    return present


@DATASETS.register("folder")
def folder(
    data_dir: str | None = None,
    image_size: int | list[int] | None = None,
    channels: int | None = None,
    workers: int = 8,
    max_pixels: int | None = None,
) -> Dataset:
    """Images in ``root/<class_name>/`` (optionally under ``train/``, ``val/``, ``test/``).

    Args:
        data_dir: the root folder.
        image_size: side S, or ``[H, W]``; default: the first training image's size (others are resized).
        channels: 1 or 3; default: 1 when every image is grayscale, else 3 (alpha is dropped).
        workers: decoding threads.
        max_pixels: the most pixels an image may have (default :data:`famus.data.images.DEFAULT_MAX_PIXELS`).

    Returns:
        A :class:`Dataset` whose ``class_names`` are the training folders' names in sorted order;
        an empty test split when there is no ``test/``.
    """
    if data_dir is None:
        raise DataError("dataset 'folder' needs --data-dir ROOT (ROOT/<class_name>/*.png)")
    root = Path(data_dir)
    splits = {name: ClassFolders(path, root) for name, path in find_splits(root).items()}
    names = splits["train"].class_names
    labels = {name: s.labels(names) for name, s in splits.items()}
    images = load_image_splits({name: (s.files, s.wheres()) for name, s in splits.items()}, channels, image_size,
                               workers, f"folder {shown(root)}", max_pixels)
    if "test" in splits:
        test = images["test"], labels["test"]
    else:
        x = images["train"]
        test = x.new_empty((0, *x.shape[1:])), torch.empty(0, dtype=torch.long)
    extra = {"train_paths": splits["train"].paths}
    if "test" in splits:
        extra["test_paths"] = splits["test"].paths
    if "val" in splits:
        extra.update(val_x=images["val"], val_y=labels["val"], val_paths=splits["val"].paths)
    return _finish("folder", (images["train"], labels["train"]), test, len(names), names, **extra)
