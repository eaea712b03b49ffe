"""Data-parallel training over ``torch.distributed``: process-group helpers and the few collectives famus needs.

Each rank (process) holds an equal shard of the training batch and of the meta batch; the meta
step stays that of the union batch because every union-batch quantity is reduced across ranks by
one rule, :func:`~famus.distributed.union.to_union` (its docstring says which quantities are
summed and which averaged):

* the Virtual-Train gradient ``g`` (a sum over ranks: each rank's loss is its shard's part of
  ``sum_i c_i L_i`` with the union's coefficients ``c``), differentiably for the second-order
  engines so that the meta gradient flows back through the other ranks' examples;
* MW-Net's normalizer ``sum_i V_i`` (over the union batch), differentiably;
* the meta-set gradient ``v`` (a mean over ranks, since ``L_c`` is the mean over the union meta batch);
* the meta-model and sampler gradients (a mean) and the Actual-Train gradient (a sum, DDP-style).

Every function here is the identity (no collective at all) when no process group is initialized
or the world size is 1, so a single process runs the exact same code as without this package.

Conventions an engine follows (see :class:`famus.meta.engines.base.MetaResult`): the gradients it
returns for replicated parameters (meta model, samplers) are this rank's gradient of
``F = sum over ranks of the rank's objective``, where each rank's objective estimates the union
objective (its shard's mean meta loss plus the shared terms); their mean over ranks is the union
meta gradient. Per-example meta parameters (L2R's ``eps``) are not replicated: each rank keeps its
own slice, divided by the world size.

Launch with ``torchrun --nproc_per_node N -m famus train ...``: :func:`process_group` initializes
the group from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), with
``nccl`` for GPUs and ``gloo`` for CPU.

Modules, one concern each:

* :mod:`~famus.distributed.group`: rank, world size, device, setting the group up and leaving it;
* :mod:`~famus.distributed.union`: the per-rank-to-union reduction rule and the equal shards it assumes;
* :mod:`~famus.distributed.collectives`: broadcasts and agreement (the same values, random streams, errors);
* :mod:`~famus.distributed.autograd`: the differentiable all-reduce every reduction is built on;
* :mod:`~famus.distributed.batchnorm`: BatchNorm over the union batch.
"""

from famus.distributed.autograd import all_reduce_sum
from famus.distributed.batchnorm import SyncBatchNorm, convert_sync_batchnorm
from famus.distributed.collectives import (
    agree_on_errors,
    broadcast_,
    broadcast_object,
    same_on_all_ranks,
    sync_generator_,
)
from famus.distributed.group import (
    DEFAULT_TIMEOUT_S,
    abandon,
    backend_for,
    env_world_size,
    is_distributed,
    is_main,
    local_rank,
    process_group,
    rank,
    rank_device,
    world_size,
)
from famus.distributed.union import (
    average_buffers_,
    global_sum,
    mean_over_ranks,
    reduce_gradients_,
    shard,
    sum_over_ranks,
    to_union,
)

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "SyncBatchNorm",
    "abandon",
    "agree_on_errors",
    "all_reduce_sum",
    "average_buffers_",
    "backend_for",
    "broadcast_",
    "broadcast_object",
    "convert_sync_batchnorm",
    "env_world_size",
    "global_sum",
    "is_distributed",
    "is_main",
    "local_rank",
    "mean_over_ranks",
    "process_group",
    "rank",
    "rank_device",
    "reduce_gradients_",
    "same_on_all_ranks",
    "shard",
    "sum_over_ranks",
    "sync_generator_",
    "to_union",
    "world_size",
]
