"""Synthetic and recorded label noise as pure functions of (labels, generator), and of the examples'
inputs for instance-dependent noise.

Every generator returns a :class:`NoiseResult` holding the noisy labels, the corrupted
mask and the REALISED transition matrix (what actually happened, not the nominal one),
so experiments can report the true noise level. Random numbers are drawn on
``generator.device`` and moved to ``labels.device``, so a CPU generator works for GPU labels.
"""

from __future__ import annotations

import inspect
import io
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from famus.data.errors import DataError
from famus.data.split import check_labels
from famus.registry import Registry
from famus.verified import CorruptFileError, read_verified, save_verified

# Standard asymmetric CIFAR-10 noise: truck->automobile, bird->airplane, deer->horse, cat<->dog.
CIFAR10_PAIRS: dict[int, int] = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}

# Keys tried, in order, when a noisy-label file holds a dict (CIFAR-10N, CIFAR-100N, famus).
DEFAULT_FILE_KEYS = ("worse_label", "noisy_label", "labels")

# Bounds the (chunk, C) probability rows materialised by from_matrix (~128 MB of float64).
_MATRIX_CHUNK_ELEMENTS = 1 << 24
# Bounds the (chunk, d) float64 inputs instance noise converts at a time (~128 MB).
_FEATURE_CHUNK_ELEMENTS = 1 << 24


@dataclass
class NoiseResult:
    """Noisy labels plus what the noise actually did.

    Attributes:
        labels: int64 (N,) noisy labels.
        corrupted: bool (N,) ``labels != clean``.
        transition: float64 (C, C) realised transition; row i is the empirical distribution
            of the noisy label over examples of clean class i (identity row if class i is empty).
    """

    labels: Tensor
    corrupted: Tensor
    transition: Tensor

    @property
    def rate(self) -> float:
        """Realised fraction of corrupted labels."""
        return float(self.corrupted.float().mean()) if self.corrupted.numel() else 0.0


def realised_transition(clean: Tensor, noisy: Tensor, num_classes: int) -> Tensor:
    """Empirical transition matrix (C, C) float64 from clean (N,) and noisy (N,) int labels."""
    pairs = clean.long() * num_classes + noisy.long()
    counts = torch.bincount(pairs, minlength=num_classes * num_classes).view(num_classes, num_classes)
    counts = counts.to(torch.float64).cpu()
    totals = counts.sum(1, keepdim=True)
    eye = torch.eye(num_classes, dtype=torch.float64)
    return torch.where(totals > 0, counts / totals.clamp_min(1), eye)


def _result(clean: Tensor, noisy: Tensor, num_classes: int) -> NoiseResult:
    return NoiseResult(noisy, noisy != clean, realised_transition(clean, noisy, num_classes))


def _check_rate(rate: float) -> None:
    if not 0.0 <= rate <= 1.0:  # also rejects NaN
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")


def _labels(labels: Tensor, num_classes: int) -> Tensor:
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    return check_labels(labels, num_classes)[0]


def _rand(n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def _randint(low: int, high: int, n: int, generator: torch.Generator, device: torch.device) -> Tensor:
    return torch.randint(low, high, (n,), generator=generator, device=generator.device).to(device)


def symmetric(
    labels: Tensor, rate: float, num_classes: int, generator: torch.Generator, include_true: bool = True
) -> NoiseResult:
    """Symmetric (uniform) noise.

    With probability ``rate`` a label is resampled uniformly over ALL C classes (MW-Net /
    FaMUS convention, so the realised flip rate is ``rate * (C - 1) / C``), or over the
    C - 1 OTHER classes when ``include_true=False`` (realised flip rate = ``rate``).

    Args:
        labels: int (N,) clean labels in ``[0, C)``.
        rate: resampling probability in ``[0, 1]``.
        num_classes: C.
        generator: seeded ``torch.Generator``.

    Returns:
        :class:`NoiseResult` with labels (N,), corrupted (N,), transition (C, C).
    """
    _check_rate(rate)
    labels = _labels(labels, num_classes)
    if not include_true and num_classes < 2 and rate > 0:
        raise ValueError("symmetric noise over the other classes needs num_classes >= 2")
    n, dev = labels.numel(), labels.device
    hit = _rand(n, generator, dev) < rate
    if include_true:
        new = _randint(0, num_classes, n, generator, dev)
    else:
        # A shift in [1, C) modulo C is uniform over the other classes.
        new = (labels + _randint(1, max(num_classes, 2), n, generator, dev)) % num_classes
    return _result(labels, torch.where(hit, new, labels), num_classes)


def _pair_targets(mapping: str | Sequence[int] | Tensor, num_classes: int) -> Tensor:
    if isinstance(mapping, str):
        if mapping == "next":
            return (torch.arange(num_classes) + 1) % num_classes
        if mapping == "cifar10":
            if num_classes != 10:
                raise ValueError(f"the cifar10 pair mapping needs num_classes=10, got {num_classes}")
            targets = torch.arange(10)
            for src, dst in CIFAR10_PAIRS.items():
                targets[src] = dst
            return targets
        raise ValueError(f"unknown pair mapping {mapping!r}; use 'next', 'cifar10' or a list of C targets")
    targets = torch.as_tensor(mapping, dtype=torch.long).flatten()
    if targets.numel() != num_classes or (
        targets.numel() and (targets.min() < 0 or targets.max() >= num_classes)
    ):
        raise ValueError(f"a pair mapping needs {num_classes} targets in [0, {num_classes}), got {mapping!r}")
    return targets


def pair(
    labels: Tensor,
    rate: float,
    num_classes: int,
    generator: torch.Generator,
    mapping: str | Sequence[int] | Tensor = "next",
) -> NoiseResult:
    """Pair (class-dependent) noise: with probability ``rate`` flip class i to ``target[i]``.

    Args:
        labels: int (N,) clean labels.
        rate: flip probability in ``[0, 1]``.
        num_classes: C.
        generator: seeded ``torch.Generator``.
        mapping: ``"next"`` (i -> (i + 1) % C), ``"cifar10"`` (truck->automobile,
            bird->airplane, deer->horse, cat<->dog; others kept) or an explicit list of C targets.

    Returns:
        :class:`NoiseResult`.
    """
    _check_rate(rate)
    labels = _labels(labels, num_classes)
    targets = _pair_targets(mapping, num_classes).to(labels.device)
    hit = _rand(labels.numel(), generator, labels.device) < rate
    return _result(labels, torch.where(hit, targets[labels], labels), num_classes)


def truncated_normal(n: int, mean: float, std: float, low: float, high: float,
                     generator: torch.Generator) -> Tensor:
    """``(n,)`` float64 draws of ``N(mean, std^2)`` truncated to ``[low, high]``, by the inverse CDF.

    One uniform per draw from ``generator`` (so the stream advances by ``n`` whatever the values);
    the same distribution as ``scipy.stats.truncnorm((low - mean) / std, (high - mean) / std, mean, std)``.
    """
    lo, hi = (torch.tensor((v - mean) / std, dtype=torch.float64) for v in (low, high))
    cdf_lo, cdf_hi = torch.special.ndtr(lo), torch.special.ndtr(hi)
    u = torch.rand(n, generator=generator, dtype=torch.float64, device=generator.device).cpu()
    z = torch.special.ndtri(cdf_lo + u * (cdf_hi - cdf_lo))
    return (mean + std * z).clamp(low, high)  # the clamp only catches rounding at the ends


def _unit_rows(x: Tensor) -> Tensor:
    """Inputs ``(m, ...)`` flattened to ``(m, d)`` float64 on the CPU, scaled to unit L2 norm (zero rows stay 0)."""
    x = x.reshape(x.shape[0], -1).to(device="cpu", dtype=torch.float64)
    return x / x.norm(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)


def instance_probabilities(
    features: Tensor, labels: Tensor, rate: float, num_classes: int, generator: torch.Generator, std: float = 0.1
) -> Tensor:
    """Each example's distribution over its noisy label, ``(N, C)`` float64 rows summing to 1 (Xia et al. 2020).

    The generator of "Part-dependent label noise" (Xia et al., NeurIPS 2020) as its authors' code
    builds it: a flip rate per example ``q_i ~ N(rate, std^2)`` truncated to ``[0, 1]``; a random
    projection ``W ~ N(0, 1)`` of shape ``(C, d, C)``; row ``i`` is ``q_i * softmax(x_i W[y_i])`` with the
    true class's score set to ``-inf``, plus ``1 - q_i`` on the true class. ``x_i`` is example ``i``'s input
    flattened (``d`` values) and scaled to unit L2 norm (scale-free: uint8 pixels or their ``/255`` give the
    same rows), so the scores ``x_i W[y_i]`` are ``N(0, 1)`` and the wrong class is a soft, example-specific
    choice rather than a near-deterministic argmax.

    ``rate = 0`` gives ``q_i = 0`` (no noise): the truncated normal around 0 would still flip about 8%.
    Elsewhere the mean flip rate is ``E[q_i]``, which is ``rate`` up to 0.001 for rates in ``[0.3, 0.7]``
    and pulled towards 0.5 near the ends by the truncation (0.2 gives 0.205, 0.1 gives 0.129).

    Random numbers, in order: ``N`` uniforms for the ``q_i`` (in example order), then ``W[c]`` ``(d, C)``
    for each class ``c`` in turn. Computed class by class in chunks of rows, so memory stays at
    ``O(d * C)`` plus a chunk, never ``C * d * C`` per example.

    Args:
        features: ``(N, ...)`` the examples' inputs (uint8 images or float features), on any device.
        labels: int ``(N,)`` clean labels in ``[0, C)``.
        rate: the mean of the flip rate's normal, in ``[0, 1]``.
        num_classes: C >= 2.
        generator: seeded ``torch.Generator``.
        std: the flip rate's standard deviation (the authors' 0.1), > 0.
    """
    _check_rate(rate)
    labels = _labels(labels, num_classes)
    if num_classes < 2:
        raise ValueError("instance noise needs num_classes >= 2 (a wrong class to flip to)")
    if not std > 0:
        raise ValueError(f"instance noise std must be > 0, got {std}")
    n = labels.numel()
    if features.shape[0] != n or features.dim() < 2:
        raise ValueError(f"instance noise needs one input per label: features of shape (N, ...) with N = {n}, "
                         f"got {tuple(features.shape)}")
    q = truncated_normal(n, rate, std, 0.0, 1.0, generator) if rate > 0 else torch.zeros(n, dtype=torch.float64)
    d = features[0].numel()
    y = labels.cpu()
    probs = torch.empty(n, num_classes, dtype=torch.float64)
    chunk = max(1, _FEATURE_CHUNK_ELEMENTS // max(d, 1))
    for c in range(num_classes):  # one projection W[c] (d, C) per class: C matrix products, no per-example loop
        w_c = torch.randn(d, num_classes, generator=generator, dtype=torch.float64, device=generator.device).cpu()
        rows = (y == c).nonzero().squeeze(1)
        for start in range(0, rows.numel(), chunk):
            idx = rows[start : start + chunk]
            scores = _unit_rows(features[idx.to(features.device)]) @ w_c  # (m, C)
            scores[:, c] = -math.inf
            p = q[idx, None] * torch.softmax(scores, 1)
            p[:, c] = 1.0 - q[idx]
            probs[idx] = p
    return probs


def instance(
    labels: Tensor,
    rate: float,
    num_classes: int,
    generator: torch.Generator,
    features: Tensor | None = None,
    std: float = 0.1,
) -> NoiseResult:
    """Instance-dependent noise (Xia et al. 2020): each label drawn from :func:`instance_probabilities`.

    The flip rate and the wrong class depend on the example's input ``features`` ``(N, ...)``; the
    realised rate is near ``rate`` (see :func:`instance_probabilities`). Random numbers: those of
    :func:`instance_probabilities`, then one categorical draw per example (``torch.multinomial``).

    Returns:
        :class:`NoiseResult`, labels on ``labels.device``.
    """
    if features is None:
        raise ValueError("noise 'instance' depends on each example's input: pass features=<(N, ...) training inputs>")
    probs = instance_probabilities(features, labels, rate, num_classes, generator, std).to(generator.device)
    chunk = max(1, _MATRIX_CHUNK_ELEMENTS // num_classes)
    parts = [torch.multinomial(probs[i : i + chunk], 1, generator=generator).squeeze(1)
             for i in range(0, probs.shape[0], chunk)]
    noisy = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=generator.device)
    clean = _labels(labels, num_classes)
    return _result(clean, noisy.to(clean.device), num_classes)


def check_transition_matrix(matrix: Tensor | np.ndarray | Sequence[Sequence[float]]) -> Tensor:
    """Validate a row-stochastic (C, C) matrix; returns it as float64 on CPU.

    Raises:
        ValueError: if not square, negative, non-finite or a row does not sum to 1 (tol 1e-6).
    """
    m = torch.as_tensor(np.asarray(matrix) if not isinstance(matrix, Tensor) else matrix)
    m = m.detach().to(torch.float64).cpu()
    if m.dim() != 2 or m.shape[0] != m.shape[1] or m.shape[0] == 0:
        raise ValueError(f"noise transition matrix must be square (C, C), got shape {tuple(m.shape)}")
    if not torch.isfinite(m).all() or (m < 0).any():
        raise ValueError("noise transition matrix entries must be finite and non-negative")
    sums = m.sum(1)
    bad = (sums - 1).abs() > 1e-6
    if bad.any():
        i = int(bad.nonzero()[0])
        raise ValueError(
            f"noise transition matrix rows must sum to 1 (tol 1e-6); row {i} sums to {float(sums[i])}"
        )
    return m


def from_matrix(
    labels: Tensor, matrix: Tensor | np.ndarray | Sequence[Sequence[float]], generator: torch.Generator
) -> NoiseResult:
    """Sample each noisy label from row ``matrix[clean]`` of a (C, C) transition matrix.

    Args:
        labels: int (N,) clean labels in ``[0, C)``.
        matrix: (C, C) row-stochastic; ``matrix[i, j] = P(noisy = j | clean = i)``.
        generator: seeded ``torch.Generator``.

    Returns:
        :class:`NoiseResult`; its ``transition`` approaches ``matrix`` as N grows.
    """
    m = check_transition_matrix(matrix)
    num_classes = m.shape[0]
    labels = _labels(labels, num_classes)
    dev = generator.device
    m = m.to(dev)
    src = labels.to(dev)
    # Batched multinomial over the rows of all examples; chunked only to bound memory
    # when C is large (e.g. WebVision's 1000 classes).
    chunk = max(1, _MATRIX_CHUNK_ELEMENTS // num_classes)
    parts = [
        torch.multinomial(m[src[i : i + chunk]], 1, replacement=True, generator=generator).squeeze(1)
        for i in range(0, src.numel(), chunk)
    ]
    noisy = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long, device=dev)
    return _result(labels, noisy.to(labels.device), num_classes)


def _numpy_safe_globals() -> list[Any]:
    """Globals torch.load(weights_only=True) needs for dicts of numpy arrays (CIFAR-N files)."""
    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 2
        from numpy.core import multiarray  # type: ignore[no-redef]
    dtypes = [
        type(np.dtype(t)) for t in ("b", "B", "h", "H", "i", "I", "l", "L", "q", "Q", "e", "f", "d", "?")
    ]
    items: list[Any] = [
        multiarray._reconstruct,
        multiarray.scalar,
        np.ndarray,
        np.dtype,
        *dict.fromkeys(dtypes),
    ]
    # Files written with numpy 1.x name numpy.core.*; map those names to the same objects.
    items += [
        (multiarray._reconstruct, "numpy.core.multiarray._reconstruct"),
        (multiarray.scalar, "numpy.core.multiarray.scalar"),
    ]
    return items


def _torch_load(path: Path) -> Any:
    """``torch.load(weights_only=True)``, after checking the file's ``.sha256`` sidecar when it has one
    (files famus wrote; CIFAR-N and other label files have none)."""
    try:
        data = read_verified(path, required=False)
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except (DataError, CorruptFileError):
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read noisy label file {path} ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}); "
            "it must hold only tensors, numpy arrays and plain containers — re-download or re-save it"
        ) from exc


def read_label_file(path: str | os.PathLike[str], key: str | None = None) -> Tensor:
    """Read a 1-D int64 label tensor (N,) from ``.npy``, ``.npz``, ``.pt`` or ``.pth``.

    Dict-like files (CIFAR-10N ``CIFAR-10_human.pt``, CIFAR-100N, ``.npz``, famus saves) use
    ``key``, default the first of ``worse_label``, ``noisy_label``, ``labels`` present.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(f"noisy label file {path} not found; pass the path of an existing .npy/.npz/.pt file")
    suffix = path.suffix.lower()
    if suffix == ".npy":
        try:
            obj: Any = np.load(path, allow_pickle=False)
        except Exception as exc:
            raise DataError(f"noisy label file {path} is corrupt ({exc}); re-download or re-save it") from exc
    elif suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as z:
                obj = {k: z[k] for k in z.files}
        except Exception as exc:
            raise DataError(f"noisy label file {path} is corrupt ({exc}); re-download or re-save it") from exc
    elif suffix in (".pt", ".pth"):
        obj = _torch_load(path)
    else:
        raise DataError(f"unsupported noisy label file {path}; use a .npy, .npz, .pt or .pth file")
    if isinstance(obj, dict):
        keys = [str(k) for k in obj]
        if key is None:
            key = next((k for k in DEFAULT_FILE_KEYS if k in obj), None)
            if key is None:
                raise DataError(f"noisy label file {path} has keys {keys}; choose one with key=...")
        elif key not in obj:
            raise DataError(f"noisy label file {path} has no key {key!r}; valid keys: {', '.join(keys)}")
        obj = obj[key]
    try:
        out = torch.as_tensor(np.asarray(obj) if not isinstance(obj, Tensor) else obj)
    except Exception as exc:
        raise DataError(f"noisy label file {path} does not hold an array of labels; check key=") from exc
    if out.dim() != 1 or out.dtype.is_floating_point or out.dtype == torch.bool or out.is_complex():
        raise DataError(
            f"noisy label file {path} holds a {out.dtype} array of shape {tuple(out.shape)}, "
            "expected 1-D integer labels; check key="
        )
    return out.long()


def from_file(
    labels: Tensor,
    path: str | os.PathLike[str],
    key: str | None = None,
    num_classes: int | None = None,
    indices: Tensor | None = None,
) -> NoiseResult:
    """Recorded (e.g. human) noisy labels, CIFAR-10N / CIFAR-100N style.

    Args:
        labels: int (N,) clean labels of the examples being noised.
        path: ``.npy``/``.npz``/``.pt``/``.pth`` file (see :func:`read_label_file`).
        key: dict key; default ``worse_label``, then ``noisy_label``, then ``labels``.
        num_classes: C; default ``max(label) + 1`` over clean and noisy labels.
        indices: int (N,) positions of ``labels`` in the file (e.g. ``train_idx`` after a meta
            split); default the file must have exactly N labels.

    Returns:
        :class:`NoiseResult` with labels on ``labels.device``.
    """
    noisy = read_label_file(path, key)
    if indices is not None:
        indices = indices.long().cpu()
        if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= noisy.numel()):
            raise DataError(
                f"indices go past the {noisy.numel()} labels in {path}; pass indices into that file"
            )
        noisy = noisy[indices]
    if noisy.numel() != labels.numel():
        raise DataError(
            f"noisy label file {path} has {noisy.numel()} labels but {labels.numel()} were expected; "
            "use the file made for this dataset split, or pass indices= (e.g. the train indices)"
        )
    if noisy.numel() and int(noisy.min()) < 0:
        raise DataError(f"noisy label file {path} holds negative labels; check key=")
    inferred = max(
        int(labels.max()) + 1 if labels.numel() else 1, int(noisy.max()) + 1 if noisy.numel() else 1
    )
    if num_classes is None:
        num_classes = inferred
    elif inferred > num_classes:
        raise DataError(
            f"noisy label file {path} has label {inferred - 1} >= num_classes {num_classes}; check key="
        )
    labels = _labels(labels, num_classes)
    return _result(labels, noisy.to(labels.device), num_classes)


# ---------------------------------------------------------------------------------------------
# Registry: every entry has the signature (labels, rate, num_classes, generator, **options); an entry that
# depends on the examples' inputs also takes ``features`` (passed by apply_noise, not an option).

NOISE: Registry[Callable[..., NoiseResult]] = Registry("noise")


@NOISE.register("none")
def _none(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator) -> NoiseResult:
    labels = _labels(labels, num_classes)
    return _result(labels, labels.clone(), num_classes)


NOISE.add("symmetric", symmetric)
NOISE.add("pair", pair)
NOISE.add("instance", instance)


@NOISE.register("asymmetric")
def _asymmetric(labels: Tensor, rate: float, num_classes: int, generator: torch.Generator) -> NoiseResult:
    return pair(labels, rate, num_classes, generator, mapping="cifar10")


@NOISE.register("matrix")
def _matrix(
    labels: Tensor, rate: float, num_classes: int, generator: torch.Generator, matrix: Any = None
) -> NoiseResult:
    # The matrix fully defines the noise; ``rate`` is ignored.
    if matrix is None:
        raise ValueError("noise 'matrix' needs matrix=<(C, C) row-stochastic matrix>")
    m = check_transition_matrix(matrix)
    if m.shape[0] != num_classes:
        raise ValueError(f"noise matrix is {m.shape[0]}x{m.shape[0]} but num_classes is {num_classes}")
    return from_matrix(labels, m, generator)


@NOISE.register("file")
def _file(
    labels: Tensor,
    rate: float,
    num_classes: int,
    generator: torch.Generator,
    path: str | os.PathLike[str] | None = None,
    key: str | None = None,
    indices: Tensor | None = None,
) -> NoiseResult:
    # The file fully defines the noise; ``rate`` and ``generator`` are ignored.
    if path is None:
        raise ValueError("noise 'file' needs path=<.npy/.npz/.pt file of noisy labels>")
    return from_file(labels, path, key=key, num_classes=num_classes, indices=indices)


def apply_noise(
    name: str,
    labels: Tensor,
    rate: float,
    num_classes: int,
    generator: torch.Generator,
    features: Tensor | None = None,
    **options: Any,
) -> NoiseResult:
    """Apply the registered noise ``name`` (see ``NOISE.names()``).

    Args:
        name: ``none``, ``symmetric``, ``pair``, ``asymmetric`` (pair with the CIFAR-10 map),
            ``instance`` (instance-dependent, needs ``features``; option ``std=``), ``matrix`` (option
            ``matrix=``; rate ignored) or ``file`` (options ``path=``, ``key=``, ``indices=``; rate ignored).
        labels: int (N,) clean labels.
        rate: noise rate in ``[0, 1]``.
        num_classes: C.
        generator: seeded ``torch.Generator``.
        features: ``(N, ...)`` the examples' inputs, for noise that depends on them (``instance``);
            the other noises ignore it (their labels are the same with or without it).
        **options: noise-specific options (e.g. ``include_true`` for symmetric, ``mapping`` for pair).

    Returns:
        :class:`NoiseResult`.
    """
    fn = NOISE.get(name)
    _check_rate(rate)
    params = list(inspect.signature(fn).parameters)
    valid = [p for p in params[4:] if p != "features"]
    unknown = [k for k in options if k not in valid]
    if unknown:
        raise ValueError(
            f"noise {name!r} got unknown option(s) {', '.join(unknown)}; "
            f"valid options: {', '.join(valid) or 'none'}"
        )
    if "features" in params:
        options["features"] = features
    return fn(labels, rate, num_classes, generator, **options)


# ---------------------------------------------------------------------------------------------
# Persistence

_FORMAT = "famus-noisy-labels"


def save_noisy_labels(path: str | os.PathLike[str], clean: Tensor, result: NoiseResult) -> None:
    """Atomically save clean (N,), noisy (N,), corrupted (N,) and transition (C, C) to one ``.pt`` file.

    Written to a temporary file in the same directory and ``os.replace``-d into place, so a
    crash never leaves a half-written file, with a ``.sha256`` sidecar checked on load
    (:mod:`famus.verified`). Readable by :func:`load_noisy_labels` and usable as ``file``
    noise (key ``labels``).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": _FORMAT,
        "version": 1,
        "clean": clean.detach().long().cpu(),
        "labels": result.labels.detach().long().cpu(),
        "corrupted": result.corrupted.detach().bool().cpu(),
        "transition": result.transition.detach().to(torch.float64).cpu(),
    }
    save_verified(path, payload)


def load_noisy_labels(path: str | os.PathLike[str]) -> tuple[Tensor, NoiseResult]:
    """Load a file written by :func:`save_noisy_labels`.

    Returns:
        ``(clean, result)``: int64 (N,) clean labels and the :class:`NoiseResult`.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"noisy label file {path} not found; create it with save_noisy_labels or fix the path"
        )
    obj = _torch_load(path)
    keys = ("clean", "labels", "corrupted", "transition")
    if not isinstance(obj, dict) or obj.get("format") != _FORMAT or not all(k in obj for k in keys):
        raise DataError(f"{path} is not a famus noisy-label file; write it with save_noisy_labels")
    clean, labels, corrupted, transition = (obj[k] for k in keys)
    if not (clean.shape == labels.shape == corrupted.shape) or transition.dim() != 2:
        raise DataError(f"noisy label file {path} is corrupt (inconsistent shapes); regenerate it")
    return clean, NoiseResult(labels, corrupted, transition)
