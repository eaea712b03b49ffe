"""From per-rank quantities to the union batch's: the one reduction rule, and the shards it assumes.

The union batch is the concatenation of the ranks' shards; :func:`shard` gives every rank an equal,
contiguous part of each training and meta batch. A quantity computed on this rank's shard becomes
the union batch's by :func:`to_union`, and every reduction over ranks in famus goes through it
(:func:`sum_over_ranks`, :func:`mean_over_ranks`, :func:`global_sum`, :func:`reduce_gradients_`,
:func:`average_buffers_`, and SyncBatchNorm's statistics).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from famus.distributed.autograd import all_reduce_sum
from famus.distributed.group import is_distributed, rank, world_size

Rule = Literal["sum", "mean"]


def to_union(tensors: Sequence[Tensor | None], rule: Rule, differentiable: bool = False) -> list[Tensor | None]:
    """The union batch's value of each per-rank quantity in ``tensors``, by the reduction ``rule``.

    How a per-rank quantity becomes the union batch's:

    * ``"sum"``: **a sum of per-example terms** is summed over ranks. The shard's terms plus the
      other shards' terms are the union's terms. This covers the Virtual-Train loss and its
      gradient ``g`` (each rank's loss is ``sum_i c_i L_i`` over its shard, with coefficients ``c``
      already those of the union batch: normalized by a union sum, like MW-Net's ``V_i / sum V``,
      or divided by the union size ``n * world_size``), the normalizers ``sum_i V_i`` themselves,
      the meta-learner's Actual-Train gradient (the same union coefficients), and counts and sums
      of scores (correct predictions, clean-score sums).
    * ``"mean"``: **a mean over the shard** (or a per-rank estimate of a replicated quantity) is
      averaged over ranks. A mean over the union is the shard means weighted by shard size, and
      the shards are equal (:func:`shard` enforces it), so the weights are equal and the weighted
      mean is the plain mean. This covers the meta-set gradient ``v`` and loss ``L_c`` (a mean over
      the union meta batch), the gradients of replicated meta parameters (meta model, FaMUS
      samplers: each rank's estimates the union's), ERM's Actual-Train gradient (a mean loss), and
      BN running buffers (:func:`average_buffers_`).

    Not reduced: per-example meta parameters (L2R's ``eps``) live on their own rank. Statistics
    whose shard counts differ are not means of equal parts: SyncBatchNorm gathers each rank's
    (mean, centred sum of squares, count) with a ``"sum"`` of one-hot rows and combines them with
    count weights (Chan et al.).

    Args:
        tensors: per-rank quantities; ``None`` entries stay ``None``. Tensors of one dtype and
            device travel in one flat collective.
        rule: ``"sum"`` or ``"mean"``, as above.
        differentiable: keep the autograd graph (gradients flow back to every rank's inputs; used
            inside the meta step, where the second-order and forward-mode engines differentiate
            through the reduction).

    Returns:
        The union's values (new tensors), or ``tensors`` as they are without a process group.
    """
    if rule not in ("sum", "mean"):
        raise ValueError(f"unknown reduction rule {rule!r}; use 'sum' or 'mean'")
    if not is_distributed():
        return list(tensors)
    scale = 1.0 / world_size() if rule == "mean" else 1.0
    out: list[Tensor | None] = list(tensors)
    groups: dict[tuple, list[int]] = {}  # one collective per (dtype, device): usually one for the list
    for i, t in enumerate(tensors):
        if t is not None:
            groups.setdefault((t.dtype, t.device), []).append(i)
    for idx in groups.values():
        parts = [tensors[i] if differentiable else tensors[i].detach() for i in idx]
        red = all_reduce_sum(torch.cat([p.reshape(-1) for p in parts]), differentiable=differentiable)
        if scale != 1.0:
            red = red * scale
        for i, piece in zip(idx, torch.split(red, [p.numel() for p in parts])):
            out[i] = piece.view(tensors[i].shape)
    return out


def sum_over_ranks(tensors: Sequence[Tensor | None], differentiable: bool = False) -> list[Tensor | None]:
    """:func:`to_union` with the ``"sum"`` rule: sums of per-example terms, counts."""
    return to_union(tensors, "sum", differentiable)


def mean_over_ranks(tensors: Sequence[Tensor | None], differentiable: bool = False) -> list[Tensor | None]:
    """:func:`to_union` with the ``"mean"`` rule: means over equal shards, replicated estimates."""
    return to_union(tensors, "mean", differentiable)


def global_sum(t: Tensor) -> Tensor:
    """Differentiable union sum of one tensor (``"sum"`` rule): e.g. MW-Net's normalizer ``sum_i V_i``."""
    (out,) = to_union([t], "sum", differentiable=True)
    return out


def reduce_gradients_(params: Iterable[Tensor], extra: Sequence[Tensor] = (), mean: bool = False) -> list[Tensor]:
    """The union's ``.grad`` of ``params``, in place, DDP-style, in one collective.

    Args:
        params: parameters whose gradients were computed on this rank's shard.
        extra: detached scalars to reduce along (e.g. the loss, for logging).
        mean: the ``"mean"`` rule (a loss that is a mean over the shard) instead of ``"sum"`` (a
            loss that is a sum of union-scaled per-example terms).

    Returns:
        ``extra``, reduced.
    """
    if not is_distributed():
        return list(extra)
    grads = [p.grad for p in params if p.grad is not None]
    out = to_union([g.detach() for g in grads] + [e.detach() for e in extra], "mean" if mean else "sum")
    with torch.no_grad():
        for g, r in zip(grads, out):
            g.copy_(r)
    return out[len(grads) :]


def average_buffers_(module: nn.Module) -> None:
    """Floating-point buffers (BN running statistics) by the ``"mean"`` rule, in place.

    With per-rank BatchNorm statistics each rank's running mean is an exponential average of its
    shards' batch means; their average is the exponential average of the union batches' means
    (running variances are averaged likewise: the mean of the shards' variances, which leaves out
    the spread between shard means). Integer buffers (``num_batches_tracked``) are equal on every
    rank already.
    """
    if not is_distributed():
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    for b, r in zip(bufs, to_union(bufs, "mean")):
        b.copy_(r)


def shard(n: int, what: str = "batch size") -> slice:
    """This rank's rows of an ``n``-row batch: contiguous, equal shards (``n`` must divide evenly).

    Equal shards are what make the ``"mean"`` rule of :func:`to_union` exact.
    """
    w = world_size()
    if w == 1:
        return slice(0, n)
    if n % w:
        raise ValueError(f"{what} {n} does not split evenly over {w} processes; choose a multiple of {w}")
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)
