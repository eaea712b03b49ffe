"""The one exception type of :mod:`famus.data`."""

from __future__ import annotations


class DataError(Exception):
    """A dataset, label file or image is missing, corrupt or refused.

    Messages are one line and name both the cause and the fix, e.g.
    ``"fashion-mnist: train-images-idx3-ubyte(.gz) not found in /x; install it with
    `apt-get install dataset-fashion-mnist` or pass --data-dir DIR"``. Programming errors
    (bad rates, wrong shapes) raise :class:`ValueError` instead.
    """
