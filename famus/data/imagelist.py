"""Image-list datasets: text files of ``relative/path.jpg label`` lines.

This is the annotation layout of Clothing1M, WebVision and CNWL. The label is an integer class
index or a class name (:mod:`famus.data.labels`). Images are decoded with Pillow
(:mod:`famus.data.images`) into one uint8 tensor.
"""

from __future__ import annotations

import os
from pathlib import Path

from famus.data.datasets import DATASETS, Dataset, _finish
from famus.data.errors import DataError
from famus.data.images import load_image_splits
from famus.data.labels import class_names_of, is_integer_token, map_labels


def read_list(path: str | os.PathLike[str]) -> tuple[list[str], list[str], list[int]]:
    """Parse an annotation list.

    Blank lines and lines starting with ``#`` are skipped. The label is the last
    whitespace-separated token, so paths may contain spaces.

    Returns:
        ``(paths, label_tokens, line_numbers)`` in file order; a token is an integer index or a class name.

    Raises:
        DataError: missing file or a malformed line (with its 1-based line number).
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"image list {path} not found; pass train_list=/test_list= (relative to --data-dir)")
    paths: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            parts = text.rsplit(maxsplit=1)
            if len(parts) != 2:
                raise DataError(
                    f"bad line {number} in {path}: expected '<relative/path> <label>' (an integer or a class "
                    f"name), got {text[:80]!r}; fix or remove that line"
                )
            paths.append(parts[0])
            labels.append(parts[1])
            lines.append(number)
    return paths, labels, lines


class ImageList:
    """One parsed list file: image files (resolved against ``root``), label tokens, and where each came from."""

    def __init__(self, list_path: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
        self.list_path = Path(list_path)
        paths, self.tokens, lines = read_list(self.list_path)
        self.paths = paths  # as written in the list (for example_scores.csv)
        self.files = [Path(root) / p for p in paths]
        self.wheres = [f" (line {n} of {self.list_path})" for n in lines]

    def where(self, i: int) -> str:
        """Where label ``i`` came from, for error messages."""
        return self.wheres[i].strip(" ()")

    def __len__(self) -> int:
        return len(self.files)


def check_nonempty(lst: ImageList) -> None:
    """A training list needs at least one line."""
    if not len(lst):
        raise DataError(f"image list {lst.list_path} is empty; add '<path> <label>' lines")


def read_classes(classes: str | os.PathLike[str] | list[str] | None, root: Path) -> list[str] | None:
    """A class list given as names, or as a text file (relative to ``root``) of one name per line."""
    if classes is None or isinstance(classes, list):
        return classes
    path = root / classes
    if not path.is_file():
        raise DataError(f"class list {path} not found; pass classes=[name, ...] or a file of one name per line")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


@DATASETS.register("listfile")
def listfile(
    data_dir: str | None = None,
    train_list: str = "train.txt",
    test_list: str = "test.txt",
    val_list: str | None = None,
    image_size: int | list[int] | None = 32,
    num_classes: int | None = None,
    channels: int | None = None,
    classes: str | list[str] | None = None,
    workers: int = 8,
) -> Dataset:
    """Images named in ``relative/path.jpg label`` list files.

    Args:
        data_dir: root the image paths (and relative list paths) are relative to; default cwd.
        train_list, test_list: list files (relative to ``data_dir`` unless absolute).
        val_list: optional validation list (used for model selection).
        image_size: side S, or ``[H, W]``, of the uint8 output; ``None`` keeps the first image's size.
        num_classes: with integer labels; default ``max label + 1`` over all lists.
        channels: 1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale, else 3.
        classes: class names in index order (a list, or a file of one name per line); default: with
            class-name labels, the training list's names in sorted order.
        workers: decoding threads.
    """
    root = Path(data_dir or ".")
    lists = {"train": ImageList(root / train_list, root), "test": ImageList(root / test_list, root)}
    if val_list is not None:
        lists["val"] = ImageList(root / val_list, root)
    check_nonempty(lists["train"])
    names = class_names_of(lists["train"].tokens, read_classes(classes, root))
    if names is None:
        top = max((int(t) + 1 for lst in lists.values() for t in lst.tokens if is_integer_token(t)), default=0)
        if num_classes is None:
            num_classes = top
        elif top > num_classes:
            raise DataError(f"image lists contain label {top - 1} but num_classes={num_classes}; raise num_classes")
    elif num_classes is not None and num_classes != len(names):
        raise DataError(f"num_classes={num_classes} but the labels name {len(names)} classes; drop num_classes")
    else:
        num_classes = len(names)
    labels = {k: map_labels(lst.tokens, names, num_classes, lst.where) for k, lst in lists.items()}
    images = load_image_splits({k: (lst.files, lst.wheres) for k, lst in lists.items()}, channels, image_size,
                               workers, f"listfile {root / train_list}")
    extra = {}
    if "val" in lists:
        extra.update(val_x=images["val"], val_y=labels["val"], val_paths=lists["val"].paths)
    return _finish("listfile", (images["train"], labels["train"]), (images["test"], labels["test"]), num_classes,
                   names, train_paths=lists["train"].paths, test_paths=lists["test"].paths, **extra)
