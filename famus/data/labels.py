"""Labels given as class names or integer indices, mapped to int64 class indices.

Class names map to indices in sorted order (``sorted(set(names))``, as torchvision's
``ImageFolder`` does), so a training set and its trusted, validation and test sets agree on
the indices as long as they use the same names.

Integer labels are checked at load: a negative one, one outside ``[0, num_classes)``, or a file
that mixes integers with class names is refused, naming the file and line. Without
``num_classes`` the class count is the largest label + 1, but only when every class below it
occurs: a sparse maximum (labels 0, 1, 999) needs ``dataset_options.num_classes`` to confirm it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch
from torch import Tensor

from famus.data.errors import DataError, shown

_INTEGER = re.compile(r"[0-9]+")
_NEGATIVE = re.compile(r"-[0-9]+")


def is_integer_token(token: str) -> bool:
    """Whether ``token`` is a non-negative integer written in the decimal digits 0-9."""
    return _INTEGER.fullmatch(token) is not None


def check_label_kinds(tokens: Sequence[str], where: Callable[[int], str], source: str) -> None:
    """Refuse negative integer labels, and a file (``source``) that mixes integer labels with class names.

    Raises:
        DataError: naming the label and where it is (``where(i)``, e.g. ``"line 4 of train.txt"``).
    """
    first_int = first_name = None
    for i, token in enumerate(tokens):  # one regex per label: cheap next to decoding an image
        if _NEGATIVE.fullmatch(token):
            raise DataError(f"label {shown(token)} ({where(i)}) is negative; class indices run from 0 to "
                            "num_classes - 1")
        if is_integer_token(token):
            first_int = i if first_int is None else first_int
        else:
            first_name = i if first_name is None else first_name
    if first_int is not None and first_name is not None:
        raise DataError(f"{source} mixes integer labels ({where(first_int)}: {shown(tokens[first_int])}) with class "
                        f"names ({where(first_name)}: {shown(tokens[first_name])}); use one kind: class indices "
                        "0..num_classes-1 or class names")


def check_num_classes(num_classes: object) -> int | None:
    """``dataset_options.num_classes`` checked: ``None`` or a positive integer."""
    if num_classes is None:
        return None
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise DataError(f"dataset_options.num_classes must be a positive integer, got {shown(repr(num_classes))}")
    return num_classes


def infer_num_classes(labels: Iterable[int], num_classes: int | None, what: str) -> int:
    """The class count of integer labels (all splits'): ``num_classes`` when given, else the largest label + 1
    when every class below it occurs.

    Raises:
        DataError: the labels are sparse (``0, 1, 999``: 3 of 1000 classes) and ``num_classes`` was not given
            to confirm the count.
    """
    num_classes = check_num_classes(num_classes)
    if num_classes is not None:
        return num_classes
    present = sorted(set(labels))
    if not present:
        raise DataError(f"{what} holds no labels; add labelled examples")
    top = present[-1] + 1
    if len(present) < top:
        missing = next(k for k, v in enumerate(present) if k != v)  # the first class with no label
        raise DataError(f"{what}: the integer labels go up to {top - 1}, but only {len(present)} of the {top} "
                        f"classes 0..{top - 1} occur (no {missing}); pass dataset_options.num_classes={top} to "
                        f"confirm that count, or number the classes 0..{len(present) - 1}")
    return top


def class_names_of(tokens: Sequence[str], classes: Sequence[str] | None = None) -> list[str] | None:
    """The class names of a training set's label tokens: ``None`` when every token is an integer index
    (and no ``classes`` are given), else ``classes`` or the tokens' distinct values in sorted order."""
    if classes is not None:
        names = [str(c) for c in classes]
        if len(set(names)) != len(names):
            raise DataError(f"the class list has duplicate names: {names}; give each class once")
        return names
    if all(is_integer_token(t) for t in tokens):
        return None
    return sorted(set(tokens))


def map_labels(
    tokens: Sequence[str],
    class_names: Sequence[str] | None,
    num_classes: int | None,
    where: Callable[[int], str],
) -> Tensor:
    """int64 ``(N,)`` class indices of label tokens.

    A token that is one of ``class_names`` maps to its position; otherwise an integer token maps to
    itself, if below ``num_classes`` (``None``: integers are refused). Anything else is a
    :class:`DataError` that names the token, where it is (``where(i)``, e.g. ``"line 4 of train.txt"``)
    and the valid classes.
    """
    lookup = {name: i for i, name in enumerate(class_names or [])}
    out = torch.empty(len(tokens), dtype=torch.long)
    for i, token in enumerate(tokens):  # one dict lookup per label: cheap next to decoding an image
        if token in lookup:
            out[i] = lookup[token]
        elif is_integer_token(token) and num_classes is not None and int(token) < num_classes:
            out[i] = int(token)
        else:
            raise DataError(f"label {shown(repr(token))} ({where(i)}) is not one of the "
                            f"{_classes(class_names, num_classes)}; fix the label or add the class to the training "
                            "data")
    return out


def _classes(class_names: Sequence[str] | None, num_classes: int | None) -> str:
    if class_names:
        names = ", ".join(shown(n, 40) for n in list(class_names)[:20]) + (", ..." if len(class_names) > 20 else "")
        return f"{len(class_names)} classes ({names})"
    return f"class indices 0..{num_classes - 1}" if num_classes else "classes"


def map_label_array(
    y: np.ndarray, class_names: Sequence[str] | None, num_classes: int | None, what: str
) -> Tensor:
    """int64 ``(N,)`` class indices of a 1-D label array: integer indices (checked to be in range) or class
    names (strings, mapped by :func:`map_labels`, vectorised over the distinct names)."""
    if y.ndim != 1:
        raise DataError(f"labels in {what} must be 1-D, got shape {y.shape}; flatten them")
    if y.dtype.kind in "US":
        uniq, inverse = np.unique(y.astype(str), return_inverse=True)
        index = map_labels([str(u) for u in uniq], class_names, num_classes, lambda i: what).numpy()
        return torch.from_numpy(index[inverse.reshape(-1)].astype(np.int64))
    if y.dtype.kind not in "iu":
        raise DataError(f"labels in {what} must be integers or class names, got {y.dtype}; convert them")
    y64 = y.astype(np.int64)
    top = len(class_names) if class_names else num_classes
    bad = np.flatnonzero((y64 < 0) | (y64 >= (top if top is not None else np.iinfo(np.int64).max)))
    if bad.size:
        label = y[bad[0]].item()  # as stored (a huge uint64 wraps around in y64)
        if label < 0:
            raise DataError(f"label {label} (example {int(bad[0])} of {what}) is negative; class indices run from 0 "
                            "to num_classes - 1")
        raise DataError(f"label {label} (example {int(bad[0])} of {what}) is not one of the "
                        f"{_classes(class_names, top)}; fix the label or add the class to the training data")
    return torch.from_numpy(y64)
