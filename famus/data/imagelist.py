"""Image-list datasets: text files of ``relative/path.jpg label`` lines.

This is the annotation layout of Clothing1M, WebVision and CNWL. The label is an integer class
index or a class name (:mod:`famus.data.labels`), one kind per file. Images are decoded with Pillow
(:mod:`famus.data.images`) into one uint8 tensor. A list file is UTF-8 text of lines of at most
:data:`MAX_LINE` bytes; anything else is refused naming the file and line.
"""

from __future__ import annotations

import itertools
import os
from pathlib import Path

from famus.data.datasets import DATASETS, Dataset, _finish
from famus.data.errors import DataError, check_regular_file, shown
from famus.data.images import load_image_splits
from famus.data.labels import check_label_kinds, class_names_of, infer_num_classes, is_integer_token, map_labels

MAX_LINE = 8192  # bytes: a path (at most 4096 on Linux) and a label


def read_text_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """``(line number, text)`` of a UTF-8 text file, read line by line (no line longer than :data:`MAX_LINE`
    bytes is ever held); a leading byte-order mark is dropped.

    Raises:
        DataError: not UTF-8, or a line too long (naming the file and line).
    """
    out: list[tuple[int, str]] = []
    with open(path, "rb") as f:
        for number in itertools.count(1):
            raw = f.readline(MAX_LINE + 1)
            if not raw:
                break
            if len(raw) > MAX_LINE:
                raise DataError(f"line {number} of {what} {shown(path)} is longer than {MAX_LINE} bytes "
                                f"({shown(raw[:40].decode('utf-8', 'replace'), 40)}...); is it the right file?")
            try:
                out.append((number, raw.decode("utf-8-sig" if number == 1 else "utf-8")))
            except UnicodeDecodeError as e:
                raise DataError(f"{what} {shown(path)} is not UTF-8 text (line {number}: byte "
                                f"0x{raw[e.start]:02x} at column {e.start + 1}); save it as UTF-8") from None
    return out


def read_list(path: str | os.PathLike[str]) -> tuple[list[str], list[str], list[int]]:
    """Parse an annotation list.

    Blank lines and lines starting with ``#`` are skipped. The label is the last
    whitespace-separated token, so paths may contain spaces.

    Returns:
        ``(paths, label_tokens, line_numbers)`` in file order; a token is an integer index or a class name.

    Raises:
        DataError: missing file, not a regular file or not UTF-8, or a malformed line (with its 1-based line number).
    """
    path = Path(path)
    check_regular_file(path, "image list", "pass train_list=/test_list= (relative to --data-dir)")
    paths: list[str] = []
    labels: list[str] = []
    lines: list[int] = []
    for number, line in read_text_lines(path, "image list"):
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        parts = text.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise DataError(
                f"bad line {number} in {shown(path)}: expected '<relative/path> <label>' (an integer or a class "
                f"name), got {shown(repr(text), 80)}; fix or remove that line"
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
        self.wheres = [f" (line {n} of {shown(self.list_path)})" for n in lines]
        check_label_kinds(self.tokens, self.where, f"image list {shown(self.list_path)}")

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
    check_regular_file(path, "class list", "pass classes=[name, ...] or a file of one name per line")
    return [line.strip() for _n, line in read_text_lines(path, "class list") if line.strip()]


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
    max_pixels: int | None = None,
) -> Dataset:
    """Images named in ``relative/path.jpg label`` list files.

    Args:
        data_dir: root the image paths (and relative list paths) are relative to; default cwd.
        train_list, test_list: list files (relative to ``data_dir`` unless absolute).
        val_list: optional validation list (used for model selection).
        image_size: side S, or ``[H, W]``, of the uint8 output; ``None`` keeps the first image's size.
        num_classes: with integer labels; default ``max label + 1`` over all lists, when every class below it
            occurs (sparse labels need ``num_classes`` to confirm the count).
        channels: 1 (grayscale) or 3 (RGB); default: 1 when every image is grayscale, else 3.
        classes: class names in index order (a list, or a file of one name per line); default: with
            class-name labels, the training list's names in sorted order.
        workers: decoding threads.
        max_pixels: the most pixels an image may have (default :data:`famus.data.images.DEFAULT_MAX_PIXELS`).
    """
    root = Path(data_dir or ".")
    lists = {"train": ImageList(root / train_list, root), "test": ImageList(root / test_list, root)}
    if val_list is not None:
        lists["val"] = ImageList(root / val_list, root)
    check_nonempty(lists["train"])
    names = class_names_of(lists["train"].tokens, read_classes(classes, root))
    if names is None:  # integer labels: out of range ones are refused below, naming the line
        num_classes = infer_num_classes((int(t) for lst in lists.values() for t in lst.tokens if is_integer_token(t)),
                                        num_classes, f"image list {shown(lists['train'].list_path)}")
    elif num_classes is not None and num_classes != len(names):
        raise DataError(f"num_classes={num_classes} but the labels name {len(names)} classes; drop num_classes")
    else:
        num_classes = len(names)
    labels = {k: map_labels(lst.tokens, names, num_classes, lst.where) for k, lst in lists.items()}
    images = load_image_splits({k: (lst.files, lst.wheres) for k, lst in lists.items()}, channels, image_size,
                               workers, f"listfile {shown(root / train_list)}", max_pixels)
    extra = {}
    if "val" in lists:
        extra.update(val_x=images["val"], val_y=labels["val"], val_paths=lists["val"].paths)
    return _finish("listfile", (images["train"], labels["train"]), (images["test"], labels["test"]), num_classes,
                   names, train_paths=lists["train"].paths, test_paths=lists["test"].paths, **extra)
