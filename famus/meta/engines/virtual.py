"""The engine skeleton every backend shares: Virtual-Train, FaMUS's gate draw, and the result.

A backend is

    vt = virtual_train(batch, create_graph=..., timer=timer)    # Eq. 3's forward, loss and gradient
    gates = draw_gates(sampler, vt.grads); timer.mark("virtual_backward")
    ... its own Meta-Train: w_hat, the meta loss L_c, the meta gradient ...
    return pack(vt, gates, meta_loss, meta_grads, sampler_grads, aux, timer)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from famus import distributed as dist
from famus.meta import inputs as io
from famus.meta.engines.base import MetaBatch, MetaResult, Sampler, StageTimer, VirtualTrain
from famus.meta.engines.staging import rng_state, same_rng_state
from famus.meta.precision import full_precision, method_loss


def virtual_train(batch: MetaBatch, *, create_graph: bool, timer: StageTimer | None = None,
                  forward: Callable[[], Tensor] | None = None) -> VirtualTrain:
    """Virtual-Train: logits at w, the method's weighted loss and its gradient ``g = grad_w L``.

    In a process group the loss and ``g`` are the union batch's, summed over ranks (differentiably
    with ``create_graph``, so the meta gradient flows back through every rank's examples).

    Args:
        batch: the step's data; train-mode BN writes the Virtual-Train statistics into ``batch.buffers``.
        create_graph: keep ``g``'s graph (second-order backprop through it).
        timer: charged ``virtual_forward`` after the loss.
        forward: ``() -> (n, C)`` logits at ``batch.params`` and ``batch.buffers`` (default: the model
            through :func:`famus.meta.inputs.forward`; the forward-mode backends record stage inputs).

    Returns:
        :class:`VirtualTrain` with ``grads`` in their graph when ``create_graph``.
    """
    device = batch.device
    rng_before = rng_state(device)
    logits = forward() if forward is not None else io.forward(batch.model, {**batch.params, **batch.buffers}, batch.x)
    # a forward that drew random numbers (dropout) does not equal a later Actual-Train forward
    reusable = batch.keep_virtual and same_rng_state(rng_before, rng_state(device))
    loss, c = method_loss(batch.method, logits, batch.y, batch.theta, batch.dtype)
    if timer is not None:
        timer.mark("virtual_forward")
    names = list(batch.params)
    raw = torch.autograd.grad(loss, [batch.params[n] for n in names], create_graph=create_graph,
                              retain_graph=create_graph or reusable, allow_unused=True)
    loss_value, *raw = dist.sum_over_ranks([loss.detach(), *raw], differentiable=create_graph)
    return VirtualTrain(logits=logits, loss=loss_value, weights=c.detach(), grads=dict(zip(names, raw)),
                        buffers=batch.buffers, reusable=reusable)


@dataclass
class Gates:
    """One step's FaMUS gates (all empty without a sampler).

    Attributes:
        soft: layer name -> 0-d straight-through gate, value in {0, 1}.
        extra: the L_r term added to the meta objective, or ``None``.
        params: sampler parameter name -> tensor, to differentiate.
        hard: layer name -> the gate's value as a Python bool (the meta graph's shape depends on it).
    """

    soft: dict[str, Tensor] = field(default_factory=dict)
    extra: Tensor | None = None
    params: dict[str, Tensor] = field(default_factory=dict)
    hard: dict[str, bool] = field(default_factory=dict)


def draw_gates(sampler: Sampler | None, grads: dict[str, Tensor | None]) -> Gates:
    """Call the sampler on the Virtual-Train gradients, in full precision (:mod:`famus.meta.precision`).

    One host sync for all gates' 0/1 values, since the meta graph's shape depends on them.
    """
    if sampler is None:
        return Gates()
    device = next(g for g in grads.values() if g is not None).device
    with full_precision(device):  # samplers and Gumbel noise in full precision
        soft, extra, params = sampler(grads)
    hard = dict(zip(soft, torch.stack([g.detach() for g in soft.values()]).tolist())) if soft else {}
    return Gates(soft, extra, params, hard)


def pack(vt: VirtualTrain, gates: Gates, meta_loss: Tensor, meta_grads: dict[str, Tensor],
         sampler_grads: dict[str, Tensor] | None, aux: dict[str, Tensor], timer: StageTimer) -> MetaResult:
    """The :class:`MetaResult` of one step (everything detached but reusable Virtual-Train logits)."""
    return MetaResult(
        meta_grads=meta_grads,
        sampler_grads=sampler_grads,
        gates={k: v.detach() for k, v in gates.soft.items()} or None,
        meta_loss=meta_loss.detach(),
        aux=aux,
        times=timer.times,
        virtual=vt.detached(),
    )
