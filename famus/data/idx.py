"""Reader for the IDX format of MNIST / Fashion-MNIST (optionally gzip-compressed).

Layout: two zero bytes, a dtype code, the number of dims ``d``, then ``d`` big-endian
uint32 sizes, then the big-endian data in C order.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from famus.data.errors import DataError

# IDX dtype code -> big-endian numpy dtype.
IDX_DTYPES: dict[int, str] = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _read_bytes(path: Path) -> bytes:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError as exc:
        raise DataError(f"{path} not found; check the path or --data-dir") from exc
    if raw[:2] != b"\x1f\x8b":  # not gzip (sniffed, so a misnamed file still works)
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"{path} is corrupt (bad gzip stream: {exc}); delete it and re-download") from exc


def read_idx(path: str | os.PathLike[str]) -> Tensor:
    """Parse one IDX file into a native-endian tensor.

    Args:
        path: IDX file, gzip-compressed or not.

    Returns:
        Tensor with the file's dims, e.g. uint8 (N, 28, 28) for images or uint8 (N,) for labels.

    Raises:
        DataError: naming the file, if the header is invalid or the data size is wrong.
    """
    path = Path(path)
    raw = _read_bytes(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(f"{path} is corrupt (no IDX magic number); delete it and re-download")
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path} is corrupt (unknown IDX dtype code 0x{code:02x}); delete it and re-download")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path} is corrupt (truncated IDX header); delete it and re-download")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(IDX_DTYPES[code])
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "has trailing bytes"
        raise DataError(
            f"{path} is corrupt ({what}: header says {dims} -> {expected} data bytes, found {got}); "
            "delete it and re-download"
        )
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims)
    # astype to native order also copies out of the read-only bytes buffer.
    return torch.from_numpy(arr.astype(dtype.newbyteorder("="), copy=True))
