"""One plain (ERM) step, the learning-rate schedule and ``--amp``: shared by every mode and ``famus bench``."""

from __future__ import annotations

import math
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta.inputs import logits_of
from famus.meta.precision import upcast
from famus.train.config import TrainConfig

# (logits (n, C) float32, targets (n,) int64 or (n, C) soft) -> scalar loss
Criterion = Callable[[Tensor, Tensor], Tensor]


@dataclass
class Precision:
    """A run's ``--amp``: the autocast dtype (``None``: float32). float16's GradScaler is per network."""

    device: torch.device
    dtype: torch.dtype | None = None

    def autocast(self):
        """The forward (and meta step) context: ``torch.autocast`` or nothing."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()

    def scaler(self) -> torch.amp.GradScaler | None:
        """A new GradScaler for one network's optimizer (float16 only)."""
        return torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None


def make_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """``--amp``: bf16 autocast on any device; fp16 autocast plus a GradScaler on CUDA only."""
    if cfg.amp is None:
        return Precision(device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (it trains with a GradScaler); on the CPU use --amp bf16")
    return Precision(device, torch.float16 if cfg.amp == "fp16" else torch.bfloat16)


def erm_step(model: nn.Module, opt: torch.optim.Optimizer, x: Tensor, y: Tensor,
             criterion: Criterion = F.cross_entropy, precision: Precision | None = None,
             scaler: torch.amp.GradScaler | None = None) -> Tensor:
    """One plain step: forward (under ``--amp``), ``criterion``, backward (scaled for float16), optimizer step.

    ``x`` ``(n, ...)``, ``y`` ``(n,)`` labels or ``(n, C)`` targets. Returns the 0-d loss (with several
    processes, the union batch's: the mean of the ranks' means), not synced to the host.
    """
    with precision.autocast() if precision is not None else nullcontext():
        loss = criterion(upcast(logits_of(model(x)), torch.float32), y)
    return apply_loss(model, opt, loss, scaler)


def apply_loss(model: nn.Module, opt: torch.optim.Optimizer, loss: Tensor,
               scaler: torch.amp.GradScaler | None = None) -> Tensor:
    """The update half of a plain step: backward of the 0-d ``loss`` (scaled for float16), the gradients
    averaged over processes, the optimizer step. Returns ``loss`` (several processes: the ranks' mean)."""
    opt.zero_grad(set_to_none=True)
    (loss if scaler is None else scaler.scale(loss)).backward()
    if dist.is_distributed():  # DDP-style: the union batch's mean loss is the mean of the ranks' means
        (loss,) = dist.reduce_gradients_(model.parameters(), [loss.detach()], mean=True)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    return loss


def lr_at(cfg: TrainConfig, epoch: int, step: int, iters: int) -> float:
    """The learning rate of iteration ``step`` (0-based; ``iters`` per epoch) of one network.

    A linear warm-up ``lr * (step + 1) / W`` over the first ``W = round(lr_warmup_epochs * iters)``
    iterations, then the schedule: ``step``, ``lr * gamma^(milestones passed)`` with milestones in
    epochs or iterations; or ``cosine``, ``lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 after the
    warm-up to 1 at the end of the run (never reaching 0: ``t < 1`` at the last iteration).
    """
    warm = round(cfg.lr_warmup_epochs * iters)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(cfg.epochs * iters - warm, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    point = epoch if cfg.milestone_unit == "epoch" else step
    return cfg.lr * cfg.gamma ** sum(point >= m for m in cfg.milestones)


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr
