"""``J d``: the logits' directional derivative along a parameter direction ``d``.

Two ways, both starting at a stage whose input is cached (:mod:`.staging`) because ``d`` is zero
below it: forward-mode AD (:func:`jvp_logits`, exact) and a central difference of two forward
passes (:func:`fd_logits`). Neither changes any state: buffers are cloned, parameters detached.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

from famus.meta import inputs as io
from famus.meta.engines.staging import Stages
from famus.meta.inputs import Inputs


def default_fd_eps(dtype: torch.dtype, scheme: str = "central") -> float:
    """Default relative finite-difference step for ``dtype`` and ``scheme`` (``"central"`` or ``"forward"``).

    Two regimes. In float64 (verification on small nets) few ReLU units cross their kink within
    the step, the error is the smooth ``O(h^2)`` truncation plus ``O(eps_mach / h)`` rounding, and
    the cube root of the machine epsilon balances them (6.1e-6). In float32 and below on real
    networks, units crossing their kink dominate: that error grows like ``sqrt(h)`` (a fraction
    ``~h`` of units, each off by O(1)), so ``h = eps_mach^(2/3)`` balances it against rounding
    (2.4e-5 in float32). Measured on ResNet-32, batch 100, float32: relative error of the meta
    gradient ~2e-4 at 1e-5, ~2e-3 at 3e-4, ~2e-2 at 3e-2.

    The one-sided ``"forward"`` difference has an ``O(h)`` smooth truncation error, balanced against
    rounding at the square root of the machine epsilon in float64 (1.5e-8); in float32 the kink
    term dominates either way, so it takes the central step.
    """
    eps = float(torch.finfo(dtype).eps)
    if dtype == torch.float64:
        return eps ** 0.5 if scheme == "forward" else eps ** (1.0 / 3.0)
    return eps ** (2.0 / 3.0)


def jvp_logits(
    stages: Stages, params: dict[str, Tensor], buffers: dict[str, Tensor], h: Inputs, start: int,
    direction: dict[str, Tensor],
) -> Tensor:
    """``J d``: the logits' forward-mode derivative along ``direction``, from stage ``start``.

    Args:
        params: global name -> detached parameter (at w).
        buffers: buffer values to start from (cloned inside: BN writes into them).
        h: ``(B, ...)`` detached input of stage ``start`` (stage 0: the model's input, possibly a tuple
            or dict of tensors); ``direction`` is zero below it.
        direction: parameter name -> tangent (same shape as the parameter).

    Returns:
        ``(B, C)`` tangent of the logits.
    """
    names = list(direction)
    needed = stages.params_from(start)
    base = {n: p for n, p in params.items() if n in needed}
    own = stages.buffers_from(start)  # one set, not one per buffer
    buf = {n: b for n, b in buffers.items() if n in own}

    def f(*primals: Tensor) -> Tensor:
        state = dict(base)
        state.update(zip(names, primals))
        # clones made inside the transform: BN's in-place running-stat update on a captured
        # tensor is an error under torch.func, and these values are thrown away anyway; h is
        # cloned for a stage that writes into its input (it must not change the cache)
        return stages.run(state, {n: b.clone() for n, b in buf.items()}, io.tree_map(Tensor.clone, h), start)

    with warnings.catch_warnings():  # torch's own jvp decompositions still call torch.jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        _, tangent = torch.func.jvp(f, tuple(base[n] for n in names), tuple(direction[n] for n in names))
    return tangent


def _norm(tensors) -> Tensor:
    """The 2-norm of a list of tensors together, a float64 scalar."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t).double() for t in tensors]))


def fd_logits(
    stages: Stages, params: dict[str, Tensor], buffers: dict[str, Tensor], h: Inputs, start: int,
    direction: dict[str, Tensor], eps: float, before_pass=None, base_logits: Tensor | None = None,
) -> Tensor:
    """``J d`` by a central difference ``(f(w + s d) - f(w - s d)) / (2 s)``, from stage ``start``.

    With ``base_logits = f(w)`` given (the Virtual-Train logits: the same forward on the same batch
    with the same buffers and dropout masks), a one-sided difference ``(f(w + s d) - f(w)) / s``:
    one forward pass instead of two, with an ``O(s |d^T H d|)`` bias from the logits' curvature
    (negligible next to the kink error in float32, see :func:`default_fd_eps`).

    The step is scaled by the direction's norm: ``s = eps * max(||w_d||, 1) / ||d||`` with ``w_d``
    the parameters ``d`` touches, so the perturbation is ``eps`` relative to those weights.
    Error: ``O(eps^2)`` truncation plus ``O(eps_machine / eps)`` rounding, relative to ``|J d|``.

    Args:
        eps: relative step (see :func:`default_fd_eps`).
        before_pass: called before each of the two passes (replays the RNG for dropout).
        Other arguments as in :func:`jvp_logits`.

    Returns:
        ``(B, C)`` estimate of the logits' directional derivative.
    """
    needed = stages.params_from(start)
    base = {n: p for n, p in params.items() if n in needed}
    own = stages.buffers_from(start)  # one set, not one per buffer
    buf = {n: b for n, b in buffers.items() if n in own}
    with torch.no_grad():
        # per-tensor norms in the tensors' own precision (one fused reduction each; a float64 copy and
        # pow of every weight cost more than the extra forward pass on a wide MLP), combined in float64
        d_norm = _norm(direction.values())
        w_norm = _norm(base[n] for n in direction)
        step = (eps * w_norm.clamp_min(1.0) / d_norm.clamp_min(1e-300)).to(next(iter(direction.values())).dtype)
        outs = []
        for sign in (1.0,) if base_logits is not None else (1.0, -1.0):
            if before_pass is not None:
                before_pass()
            state = dict(base)
            state.update({n: base[n] + (sign * step) * d for n, d in direction.items()})
            outs.append(stages.run(state, {n: b.clone() for n, b in buf.items()}, io.tree_map(Tensor.clone, h), start))
        if base_logits is not None:
            return (outs[0] - base_logits.detach()) / step
        return (outs[0] - outs[1]) / (2 * step)
