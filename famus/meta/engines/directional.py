"""Meta gradients without a second backward pass: the ``jvp`` and ``fd`` engines.

Write the method's training loss as ``l(z, theta)`` with ``z = f(x; w)`` the ``(n, C)`` logits,
and ``g(theta) = grad_w l = J^T grad_z l`` (``J = dz/dw``). With ``w_hat = w - alpha * g``,

    dL_c/dtheta = d/dtheta < d, g(theta) > = d/dtheta < grad_z l(z, theta), J d >,
    d = -alpha * v,  v = dL_c/dw_hat (first order, at w_hat; v and J d are constants for theta).

``J d`` is one forward-mode JVP of the logits (``jvp``, exact) or a central difference of two
forward passes (``fd``); ``grad_z l`` with ``create_graph`` only goes through the tiny loss head.
This holds for any method whose loss is a function of logits and theta (L2R, MW-Net, MLC).

Restricting ``d`` to some layers gives the restricted gradient of the second-order engines with
those layers contributing (FaMUS's Eq. 9), and the extra passes start at the stage holding the
lowest of them, from the input cached by the Virtual-Train forward (:mod:`.staging`).

FaMUS on top: the objective's derivative w.r.t. a straight-through gate ``r_l`` is
``-<alpha V_l, g_l>`` (layer on) or ``+<alpha V_l, g_l>`` (off), ``V = dObjective/dw_hat``. With
``L_g`` (``lambda_g > 0``), ``V = v + lambda_g H a`` where ``H a`` is a Hessian-vector product of the
meta loss (``a = dL_g/dv_L``, by a double backward of the meta pass only, down to the lowest
needed layer), and ``L_g``'s direct dependence on ``g_L(theta)`` adds ``b = dL_g/dg_L`` to ``d`` on
the last layer. The same numbers as :func:`~famus.meta.engines.second_order.second_order`.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from famus.meta.engines.base import ENGINES, Engine, MetaBatch, MetaResult, StageTimer, select_layers
from famus.meta.engines.second_order import GateFn, grad_match_loss
from famus.meta.engines.staging import Stages, Trace, rng_state, same_rng_state, set_rng_state

MODES = ("jvp", "fd")


def default_fd_eps(dtype: torch.dtype) -> float:
    """Default relative central-difference step for ``dtype``.

    Two regimes. In float64 (verification on small nets) few ReLU units cross their kink within
    the step, the error is the smooth ``O(h^2)`` truncation plus ``O(eps_mach / h)`` rounding, and
    the cube root of the machine epsilon balances them (6.1e-6). In float32 and below on real
    networks, units crossing their kink dominate: that error grows like ``sqrt(h)`` (a fraction
    ``~h`` of units, each off by O(1)), so ``h = eps_mach^(2/3)`` balances it against rounding
    (2.4e-5 in float32). Measured on ResNet-32, batch 100, float32: relative error of the meta
    gradient ~2e-4 at 1e-5, ~2e-3 at 3e-4, ~2e-2 at 3e-2.
    """
    eps = float(torch.finfo(dtype).eps)
    return eps ** (1.0 / 3.0) if dtype == torch.float64 else eps ** (2.0 / 3.0)


def jvp_logits(
    stages: Stages, params: dict[str, Tensor], buffers: dict[str, Tensor], h: Tensor, start: int,
    direction: dict[str, Tensor],
) -> Tensor:
    """``J d``: the logits' forward-mode derivative along ``direction``, from stage ``start``.

    Args:
        params: global name -> detached parameter (at w).
        buffers: buffer values to start from (cloned inside: BN writes into them).
        h: ``(B, ...)`` detached input of stage ``start``; ``direction`` is zero below it.
        direction: parameter name -> tangent (same shape as the parameter).

    Returns:
        ``(B, C)`` tangent of the logits.
    """
    names = list(direction)
    needed = stages.params_from(start)
    base = {n: p for n, p in params.items() if n in needed}
    buf = {n: b for n, b in buffers.items() if n in stages.buffers_from(start)}

    def f(*primals: Tensor) -> Tensor:
        state = dict(base)
        state.update(zip(names, primals))
        # clones made inside the transform: BN's in-place running-stat update on a captured
        # tensor is an error under torch.func, and these values are thrown away anyway; h is
        # cloned for a stage that writes into its input (it must not change the cache)
        return stages.run(state, {n: b.clone() for n, b in buf.items()}, h.clone(), start)

    with warnings.catch_warnings():  # torch's own jvp decompositions still call torch.jit.script
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.script.*deprecated", category=DeprecationWarning)
        _, tangent = torch.func.jvp(f, tuple(base[n] for n in names), tuple(direction[n] for n in names))
    return tangent


def fd_logits(
    stages: Stages, params: dict[str, Tensor], buffers: dict[str, Tensor], h: Tensor, start: int,
    direction: dict[str, Tensor], eps: float, before_pass=None,
) -> Tensor:
    """``J d`` by a central difference ``(f(w + s d) - f(w - s d)) / (2 s)``, from stage ``start``.

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
    buf = {n: b for n, b in buffers.items() if n in stages.buffers_from(start)}
    with torch.no_grad():
        d_norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction.values()))
        w_norm = torch.sqrt(sum((base[n].double() ** 2).sum() for n in direction))
        step = (eps * w_norm.clamp_min(1.0) / d_norm.clamp_min(1e-300)).to(h.dtype)
        outs = []
        for sign in (1.0, -1.0):
            if before_pass is not None:
                before_pass()
            state = dict(base)
            state.update({n: base[n] + (sign * step) * d for n, d in direction.items()})
            outs.append(stages.run(state, {n: b.clone() for n, b in buf.items()}, h.clone(), start))
        return (outs[0] - outs[1]) / (2 * step)


def _theta_grads(batch: MetaBatch, logits: Tensor, jd: Tensor | None) -> dict[str, Tensor]:
    """``d/dtheta <grad_z l(z, theta), J d>`` with ``z``, ``J d`` constants: through the loss head only."""
    names = list(batch.theta)
    zeros = {n: torch.zeros_like(batch.theta[n]) for n in names}
    if jd is None:
        return zeros
    with torch.enable_grad():
        z = logits.detach().requires_grad_()
        loss, _ = batch.method.loss(z, batch.y, batch.theta)
        (gz,) = torch.autograd.grad(loss, z, create_graph=True)
        inner = (gz * jd).sum()
        if not inner.requires_grad:  # the loss does not depend on theta at all
            return zeros
        out = torch.autograd.grad(inner, [batch.theta[n] for n in names], allow_unused=True)
    return {n: zeros[n] if g is None else g for n, g in zip(names, out)}


def directional(
    batch: MetaBatch,
    contributing: set[str] | None,
    gate_fn: GateFn | None = None,
    lambda_g: float = 0.0,
    *,
    mode: str = "jvp",
    stages: Stages,
    fd_eps: float | None = None,
) -> MetaResult:
    """One Virtual-Train + Meta-Train with first-order backprop and one directional derivative.

    Args:
        batch: the step's data and parameters.
        contributing: layers whose meta-gradient path is kept (``None``: all).
        gate_fn: FaMUS's sampler; its gated layers keep the path only when their gate is 1.
        lambda_g: weight of L_g on the last layer (0 disables it).
        mode: ``"jvp"`` (exact) or ``"fd"`` (central difference).
        stages: the model's stages (cached-activation restarts).
        fd_eps: relative finite-difference step (default :func:`default_fd_eps`).

    Returns:
        :class:`MetaResult`, equal to :func:`second_order`'s for the same arguments and gates.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    device = batch.x.device
    timer = StageTimer(device)
    params = batch.params
    # the JVP/FD passes redo the Virtual-Train forward, so they start from the same buffers
    buffers0 = {n: b.clone() for n, b in batch.buffers.items()}
    trace = Trace()
    rng_before = rng_state(device)
    logits = stages.run(params, batch.buffers, batch.x, record=trace)
    rng_after_virtual = rng_state(device)
    keep = batch.keep_virtual and same_rng_state(rng_before, rng_after_virtual)
    loss, c = batch.method.loss(logits, batch.y, batch.theta)
    timer.mark("virtual_forward")

    names = list(params)
    raw = torch.autograd.grad(loss, [params[n] for n in names], allow_unused=True, retain_graph=keep)
    grads: dict[str, Tensor | None] = dict(zip(names, raw))
    gates: dict[str, Tensor] = {}
    extra = None
    sampler_params: dict[str, Tensor] = {}
    hard: dict[str, bool] = {}
    if gate_fn is not None:
        gates, extra, sampler_params = gate_fn(grads)
        hard = dict(zip(gates, torch.stack([g.detach() for g in gates.values()]).tolist())) if gates else {}
    timer.mark("virtual_backward")

    # w_hat has the same value for every layer; the ones whose v we need become leaves
    w_hat: dict[str, Tensor] = {}
    leaves: list[str] = []  # v = dObjective/dw_hat needed (contributing, gated on or off)
    path: list[str] = []  # the meta gradient flows through them: they carry the direction d
    with torch.no_grad():
        for info in batch.layers:
            for pn in info.params:
                w, g = params[pn], grads[pn]
                w_hat[pn] = w.detach() if g is None else w - batch.lrs[pn] * g
                if g is None:
                    continue
                if info.name in gates:
                    leaves.append(pn)
                    if hard[info.name]:
                        path.append(pn)
                elif contributing is None or info.name in contributing:
                    leaves.append(pn)
                    path.append(pn)
    for pn in leaves:
        w_hat[pn].requires_grad_()
    lowest = min((stages.stage_of[pn] for pn in leaves), default=len(stages))
    meta_buffers = {n: b.clone() for n, b in batch.buffers.items()}
    meta_logits = stages.run(w_hat, meta_buffers, batch.x_meta, grad_from=lowest)
    meta_loss = F.cross_entropy(meta_logits, batch.y_meta)
    timer.mark("meta_forward")

    aux: dict[str, Tensor] = {}
    last = batch.layers[-1]
    use_g = bool(lambda_g) and all(grads[p] is not None and p in leaves for p in last.params)
    V: dict[str, Tensor] = {}
    b: dict[str, Tensor] = {}
    if leaves and use_g:
        v_last = torch.autograd.grad(meta_loss, [w_hat[p] for p in last.params], create_graph=True)
        g_last = [grads[p].detach().requires_grad_() for p in last.params]
        loss_g = grad_match_loss(g_last, list(v_last))
        aux["loss_g"] = loss_g.detach()
        # V = v + lambda_g * H a (double backward of the meta pass only); b = dL_g/dg_L
        out = torch.autograd.grad(meta_loss + lambda_g * loss_g, [w_hat[p] for p in leaves] + g_last)
        V = dict(zip(leaves, out[: len(leaves)]))
        b = dict(zip(last.params, out[len(leaves) :]))
    elif leaves:
        V = dict(zip(leaves, torch.autograd.grad(meta_loss, [w_hat[p] for p in leaves])))

    sampler_grads = None
    if extra is not None:
        aux["loss_r"] = extra.detach()
    if sampler_params:
        gate_obj = extra if extra is not None else 0.0
        for info in batch.layers:
            if info.name in gates:
                s = sum(batch.lrs[p] * (V[p] * grads[p]).sum() for p in info.params if p in V)
                gate_obj = gate_obj + gates[info.name] * (-s if hard[info.name] else s)
        sp = list(sampler_params)
        out = torch.autograd.grad(gate_obj, [sampler_params[n] for n in sp], allow_unused=True)
        sampler_grads = {n: torch.zeros_like(sampler_params[n]) if g is None else g for n, g in zip(sp, out)}

    direction = {p: -batch.lrs[p] * V[p] for p in path}
    for p, bp in b.items():
        direction[p] = direction[p] + bp if p in direction else bp
    jd = None
    if direction:
        start = trace.usable_start(min(stages.stage_of[p] for p in direction))
        h = trace.inputs[start].detach()
        base = {n: p.detach() for n, p in params.items()}
        rng_after_meta = rng_state(device)

        def replay() -> None:  # the same dropout masks as the Virtual-Train forward
            set_rng_state(trace.rng[start], device)

        try:
            if mode == "jvp":
                replay()
                jd = jvp_logits(stages, base, buffers0, h, start, direction)
            else:
                eps = default_fd_eps(logits.dtype) if fd_eps is None else fd_eps
                jd = fd_logits(stages, base, buffers0, h, start, direction, eps, replay)
        finally:
            set_rng_state(rng_after_meta, device)
    meta_grads = _theta_grads(batch, logits, jd)
    timer.mark("meta_backward")
    return MetaResult(
        meta_grads=meta_grads,
        sampler_grads=sampler_grads,
        gates={k: v.detach() for k, v in gates.items()} or None,
        meta_loss=meta_loss.detach(),
        train_loss=loss.detach(),
        weights=c.detach(),
        aux=aux,
        times=timer.times,
        virtual_logits=logits if keep else None,
        virtual_buffers=batch.buffers,
        train_grads=grads,
    )


class Directional(Engine):
    """Base of the engines built on :func:`directional`: owns the model's :class:`Stages`.

    Args:
        stages: ``"auto"`` (an ``nn.Sequential``'s children), ``None`` (no cached activations),
            or a list of top-level child names (declared split points, checked on the first batch).
    """

    mode = "jvp"

    def __init__(self, stages: str | list[str] | None = "auto") -> None:
        self.stages_spec = stages
        self._stages: tuple[int, Stages] | None = None

    def staging(self, batch: MetaBatch) -> Stages:
        """The model's stages, built once per model."""
        if self._stages is None or self._stages[0] != id(batch.model):
            example = batch.x[: min(2, batch.x.shape[0])]
            self._stages = (id(batch.model), Stages.from_model(batch.model, self.stages_spec, example))
        return self._stages[1]

    def fd_options(self) -> dict:
        return {}

    def run(self, batch, contributing, gate_fn=None, lambda_g=0.0) -> MetaResult:
        return directional(
            batch, contributing, gate_fn, lambda_g, mode=self.mode, stages=self.staging(batch), **self.fd_options()
        )

    def compute(self, batch, generator, layers=None):
        contrib = None if layers is None else select_layers(batch.layers, layers)
        return self.run(batch, contrib)


@ENGINES.register("jvp")
class JVP(Directional):
    """The exact meta gradient by one forward-mode JVP (``torch.func.jvp``); no double backward.

    Args:
        stages: see :class:`Directional`.
    """

    name = "jvp"
    mode = "jvp"


@ENGINES.register("fd")
class FD(Directional):
    """The meta gradient by a central difference of two forward passes; no double backward.

    Args:
        fd_eps: relative step (default :func:`default_fd_eps`: 2.4e-5 in float32, 6.1e-6 in float64).
        stages: see :class:`Directional`.
    """

    name = "fd"
    mode = "fd"

    def __init__(self, fd_eps: float | None = None, stages: str | list[str] | None = "auto") -> None:
        super().__init__(stages)
        if fd_eps is not None and not (fd_eps > 0 and math.isfinite(fd_eps)):
            raise ValueError(f"fd_eps must be a positive number, got {fd_eps}")
        self.fd_eps = fd_eps

    def fd_options(self) -> dict:
        return {"fd_eps": self.fd_eps}
