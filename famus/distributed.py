"""Data-parallel training over ``torch.distributed``: process-group helpers and the few collectives famus needs.

Each rank (process) holds an equal shard of the training batch and of the meta batch; the meta
step stays that of the union batch because every union-batch quantity is reduced across ranks:

* the Virtual-Train gradient ``g`` (a sum over ranks: each rank's loss is its shard's part of
  ``sum_i c_i L_i`` with the union's coefficients ``c``), differentiably for the second-order
  engines so that the meta gradient flows back through the other ranks' examples;
* MW-Net's normalizer ``sum_i V_i`` (over the union batch), differentiably;
* the meta-set gradient ``v`` (a mean over ranks, since ``L_c`` is the mean over the union meta batch);
* the meta-model and sampler gradients (a mean) and the Actual-Train gradient (a sum, DDP-style).

Every function here is the identity (no collective at all) when no process group is initialized
or the world size is 1, so a single process runs the exact same code as without this module.

Conventions an engine follows (see :class:`famus.meta.engines.base.MetaResult`): the gradients it
returns for replicated parameters (meta model, samplers) are this rank's gradient of
``F = sum over ranks of the rank's objective``, where each rank's objective estimates the union
objective (its shard's mean meta loss plus the shared terms); their mean over ranks is the union
meta gradient. Per-example meta parameters (L2R's ``eps``) are not replicated: each rank keeps its
own slice, divided by the world size.

Launch with ``torchrun --nproc_per_node N -m famus train ...``: :func:`process_group` initializes
the group from the launcher's environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...), with
``nccl`` for GPUs and ``gloo`` for CPU.
"""

from __future__ import annotations

import datetime
import inspect
import os
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

DEFAULT_TIMEOUT_S = 600.0


# ---------------------------------------------------------------------- process group
def is_distributed() -> bool:
    """Whether a process group with more than one rank is initialized (collectives are needed)."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def world_size() -> int:
    """Number of ranks (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    """Rank 0: the one that writes files, logs and shows progress."""
    return rank() == 0


def env_world_size() -> int:
    """``WORLD_SIZE`` set by the launcher (torchrun), 1 when absent."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def local_rank() -> int:
    """``LOCAL_RANK`` set by the launcher: the process's index on its machine (its GPU)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def backend_for(device: torch.device | str) -> str:
    """``nccl`` for CUDA devices, ``gloo`` for the CPU."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def rank_device(name: str) -> str:
    """The device this rank trains on: ``cuda`` / ``auto`` become ``cuda:LOCAL_RANK`` under a launcher.

    In a group the caller initialized without a launcher, ``cuda`` stays the current device (set
    it with ``torch.cuda.set_device`` on each rank, as for any NCCL program).
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and env_world_size() > 1:
        return f"cuda:{local_rank()}"
    return name


@contextmanager
def process_group(device: torch.device | str, timeout_s: float = DEFAULT_TIMEOUT_S) -> Iterator[bool]:
    """Initialize the default process group from the launcher's environment when it is needed.

    Nothing happens when a group is already initialized (the caller owns it) or ``WORLD_SIZE`` is
    absent or 1. Otherwise the group is created (``nccl`` on CUDA, ``gloo`` on CPU) with a
    ``timeout_s`` timeout on collectives, so that a rank waiting for a peer that died gives up
    instead of hanging. It is destroyed when the block ends; on an exception it is left without
    waiting for the other ranks (:func:`abandon`): their collectives then fail, and the launcher
    stops the job.

    Yields:
        Whether this call created the group.
    """
    if (dist.is_available() and dist.is_initialized()) or env_world_size() <= 1:
        yield False
        return
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kwargs: dict[str, Any] = {}
    if device.type == "cuda" and "device_id" in inspect.signature(dist.init_process_group).parameters:
        kwargs["device_id"] = device  # torch >= 2.3: bind the group to this rank's GPU now
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    try:
        yield True
    except BaseException:
        abandon()
        raise
    dist.destroy_process_group()


def abandon() -> None:
    """Leave the default process group after an error, without waiting for the other ranks.

    ``destroy_process_group`` on NCCL flushes pending collectives first, which never finish when a
    peer is gone; NCCL communicators are aborted instead (``ncclCommAbort``, through torch's
    ``_abort_process_group``). Gloo's destroy closes the connections at once, so the peers' pending
    collectives fail right away. Errors while leaving are ignored: the original error matters.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        abort = getattr(dist.distributed_c10d, "_abort_process_group", None)
        if dist.get_backend() == "nccl" and abort is not None:
            abort()
        else:
            dist.destroy_process_group()
    except Exception:  # already failing: keep the first error
        pass


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def _comm_device() -> torch.device | None:
    """Where collectives run: the current GPU for nccl, else wherever the tensor is."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return None


@contextmanager
def agree_on_errors() -> Iterator[None]:
    """Run a block on every rank; when it raises on any rank, raise on every rank.

    For set-up code (checks, loading data): a rank that failed alone would leave the others
    waiting in the next collective. Without a process group this is a plain block.
    """
    if not is_distributed():
        yield
        return
    err: BaseException | None = None
    try:
        yield
    except Exception as e:  # re-raised below, on every rank
        err = e
    msgs: list[str | None] = [None] * world_size()
    dist.all_gather_object(msgs, None if err is None else f"{type(err).__name__}: {err}")
    if err is not None:
        raise err
    failed = [(r, m) for r, m in enumerate(msgs) if m is not None]
    if failed:
        r, m = failed[0]
        raise RuntimeError(f"rank {r} failed: {m}")


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` from rank ``src`` on every rank (pickled); ``obj`` itself without a process group."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ---------------------------------------------------------------------- collectives on tensors
class _AllReduceSum(torch.autograd.Function):
    """Sum over ranks, differentiable to any order and in forward mode (``torch.func.jvp``).

    Backward: the gradient of ``F = sum over ranks of each rank's objective`` w.r.t. this rank's
    input is the sum over ranks of the output gradients, itself an all-reduce (so double backward
    works). Forward mode: the tangent is summed the same way.
    """

    @staticmethod
    def forward(tensor: Tensor) -> Tensor:
        out = tensor.clone(memory_format=torch.contiguous_format)
        dev = _comm_device()
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
        return _AllReduceSum.apply(grad)

    @staticmethod
    def jvp(ctx, tangent: Tensor) -> Tensor:
        return _AllReduceSum.apply(tangent)


def all_reduce_sum(t: Tensor, differentiable: bool = False) -> Tensor:
    """``t`` summed over ranks (a new tensor; ``t`` itself without a process group).

    Args:
        differentiable: keep the autograd graph (the gradient flows back to every rank's ``t``).
    """
    if not is_distributed():
        return t
    if differentiable:
        return _AllReduceSum.apply(t)
    with torch.no_grad():
        return _AllReduceSum.apply(t.detach())


def global_sum(t: Tensor) -> Tensor:
    """Differentiable sum over ranks of ``t``: e.g. a normalizer over the union batch."""
    return all_reduce_sum(t, differentiable=True)


def _flat_reduce(tensors: Sequence[Tensor | None], scale: float, differentiable: bool) -> list[Tensor | None]:
    present = [i for i, t in enumerate(tensors) if t is not None]
    out: list[Tensor | None] = list(tensors)
    if not present:
        return out
    # one collective per (dtype, device) group: usually one for the whole list
    groups: dict[tuple, list[int]] = {}
    for i in present:
        groups.setdefault((tensors[i].dtype, tensors[i].device), []).append(i)
    for idx in groups.values():
        parts = [tensors[i] if differentiable else tensors[i].detach() for i in idx]
        flat = torch.cat([p.reshape(-1) for p in parts])
        red = all_reduce_sum(flat, differentiable=differentiable)
        if scale != 1.0:
            red = red * scale
        for i, piece in zip(idx, torch.split(red, [p.numel() for p in parts])):
            out[i] = piece.view(tensors[i].shape)
    return out


def sum_over_ranks(tensors: Sequence[Tensor | None], differentiable: bool = False) -> list[Tensor | None]:
    """Each tensor summed over ranks, in one flat collective; ``None`` entries stay ``None``.

    Without a process group the list is returned as it is.
    """
    if not is_distributed():
        return list(tensors)
    return _flat_reduce(tensors, 1.0, differentiable)


def mean_over_ranks(tensors: Sequence[Tensor | None], differentiable: bool = False) -> list[Tensor | None]:
    """Each tensor averaged over ranks, in one flat collective; ``None`` entries stay ``None``."""
    if not is_distributed():
        return list(tensors)
    return _flat_reduce(tensors, 1.0 / world_size(), differentiable)


def reduce_gradients_(params: Iterable[Tensor], extra: Sequence[Tensor] = (), mean: bool = False) -> list[Tensor]:
    """Sum (or average) the ``.grad`` of ``params`` over ranks in place, DDP-style, in one collective.

    Args:
        params: parameters whose gradients were computed on this rank's shard.
        extra: detached scalars to reduce along (e.g. the loss, for logging).
        mean: average instead of summing (for a loss that is a mean over the shard).

    Returns:
        ``extra``, reduced.
    """
    if not is_distributed():
        return list(extra)
    grads = [p.grad for p in params if p.grad is not None]
    reduce = mean_over_ranks if mean else sum_over_ranks
    out = reduce([g.detach() for g in grads] + [e.detach() for e in extra])
    with torch.no_grad():
        for g, r in zip(grads, out):
            g.copy_(r)
    return out[len(grads) :]


def broadcast_(tensors: Iterable[Tensor], src: int = 0) -> None:
    """Overwrite ``tensors`` in place with rank ``src``'s values (no-op without a process group)."""
    if not is_distributed():
        return
    dev = _comm_device()
    with torch.no_grad():
        for t in tensors:
            if dev is not None and t.device != dev:
                moved = t.to(dev)
                dist.broadcast(moved, src=src)
                t.copy_(moved.to(t.device))
            else:
                dist.broadcast(t.data, src=src)


def same_on_all_ranks(t: Tensor, src: int = 0) -> Tensor:
    """``t`` with rank ``src``'s value on every rank, keeping this rank's gradient path.

    For decisions (FaMUS's hard gates) that must be identical everywhere: the graph's shape depends
    on them, so ranks that disagreed would wait in different collectives.
    """
    if not is_distributed():
        return t
    value = t.detach().clone()
    broadcast_([value], src)
    return value + (t - t.detach())


def sync_generator_(generator: torch.Generator, src: int = 0) -> None:
    """Give ``generator`` rank ``src``'s state, so every rank draws the same random stream."""
    if not is_distributed():
        return
    state = generator.get_state()
    broadcast_([state], src)
    generator.set_state(state)


def average_buffers_(module: nn.Module) -> None:
    """Average floating-point buffers (BN running statistics) over ranks, in place.

    With per-rank BatchNorm statistics each rank's running mean is an exponential average of its
    shards' batch means; their average is the exponential average of the union batches' means
    (running variances are averaged likewise: the mean of the shards' variances). Integer buffers
    (``num_batches_tracked``) are equal on every rank already.
    """
    if not is_distributed():
        return
    bufs = [b for b in module.buffers() if b.is_floating_point()]
    for b, r in zip(bufs, mean_over_ranks(bufs)):
        b.copy_(r)


def shard(n: int, what: str = "batch size") -> slice:
    """This rank's rows of an ``n``-row batch: contiguous, equal shards (``n`` must divide evenly)."""
    w = world_size()
    if w == 1:
        return slice(0, n)
    if n % w:
        raise ValueError(f"{what} {n} does not split evenly over {w} processes; choose a multiple of {w}")
    k = n // w
    return slice(rank() * k, (rank() + 1) * k)


# ---------------------------------------------------------------------- synchronized BatchNorm
class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the union of all ranks' batches.

    Unlike ``torch.nn.SyncBatchNorm`` it runs on the CPU (gloo) as well as on GPUs, and it is made
    of differentiable operations plus :class:`_AllReduceSum`, so the meta engines can take second
    derivatives through it (``exact``, ``famus``) and forward-mode derivatives (``jvp``). Each rank
    computes its shard's mean and centred sum of squares; one all-reduce gathers them and they are
    combined exactly (Chan et al.'s parallel variance). In eval mode, and without a process group,
    it is an ordinary BatchNorm. Build with :func:`convert_sync_batchnorm`.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or not self.track_running_stats
        if not (batch_stats and is_distributed()):
            return super().forward(x)
        c = x.shape[1]
        dims = [0, *range(2, x.dim())]
        n = x.numel() // c
        mean_r = x.mean(dims)
        shape = [1, c] + [1] * (x.dim() - 2)
        m2_r = ((x - mean_r.reshape(shape)) ** 2).sum(dims)
        w, r = world_size(), rank()
        local = torch.cat([mean_r, m2_r, mean_r.new_full((1,), float(n))]).unsqueeze(0)
        # this rank's row of a (W, 2C + 1) table, zeros elsewhere: the sum over ranks is every rank's statistics
        slot = torch.cat([local.new_zeros(r, 2 * c + 1), local, local.new_zeros(w - r - 1, 2 * c + 1)])
        table = all_reduce_sum(slot, differentiable=True)
        means, m2s, counts = table[:, :c], table[:, c : 2 * c], table[:, 2 * c :]
        total = counts.sum()
        mean = (counts * means).sum(0) / total
        m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
        var = m2 / total
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), (m2 / (total - 1).clamp(min=1)).detach())
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y

    @torch.no_grad()
    def _update_running(self, mean: Tensor, var_unbiased: Tensor) -> None:
        self.num_batches_tracked.add_(1)
        if self.momentum is None:  # cumulative moving average
            factor = 1.0 / float(self.num_batches_tracked)
        else:
            factor = self.momentum
        self.running_mean.mul_(1 - factor).add_(mean.to(self.running_mean.dtype), alpha=factor)
        self.running_var.mul_(1 - factor).add_(var_unbiased.to(self.running_var.dtype), alpha=factor)


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every BatchNorm layer of ``module`` by a :class:`SyncBatchNorm` sharing its parameters.

    The parameters and buffers are the same tensors (so state-dict keys do not change and an
    optimizer built before still holds them). Returns the converted module (a new one only when
    ``module`` itself is a BatchNorm layer).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, SyncBatchNorm):
        new = SyncBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                            module.track_running_stats)
        if module.affine:
            new.weight, new.bias = module.weight, module.bias
        if module.track_running_stats:
            new.running_mean, new.running_var = module.running_mean, module.running_var
            new.num_batches_tracked = module.num_batches_tracked
        new.train(module.training)
        return new
    for name, child in module.named_children():
        converted = convert_sync_batchnorm(child)
        if converted is not child:
            setattr(module, name, converted)
    return module


__all__ = [
    "SyncBatchNorm",
    "agree_on_errors",
    "all_reduce_sum",
    "average_buffers_",
    "backend_for",
    "barrier",
    "broadcast_",
    "broadcast_object",
    "convert_sync_batchnorm",
    "global_sum",
    "is_distributed",
    "is_main",
    "mean_over_ranks",
    "process_group",
    "rank",
    "rank_device",
    "reduce_gradients_",
    "same_on_all_ranks",
    "shard",
    "sum_over_ranks",
    "sync_generator_",
    "world_size",
]

