"""BatchNorm over the union batch: :class:`SyncBatchNorm` and :func:`convert_sync_batchnorm`."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from famus.distributed.group import is_distributed, rank, world_size
from famus.distributed.union import to_union


def union_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean, centred sum of squares and count of the union of every rank's ``x``.

    Each rank computes its shard's mean and centred sum of squares; one differentiable
    :func:`~famus.distributed.union.to_union` sum of a table holding this rank's row (zeros
    elsewhere) gathers them, and they are combined exactly with count weights (Chan et al.'s
    parallel variance), shards of any size.

    Returns:
        ``(mean, m2, total)``: shapes ``(C,)``, ``(C,)``, 0-d.
    """
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
    (table,) = to_union([slot], "sum", differentiable=True)
    means, m2s, counts = table[:, :c], table[:, c : 2 * c], table[:, 2 * c :]
    total = counts.sum()
    mean = (counts * means).sum(0) / total
    m2 = m2s.sum(0) + (counts * (means - mean) ** 2).sum(0)
    return mean, m2, total


class SyncBatchNorm(_BatchNorm):
    """BatchNorm whose training statistics are those of the union of all ranks' batches.

    Unlike ``torch.nn.SyncBatchNorm`` it runs on the CPU (gloo) as well as on GPUs, and it is made
    of differentiable operations plus a differentiable all-reduce, so the meta engines can take
    second derivatives through it (``exact``, ``famus``) and forward-mode derivatives (``jvp``).
    The statistics come from :func:`union_moments`. In eval mode, and without a process group, it
    is an ordinary BatchNorm. Build with :func:`convert_sync_batchnorm`.
    """

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2-D input (batch, channels, ...), got {x.dim()}-D")

    def forward(self, x: Tensor) -> Tensor:
        self._check_input_dim(x)
        batch_stats = self.training or not self.track_running_stats
        if not (batch_stats and is_distributed()):
            return super().forward(x)
        mean, m2, total = union_moments(x)
        var = m2 / total
        if self.training and self.track_running_stats:
            self._update_running(mean.detach(), (m2 / (total - 1).clamp(min=1)).detach())
        shape = [1, x.shape[1]] + [1] * (x.dim() - 2)
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
