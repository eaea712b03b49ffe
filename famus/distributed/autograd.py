"""The one differentiable collective: a sum over ranks that autograd and forward mode see through.

Everything that reduces tensors over ranks (:mod:`famus.distributed.union`, and through it
:class:`~famus.distributed.batchnorm.SyncBatchNorm`) is built on :func:`all_reduce_sum`, so the
second-order engines (``exact``, ``famus``) can backprop through it twice and the forward-mode ones
(``jvp``) can push tangents through it.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from famus.distributed.group import comm_device, is_distributed


class AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable to any order and in forward mode (``torch.func.jvp``).

    Backward: the gradient of ``F = sum over ranks of each rank's objective`` w.r.t. this rank's
    input is the sum over ranks of the output gradients, itself an all-reduce (so double backward
    works). Forward mode: the tangent is summed the same way.
    """

    @staticmethod
    def forward(tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dev = comm_device()
        if dev is not None and out.device != dev:
            moved = out.to(dev)
            dist.all_reduce(moved)
            return moved.to(out.device)
        dist.all_reduce(out)
        return out

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        pass

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        return AllReduceSum.apply(grad)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        return AllReduceSum.apply(tangent)


def all_reduce_sum(t: Tensor, differentiable: bool = False) -> Tensor:
    """``t`` summed over ranks (a new tensor; ``t`` itself without a process group).

    The primitive under :func:`famus.distributed.union.to_union`; call that, which says what the
    sum means for the union batch.

    Args:
        differentiable: keep the autograd graph (the gradient flows back to every rank's ``t``).
    """
    if not is_distributed():
        return t
    if differentiable:
        return AllReduceSum.apply(t)
    with torch.no_grad():
        return AllReduceSum.apply(t.detach())
