"""Labels given as class names or integer indices, mapped to int64 class indices.

Class names map to indices in sorted order (``sorted(set(names))``, as torchvision's
``ImageFolder`` does), so a training set and its trusted, validation and test sets agree on
the indices as long as they use the same names.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import Tensor

from famus.data.errors import DataError


def is_integer_token(token: str) -> bool:
    """Whether ``token`` is a non-negative integer written in decimal digits."""
    return token.isdigit()


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
    itself, if below ``num_classes`` (when given). Anything else is a :class:`DataError` that names the
    token, where it is (``where(i)``, e.g. ``"line 4 of train.txt"``) and the valid classes.
    """
    lookup = {name: i for i, name in enumerate(class_names or [])}
    out = torch.empty(len(tokens), dtype=torch.long)
    for i, token in enumerate(tokens):  # one dict lookup per label: cheap next to decoding an image
        if token in lookup:
            out[i] = lookup[token]
        elif is_integer_token(token) and (num_classes is None or int(token) < num_classes):
            out[i] = int(token)
        else:
            raise DataError(f"label {token!r} ({where(i)}) is not one of the {_classes(class_names, num_classes)}; "
                            "fix the label or add the class to the training data")
    return out


def _classes(class_names: Sequence[str] | None, num_classes: int | None) -> str:
    if class_names:
        shown = ", ".join(list(class_names)[:20]) + (", ..." if len(class_names) > 20 else "")
        return f"{len(class_names)} classes ({shown})"
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
        raise DataError(f"label {int(y64[bad[0]])} (example {int(bad[0])} of {what}) is not one of the "
                        f"{_classes(class_names, top)}; fix the label or add the class to the training data")
    return torch.from_numpy(y64)
