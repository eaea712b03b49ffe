"""The second-order backend: meta gradients by autograd's double backward (``exact``, ``block``,
``random``, ``famus``).

It builds w_hat(theta) = w - alpha * grad_w L_train(w, theta) (alpha: ``batch.lrs``, a number or
an elementwise tensor per parameter, see :mod:`famus.meta.virtual_step`) with the graph
kept only for the layers that contribute; other layers take a detached w_hat, so
the meta backward never enters the network below the lowest contributing layer.
"""

from __future__ import annotations

import torch
from torch import Tensor

from famus import distributed as dist
from famus.meta import inputs as io
from famus.meta.engines.base import MetaBatch, MetaResult, Sampler, StageTimer
from famus.meta.engines.virtual import Gates, draw_gates, pack, virtual_train
from famus.meta.precision import full_precision, meta_ce


def grad_match_loss(train: list[Tensor], val: list[Tensor]) -> Tensor:
    """FaMUS's L_g as the reference code computes it: match per-row mean and std.

    Args:
        train: gradients of the last layer's parameters from Virtual-Train (e.g. ``(C, D)``, ``(C,)``).
        val: the same parameters' gradients of the meta loss at w_hat.

    Returns:
        0-d ``sum_params mean_rows((mu_t - mu_v)^2 + (sd_t - sd_v)^2)``.
    """
    total = train[0].new_zeros(())
    for gt, gv in zip(train, val):
        rows_t = gt.reshape(gt.shape[0], -1) if gt.dim() >= 2 else gt.reshape(1, -1)
        rows_v = gv.reshape(rows_t.shape)
        if rows_t.shape[1] < 2:  # std of one number is undefined; match the means only
            total = total + ((rows_t.mean(1) - rows_v.mean(1)) ** 2).mean()
            continue
        dm = rows_t.mean(1) - rows_v.mean(1)
        ds = rows_t.std(1) - rows_v.std(1)
        total = total + (dm**2 + ds**2).mean()
    return total


def _virtual_weights(batch: MetaBatch, grads: dict[str, Tensor | None], gates: Gates,
                     contributing: set[str] | None) -> dict[str, Tensor]:
    """``w_hat = w - alpha * g`` per parameter, in the graph only for the layers that contribute."""
    w_hat: dict[str, Tensor] = {}
    for info in batch.layers:
        for pn in info.params:
            w, g, lr = batch.params[pn], grads[pn], batch.lrs[pn]
            if g is None:  # unused by this forward: w_hat = w
                w_hat[pn] = w.detach()
            elif info.name in gates.soft:
                r = gates.soft[info.name]
                # reference code: an "on" layer keeps the second-order path; an "off" one
                # only feeds the straight-through gate. Same value either way.
                w_hat[pn] = w - lr * r * g if gates.hard[info.name] else w - lr * (1 - r) * g.detach()
            elif contributing is None or info.name in contributing:
                w_hat[pn] = w - lr * g
            else:
                w_hat[pn] = (w - lr * g).detach()
    return w_hat


def _grad_match(batch: MetaBatch, meta_loss: Tensor, w_hat: dict[str, Tensor], grads: dict[str, Tensor | None],
                lambda_g: float, detached: bool = False) -> Tensor | None:
    """FaMUS's ``L_g`` on the last layer, differentiably; ``None`` where it does not apply.

    ``detached``: the meta-batch gradient is a constant (the authors' code): a first-order gradient of
    the meta loss at the last layer, and no second-order pass through the meta batch for L_g.
    """
    last = batch.layers[-1]
    if not (lambda_g and all(grads[p] is not None for p in last.params)):
        return None
    last_hat = [w_hat[p] for p in last.params]
    if not all(t.requires_grad for t in last_hat):
        return None
    # the objective's backward runs through meta_loss again: keep its graph
    val = torch.autograd.grad(meta_loss, last_hat, create_graph=not detached, retain_graph=True)
    val = dist.mean_over_ranks(val, differentiable=not detached)  # the union meta batch's gradient
    if detached:
        val = [v.detach() for v in val]
    with full_precision(meta_loss.device):
        return grad_match_loss([grads[p] for p in last.params], list(val))


def second_order(
    batch: MetaBatch,
    contributing: set[str] | None,
    sampler: Sampler | None = None,
    lambda_g: float = 0.0,
    lg_target: str = "differentiated",
) -> MetaResult:
    """One Virtual-Train + Meta-Train with autograd's double backward (the :class:`Backend` signature).

    Args:
        batch: the step's data and parameters.
        contributing: layers whose second-order path is kept (``None``: all).
        sampler: FaMUS's gates; its gated layers keep the path only when their gate is 1.
        lambda_g: weight of L_g on the last layer (0 disables it).
        lg_target: ``"differentiated"`` or ``"detached"`` (L_g's meta-batch gradient held constant).

    Returns:
        :class:`MetaResult` with the gradient of ``L_c + lambda_g L_g + L_r`` w.r.t. theta
        and the sampler parameters.
    """
    timer = StageTimer(batch.device)
    vt = virtual_train(batch, create_graph=True, timer=timer)
    gates = draw_gates(sampler, vt.grads)
    timer.mark("virtual_backward")

    w_hat = _virtual_weights(batch, vt.grads, gates, contributing)
    # batch.buffers now hold the Virtual-Train statistics, which Actual-Train reuse copies back:
    # the meta pass writes into its own clones
    meta_buffers = {n: b.clone() for n, b in batch.buffers.items()}
    meta_logits = io.forward(batch.model, {**w_hat, **meta_buffers}, batch.x_meta)
    meta_loss = meta_ce(meta_logits, batch.y_meta, batch.dtype)
    timer.mark("meta_forward")

    objective = meta_loss
    aux: dict[str, Tensor] = {}
    loss_g = _grad_match(batch, meta_loss, w_hat, vt.grads, lambda_g, detached=lg_target == "detached")
    if loss_g is not None:
        objective = objective + lambda_g * loss_g
        aux["loss_g"] = loss_g.detach()
    if gates.extra is not None:
        objective = objective + gates.extra
        aux["loss_r"] = gates.extra.detach()
    theta_names, sampler_names = list(batch.theta), list(gates.params)
    inputs = [batch.theta[n] for n in theta_names] + [gates.params[n] for n in sampler_names]
    # No retain_graph needed for Actual-Train reuse: this backward only runs nodes on a path to
    # theta and the samplers, and the Virtual-Train forward nodes (logits -> w) are not on one.
    out = torch.autograd.grad(objective, inputs, allow_unused=True)
    out = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, out)]
    meta_grads = dict(zip(theta_names, out[: len(theta_names)]))
    sampler_grads = dict(zip(sampler_names, out[len(theta_names) :])) or None
    timer.mark("meta_backward")
    return pack(vt, gates, meta_loss, meta_grads, sampler_grads, aux, timer)


class SecondOrder:
    """The second-order :class:`~famus.meta.engines.base.Backend` (no options)."""

    def __call__(self, batch: MetaBatch, contributing: set[str] | None, sampler: Sampler | None = None,
                 lambda_g: float = 0.0, lg_target: str = "differentiated") -> MetaResult:
        return second_order(batch, contributing, sampler, lambda_g, lg_target)
