"""A restricted unpickler for dataset files (CIFAR "python version" batches).

``pickle.load`` on a downloaded file can run arbitrary code: any global named in the
stream is imported and may be called. :class:`SafeUnpickler` resolves only the handful of
globals that plain containers, numbers, strings, bytes and numpy arrays need, and refuses
everything else *before* it can be called.
"""

from __future__ import annotations

import _compat_pickle
import builtins
import codecs
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from famus.data.errors import DataError

try:
    from numpy._core import multiarray as _multiarray
    from numpy._core import numeric as _numeric
except ImportError:  # numpy < 2
    from numpy.core import multiarray as _multiarray  # type: ignore[no-redef]
    from numpy.core import numeric as _numeric  # type: ignore[no-redef]

# (module, name) -> object. Both numpy.core (numpy 1.x writers, the original CIFAR files)
# and numpy._core (numpy 2 writers) spellings map to the same reconstruction functions.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _multiarray._reconstruct,
    ("numpy.core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy._core.multiarray", "scalar"): _multiarray.scalar,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    # Protocol <= 2 pickles of Python 3 bytes are written as _codecs.encode(str, "latin1").
    ("_codecs", "encode"): codecs.encode,
    # Protocol 5 pickles of numpy arrays rebuild them from a buffer.
    ("numpy.core.numeric", "_frombuffer"): _numeric._frombuffer,
    ("numpy._core.numeric", "_frombuffer"): _numeric._frombuffer,
    **{("builtins", n): getattr(builtins, n) for n in ("set", "frozenset", "bytearray", "complex")},
}


class SafeUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that only resolves :data:`ALLOWED_GLOBALS`.

    Anything else raises :class:`DataError` ("refusing to unpickle <module.name> ...").
    """

    def __init__(self, file: Any, path: str | os.PathLike[str] = "<stream>", encoding: str = "bytes") -> None:
        super().__init__(file, encoding=encoding)
        self.path = str(path)

    def find_class(self, module: str, name: str) -> Any:
        # Protocol <= 2 streams use Python 2 names (__builtin__, copy_reg); the default
        # find_class maps them, so an override has to as well (no Python 3 module has them).
        if (module, name) in _compat_pickle.NAME_MAPPING:
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise DataError(
                f"refusing to unpickle {module}.{name} from {self.path}: dataset files may hold only "
                "containers, numbers, strings, bytes and numpy arrays; re-download the file from its "
                "official source"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refusing to unpickle a persistent id from {self.path}; re-download the file")


def safe_load(path: str | os.PathLike[str], encoding: str = "bytes") -> Any:
    """Unpickle ``path`` with :class:`SafeUnpickler`.

    Args:
        path: pickle file.
        encoding: how Python 2 ``str`` objects are decoded; ``"bytes"`` (default) keeps them
            as bytes, matching the usual CIFAR loading code (keys like ``b"data"``).

    Raises:
        DataError: if the file is missing, refused, or not a valid pickle.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            return SafeUnpickler(f, path, encoding=encoding).load()
    except DataError:
        raise
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found; check --data-dir") from exc
    except Exception as exc:  # UnpicklingError, EOFError, ValueError, ... from a damaged stream
        raise DataError(
            f"{path} is corrupt ({type(exc).__name__}: {exc}); delete it and re-download"
        ) from exc
