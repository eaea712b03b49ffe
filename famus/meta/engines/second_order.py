"""Meta gradients by second-order backprop: ``exact``, ``block`` and ``random``.

All three build w_hat(theta) = w - alpha * grad_w L_train(w, theta) (alpha: ``batch.lrs``, a number or
an elementwise tensor per parameter, see :mod:`famus.meta.virtual_step`) with the graph
kept only for the layers that contribute; other layers take a detached w_hat, so
the meta backward never enters the network below the lowest contributing layer.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from famus import distributed as dist
from famus.meta import inputs as io
from famus.meta.engines.base import ENGINES, Engine, MetaBatch, MetaResult, StageTimer, run_gates, select_layers
from famus.meta.engines.staging import rng_state, same_rng_state
from famus.meta.precision import full_precision, meta_ce, method_loss

# gate_fn(grads) -> (gates, extra_loss, sampler_params): gates maps layer name -> 0-d
# straight-through tensor in {0, 1}; extra_loss is added to the meta objective.
GateFn = Callable[[dict[str, Tensor | None]], tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]]


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


def second_order(
    batch: MetaBatch,
    contributing: set[str] | None,
    gate_fn: GateFn | None = None,
    lambda_g: float = 0.0,
) -> MetaResult:
    """One Virtual-Train + Meta-Train with autograd's double backward.

    Args:
        batch: the step's data and parameters.
        contributing: layers whose second-order path is kept (``None``: all).
        gate_fn: FaMUS's sampler; its gated layers keep the path only when their gate is 1.
        lambda_g: weight of L_g on the last layer (0 disables it).

    Returns:
        :class:`MetaResult` with the gradient of ``L_c + lambda_g L_g + extra`` w.r.t. theta
        and the sampler parameters that ``gate_fn`` returned.
    """
    device = batch.device
    timer = StageTimer(device)
    rng_before = rng_state(device)
    logits = io.forward(batch.model, {**batch.params, **batch.buffers}, batch.x)
    # a forward that drew random numbers (dropout) does not equal a later Actual-Train forward
    keep = batch.keep_virtual and same_rng_state(rng_before, rng_state(device))
    loss, c = method_loss(batch.method, logits, batch.y, batch.theta, batch.dtype)
    timer.mark("virtual_forward")

    names = list(batch.params)
    raw = torch.autograd.grad(loss, [batch.params[n] for n in names], create_graph=True, allow_unused=True)
    # in a process group: the union batch's gradient and loss, summed over ranks differentiably, so
    # the meta gradient also flows back through the other ranks' examples
    loss_value, *raw = dist.sum_over_ranks([loss.detach(), *raw], differentiable=True)
    grads: dict[str, Tensor | None] = dict(zip(names, raw))
    gates, extra, sampler_params, hard = run_gates(gate_fn, grads)
    timer.mark("virtual_backward")

    w_hat: dict[str, Tensor] = {}
    for info in batch.layers:
        for pn in info.params:
            w, g, lr = batch.params[pn], grads[pn], batch.lrs[pn]
            if g is None:  # unused by this forward: w_hat = w
                w_hat[pn] = w.detach()
            elif info.name in gates:
                r = gates[info.name]
                # reference code: an "on" layer keeps the second-order path; an "off" one
                # only feeds the straight-through gate. Same value either way.
                w_hat[pn] = w - lr * r * g if hard[info.name] else w - lr * (1 - r) * g.detach()
            elif contributing is None or info.name in contributing:
                w_hat[pn] = w - lr * g
            else:
                w_hat[pn] = (w - lr * g).detach()
    # batch.buffers now hold the Virtual-Train statistics, which Actual-Train reuse copies back:
    # the meta pass writes into its own clones
    meta_buffers = {n: b.clone() for n, b in batch.buffers.items()}
    meta_logits = io.forward(batch.model, {**w_hat, **meta_buffers}, batch.x_meta)
    meta_loss = meta_ce(meta_logits, batch.y_meta, batch.dtype)
    timer.mark("meta_forward")

    objective = meta_loss
    aux: dict[str, Tensor] = {}
    last = batch.layers[-1]
    if lambda_g and all(grads[p] is not None for p in last.params):
        last_hat = [w_hat[p] for p in last.params]
        if all(t.requires_grad for t in last_hat):
            val = torch.autograd.grad(meta_loss, last_hat, create_graph=True)
            val = dist.mean_over_ranks(val, differentiable=True)  # the union meta batch's gradient
            with full_precision(device):
                loss_g = grad_match_loss([grads[p] for p in last.params], list(val))
            objective = objective + lambda_g * loss_g
            aux["loss_g"] = loss_g.detach()
    if extra is not None:
        objective = objective + extra
        aux["loss_r"] = extra.detach()
    theta_names = list(batch.theta)
    sampler_names = list(sampler_params)
    inputs = [batch.theta[n] for n in theta_names] + [sampler_params[n] for n in sampler_names]
    # No retain_graph needed for Actual-Train reuse: this backward only runs nodes on a path to
    # theta and the samplers, and the Virtual-Train forward nodes (logits -> w) are not on one.
    out = torch.autograd.grad(objective, inputs, allow_unused=True)
    out = [torch.zeros_like(t) if g is None else g for t, g in zip(inputs, out)]
    meta_grads = dict(zip(theta_names, out[: len(theta_names)]))
    sampler_grads = dict(zip(sampler_names, out[len(theta_names) :])) or None
    timer.mark("meta_backward")
    return MetaResult(
        meta_grads=meta_grads,
        sampler_grads=sampler_grads,
        gates={k: v.detach() for k, v in gates.items()} or None,
        meta_loss=meta_loss.detach(),
        train_loss=loss_value,
        weights=c.detach(),
        aux=aux,
        times=timer.times,
        virtual_logits=logits if keep else None,
        logits=logits.detach(),
        virtual_buffers=batch.buffers,
        train_grads={n: None if g is None else g.detach() for n, g in grads.items()},
    )


@ENGINES.register("exact")
class Exact(Engine):
    """Full second-order backprop through every layer: the reference meta gradient."""

    name = "exact"

    def compute(self, batch, generator, layers=None):
        contrib = None if layers is None else select_layers(batch.layers, layers)
        return second_order(batch, contrib)


@ENGINES.register("block")
class Block(Engine):
    """Only a fixed list of layers contributes (Table 4's pre-specified block).

    Args:
        layers: layer names or module prefixes, e.g. ``["layer3.4"]`` for one residual block.
    """

    name = "block"

    def __init__(self, layers: list[str] | str | None = None) -> None:
        if layers is None:
            raise ValueError("the block engine needs layers=[...] (layer names or module prefixes)")
        self.block = [layers] if isinstance(layers, str) else list(layers)

    def bind(self, layers, device, dtype):
        super().bind(layers, device, dtype)
        self.selected = select_layers(layers, self.block, "block")

    def compute(self, batch, generator, layers=None):
        contrib = self.selected if layers is None else select_layers(batch.layers, layers)
        res = second_order(batch, contrib)
        one = batch.one()
        res.gates = {n: one for n in sorted(contrib, key=[i.name for i in batch.layers].index)}
        return res


@ENGINES.register("random")
class RandomLayers(Engine):
    """``s`` layers drawn uniformly at random each step (Table 4's random layers).

    Args:
        s: how many layers contribute each step.
    """

    name = "random"

    def __init__(self, s: int = 4) -> None:
        if s < 1:
            raise ValueError(f"random engine needs s >= 1, got {s}")
        self.s = s

    def compute(self, batch, generator, layers=None):
        names = [i.name for i in batch.layers]
        if layers is None:
            idx = torch.randperm(len(names), generator=generator)[: self.s].tolist()
            contrib = {names[i] for i in idx}
        else:
            contrib = select_layers(batch.layers, layers)
        res = second_order(batch, contrib)
        one = batch.one()
        res.gates = {n: one for n in names if n in contrib}
        return res
