"""The forward-mode backends: meta gradients without a second backward pass (``jvp`` and ``fd``).

Write the method's training loss as ``l(z, theta)`` with ``z = f(x; w)`` the ``(n, C)`` logits,
and ``g(theta) = grad_w l = J^T grad_z l`` (``J = dz/dw``). With ``w_hat = w - alpha * g``,

    dL_c/dtheta = d/dtheta < d, g(theta) > = d/dtheta < grad_z l(z, theta), J d >,
    d = -alpha * v,  v = dL_c/dw_hat (first order, at w_hat; v and J d are constants for theta).

``alpha`` is the virtual step's size per parameter (``batch.lrs``): a number (SGD) or a tensor applied
elementwise (Adam's preconditioned step, :mod:`famus.meta.virtual_step`); ``d = -alpha * v`` either way.

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

import torch
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta import inputs as io
from famus.meta.engines.base import MetaBatch, MetaResult, Sampler, StageTimer
from famus.meta.engines.derivative import default_fd_eps, fd_logits, jvp_logits
from famus.meta.engines.second_order import grad_match_loss
from famus.meta.engines.staging import Stages, Trace, rng_state, set_rng_state
from famus.meta.engines.virtual import Gates, draw_gates, pack, virtual_train
from famus.meta.precision import autocast_on, full_precision, meta_ce, method_loss, upcast

MODES = ("jvp", "fd")
FD_SCHEMES = ("forward", "central")


def _theta_grads(batch: MetaBatch, logits: Tensor, jd: Tensor | None) -> dict[str, Tensor]:
    """``d/dtheta <grad_z l(z, theta), J d>`` with ``z``, ``J d`` constants: through the loss head only."""
    names = list(batch.theta)
    zeros = {n: torch.zeros_like(batch.theta[n]) for n in names}
    if jd is None:
        return zeros
    with torch.enable_grad():
        z = upcast(logits.detach(), batch.dtype).requires_grad_()
        loss, _ = method_loss(batch.method, z, batch.y, batch.theta, batch.dtype)
        (gz,) = torch.autograd.grad(loss, z, create_graph=True)
        # in a process group this rank's share of <grad_z l, J d> (its examples), times the world
        # size: the learner averages replicated meta gradients over ranks (see famus.distributed)
        inner = (gz * jd).sum() * dist.world_size()
        if not inner.requires_grad:  # the loss does not depend on theta at all
            return zeros
        out = torch.autograd.grad(inner, [batch.theta[n] for n in names], allow_unused=True)
    return {n: zeros[n] if g is None else g for n, g in zip(names, out)}


def _trace(batch: MetaBatch, stages: Stages, contributing: set[str] | None, gated: set[str]) -> Trace:
    """A trace keeping only the stage inputs a later pass can start from (``gated``: layers a sampler may switch on)."""
    if contributing is None:
        return Trace()
    possible = contributing | gated
    first = [min(stages.stage_of[p] for p in i.params) for i in batch.layers if i.name in possible]
    return Trace(start=min(first, default=len(stages)))


def _leaves(
    batch: MetaBatch, grads: dict[str, Tensor | None], hard: dict[str, bool], contributing: set[str] | None
) -> tuple[dict[str, Tensor], list[str], list[str]]:
    """``w_hat = w - alpha * g`` (detached), and which parameters need ``v`` and carry the direction.

    Returns:
        ``(w_hat, leaves, path)``: ``leaves`` (contributing or gated, on or off) require grad in the
        meta pass; ``path`` (contributing or gated on) are where the meta gradient flows.
    """
    w_hat: dict[str, Tensor] = {}
    leaves: list[str] = []
    path: list[str] = []
    with torch.no_grad():
        for info in batch.layers:
            for pn in info.params:
                w, g = batch.params[pn], grads[pn]
                w_hat[pn] = w.detach() if g is None else w - batch.lrs[pn] * g
                if g is None:
                    continue
                if info.name in hard:
                    leaves.append(pn)
                    if hard[info.name]:
                        path.append(pn)
                elif contributing is None or info.name in contributing:
                    leaves.append(pn)
                    path.append(pn)
    for pn in leaves:
        w_hat[pn].requires_grad_()
    return w_hat, leaves, path


def _objective_grads(
    batch: MetaBatch, meta_loss: Tensor, w_hat: dict[str, Tensor], leaves: list[str],
    grads: dict[str, Tensor | None], lambda_g: float, aux: dict[str, Tensor], detached: bool = False,
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """``V = dObjective/dw_hat`` on the leaves and ``b = dObjective/dg_L`` (L_g's direct term).

    Without L_g, ``V = v`` (first order). With it, ``V = v + lambda_g H a`` by a double backward of
    the meta pass only (down to the lowest leaf), exactly as the second-order engine differentiates;
    with ``detached`` (the authors' code: the meta-batch gradient in L_g is a constant), ``V = v``
    and L_g contributes ``b`` only.
    """
    if not leaves:
        return {}, {}
    last = batch.layers[-1]
    if not (lambda_g and all(grads[p] is not None and p in leaves for p in last.params)):
        return dict(zip(leaves, torch.autograd.grad(meta_loss, [w_hat[p] for p in leaves]))), {}
    g_last = [grads[p].detach().requires_grad_() for p in last.params]
    if detached:
        V = dict(zip(leaves, torch.autograd.grad(meta_loss, [w_hat[p] for p in leaves])))
        v_last = dist.mean_over_ranks([V[p] for p in last.params])  # the union meta batch's gradient
        with full_precision(meta_loss.device):
            loss_g = grad_match_loss(g_last, [v.detach() for v in v_last])
        aux["loss_g"] = loss_g.detach()
        return V, dict(zip(last.params, torch.autograd.grad(lambda_g * loss_g, g_last)))
    v_last = torch.autograd.grad(meta_loss, [w_hat[p] for p in last.params], create_graph=True)
    v_last = dist.mean_over_ranks(v_last, differentiable=True)  # the union meta batch's gradient
    with full_precision(meta_loss.device):
        loss_g = grad_match_loss(g_last, list(v_last))
    aux["loss_g"] = loss_g.detach()
    out = torch.autograd.grad(meta_loss + lambda_g * loss_g, [w_hat[p] for p in leaves] + g_last)
    return dict(zip(leaves, out[: len(leaves)])), dict(zip(last.params, out[len(leaves) :]))


def _step_dot(lr: float | Tensor, v: Tensor, g: Tensor) -> Tensor:
    """``<lr * v, g>`` for a scalar or elementwise (same shape as ``v``) step size ``lr``."""
    return (lr * v * g).sum() if isinstance(lr, Tensor) else lr * (v * g).sum()


def _sampler_grads(
    batch: MetaBatch, gates: Gates, V: dict[str, Tensor], grads: dict[str, Tensor | None],
) -> dict[str, Tensor] | None:
    """Straight-through: ``dObjective/dr_l = -<alpha V_l, g_l>`` (on) or ``+`` (off), plus L_r.

    ``alpha`` is the virtual step's size, a number or elementwise (``batch.lrs``).
    """
    if not gates.params:
        return None
    objective = gates.extra if gates.extra is not None else 0.0
    for info in batch.layers:
        if info.name in gates.soft:
            s = sum(_step_dot(batch.lrs[p], V[p], grads[p]) for p in info.params if p in V)
            objective = objective + gates.soft[info.name] * (-s if gates.hard[info.name] else s)
    names = list(gates.params)
    out = torch.autograd.grad(objective, [gates.params[n] for n in names], allow_unused=True)
    return {n: torch.zeros_like(gates.params[n]) if g is None else g for n, g in zip(names, out)}


def _directional_derivative(
    batch: MetaBatch, stages: Stages, trace: Trace, buffers0: dict[str, Tensor], direction: dict[str, Tensor],
    logits: Tensor, mode: str, fd_eps: float | None, fd_scheme: str,
) -> Tensor:
    """``J d`` ``(n, C)`` from the highest intact cached stage input below the direction, in full precision.

    Under autocast the pass runs with autocast off from the upcast cached input (a difference of 16-bit
    logits is rounding noise), and the one-sided ``fd`` scheme becomes central: the Virtual-Train logits
    it would difference against are 16-bit.
    """
    device = batch.device
    start = trace.usable_start(min(stages.stage_of[p] for p in direction))
    h = io.tree_map(lambda t: upcast(t.detach(), batch.dtype), trace.inputs[start])
    base = {n: p.detach() for n, p in batch.params.items()}
    rng_after_meta = rng_state(device)
    low = autocast_on(device)

    def replay() -> None:  # the same dropout masks as the Virtual-Train forward
        set_rng_state(trace.rng[start], device)

    try:
        with full_precision(device):
            if mode == "jvp":
                replay()
                return jvp_logits(stages, base, buffers0, h, start, direction)
            scheme = "central" if low else fd_scheme
            eps = default_fd_eps(batch.dtype if low else logits.dtype, scheme) if fd_eps is None else fd_eps
            base_logits = logits if scheme == "forward" else None
            return fd_logits(stages, base, buffers0, h, start, direction, eps, replay, base_logits)
    finally:
        set_rng_state(rng_after_meta, device)


def _direction(batch: MetaBatch, path: list[str], V: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
    """``d = -alpha * V`` on the path, plus L_g's direct term ``b`` on the last layer."""
    direction = {p: -batch.lrs[p] * V[p] for p in path}
    for p, bp in b.items():
        direction[p] = direction[p] + bp if p in direction else bp
    return direction


def directional(
    batch: MetaBatch,
    contributing: set[str] | None,
    sampler: Sampler | None = None,
    lambda_g: float = 0.0,
    lg_target: str = "differentiated",
    *,
    mode: str = "jvp",
    stages: Stages,
    fd_eps: float | None = None,
    fd_scheme: str = "central",
) -> MetaResult:
    """One Virtual-Train + Meta-Train with first-order backprop and one directional derivative.

    Args:
        batch, contributing, sampler, lambda_g, lg_target: as for
            :func:`~famus.meta.engines.second_order.second_order`.
        mode: ``"jvp"`` (exact) or ``"fd"`` (finite difference).
        stages: the model's stages (cached-activation restarts).
        fd_eps: relative finite-difference step (default :func:`default_fd_eps`).
        fd_scheme: ``"central"`` (two extra forward passes) or ``"forward"`` (one, differenced
            against the Virtual-Train logits; see :func:`fd_logits`).

    Returns:
        :class:`MetaResult`, equal to :func:`second_order`'s for the same arguments and gates.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    timer = StageTimer(batch.device)
    # the JVP/FD passes redo the Virtual-Train forward, so they start from the same buffers
    buffers0 = {n: b.clone() for n, b in batch.buffers.items()}
    # only the stage inputs a later pass can start from: the sampler's layers may switch on
    trace = _trace(batch, stages, contributing, sampler.layers if sampler is not None else set())
    vt = virtual_train(batch, create_graph=False, timer=timer,
                       forward=lambda: stages.run(batch.params, batch.buffers, batch.x, record=trace))
    gates = draw_gates(sampler, vt.grads)
    timer.mark("virtual_backward")

    w_hat, leaves, path = _leaves(batch, vt.grads, gates.hard, contributing)
    lowest = min((stages.stage_of[pn] for pn in leaves), default=len(stages))
    # the meta pass writes BN statistics into its own clones: batch.buffers now hold the
    # Virtual-Train statistics, which Actual-Train reuse copies back
    meta_buffers = {n: b.clone() for n, b in batch.buffers.items()}
    meta_logits = stages.run(w_hat, meta_buffers, batch.x_meta, grad_from=lowest)
    meta_loss = meta_ce(meta_logits, batch.y_meta, batch.dtype)
    timer.mark("meta_forward")

    aux: dict[str, Tensor] = {}
    V, b = _objective_grads(batch, meta_loss, w_hat, leaves, vt.grads, lambda_g, aux, lg_target == "detached")
    if dist.is_distributed():  # v of the union meta batch (b is the same on every rank already)
        V = dict(zip(V, dist.mean_over_ranks(list(V.values()))))
    if gates.extra is not None:
        aux["loss_r"] = gates.extra.detach()
    sampler_grads = _sampler_grads(batch, gates, V, vt.grads)
    direction = _direction(batch, path, V, b)
    jd = None
    if direction:
        jd = _directional_derivative(batch, stages, trace, buffers0, direction, vt.logits, mode, fd_eps, fd_scheme)
    meta_grads = _theta_grads(batch, vt.logits, jd)
    timer.mark("meta_backward")
    return pack(vt, gates, meta_loss, meta_grads, sampler_grads, aux, timer)


class Staged:
    """The model's :class:`Stages`, built once per model (declared split points are checked then).

    Args:
        stages: ``"auto"`` (an ``nn.Sequential``'s children), ``None`` (no cached activations),
            or a list of top-level child names (declared split points, checked on the first batch).
    """

    def __init__(self, stages: str | list[str] | None = "auto") -> None:
        self.stages_spec = stages
        self._stages: tuple[nn.Module, Stages] | None = None

    def staging(self, batch: MetaBatch) -> Stages:
        if self._stages is None or self._stages[0] is not batch.model:
            example = io.head(batch.x, 2)
            self._stages = (batch.model, Stages.from_model(batch.model, self.stages_spec, example))
        return self._stages[1]


class JVP(Staged):
    """The forward-mode :class:`~famus.meta.engines.base.Backend`: the exact meta gradient by one
    ``torch.func.jvp`` of the logits; no double backward.

    Args:
        stages: see :class:`Staged`.
    """

    def __call__(self, batch: MetaBatch, contributing: set[str] | None, sampler: Sampler | None = None,
                 lambda_g: float = 0.0, lg_target: str = "differentiated") -> MetaResult:
        return directional(batch, contributing, sampler, lambda_g, lg_target, mode="jvp", stages=self.staging(batch))


class FD(Staged):
    """The finite-difference :class:`~famus.meta.engines.base.Backend`: ``J d`` by a finite difference
    of forward passes; no double backward.

    Args:
        fd_eps: relative step (default :func:`default_fd_eps`: 2.4e-5 in float32; in float64 6.1e-6
            central, 1.5e-8 forward).
        scheme: ``"forward"`` (default): one extra forward pass, differenced against the
            Virtual-Train logits; ``"central"``: two extra passes, ``O(h^2)`` smooth error.
        stages: see :class:`Staged`.
    """

    def __init__(self, fd_eps: float | None = None, scheme: str = "forward",
                 stages: str | list[str] | None = "auto") -> None:
        super().__init__(stages)
        if fd_eps is not None and not (fd_eps > 0 and math.isfinite(fd_eps)):
            raise ValueError(f"fd_eps must be a positive number, got {fd_eps}")
        if scheme not in FD_SCHEMES:
            raise ValueError(f"scheme must be one of {FD_SCHEMES}, got {scheme!r}")
        self.fd_eps, self.scheme = fd_eps, scheme

    def __call__(self, batch: MetaBatch, contributing: set[str] | None, sampler: Sampler | None = None,
                 lambda_g: float = 0.0, lg_target: str = "differentiated") -> MetaResult:
        return directional(batch, contributing, sampler, lambda_g, lg_target, mode="fd", stages=self.staging(batch),
                           fd_eps=self.fd_eps, fd_scheme=self.scheme)
