"""The method interface: how meta parameters turn per-example losses into a training loss.

A method supplies the training objective of the Virtual-Train and Actual-Train stages
as a function of the logits and the meta parameters ``theta``:

    loss(logits, y, theta) -> (scalar weighted loss, per-example coefficients c (n,))

with ``loss = sum_i c_i * L_i`` for the reweighting methods. Engines differentiate it;
models never see it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta.options import build
from famus.registry import Registry

METHODS: Registry[Callable[..., MetaMethod]] = Registry("method")

# a per-example training loss: (logits (n, C), y (n,)) -> (n,), differentiable in the logits (famus.losses)
PerExampleLossFn = Callable[[Tensor, Tensor], Tensor]
# a batch-level term added to every training loss, logits (n, C) -> 0-d (e.g. pseudo mode's prior penalty)
Regularizer = Callable[[Tensor], Tensor]


def normalized(v: Tensor) -> Tensor:
    """``v / sum(v)`` for ``v`` ``(n,)``, leaving an all-zero vector at zero (no host sync).

    In a process group the sum is over the union batch (every rank's ``v``), differentiably.
    """
    s = dist.global_sum(v.sum())
    return v / torch.where(s != 0, s, torch.ones_like(s))


def uniform_coefficients(losses: Tensor) -> Tensor:
    """``(n,)`` coefficients ``1 / N`` (``N``: the union batch's size in a process group)."""
    return torch.full_like(losses, 1.0 / (losses.numel() * dist.world_size()))


def per_example_losses(loss_fn: PerExampleLossFn | None, logits: Tensor, y: Tensor) -> Tensor:
    """``(n,)`` training losses: ``loss_fn(logits, y)``, or plain cross-entropy when ``loss_fn`` is None."""
    if loss_fn is not None:
        return loss_fn(logits, y)
    if y.dim() == 2:  # soft targets (n, C)
        return -(y * F.log_softmax(logits, dim=1)).sum(1)
    return F.cross_entropy(logits, y, reduction="none")


def make_meta_optimizer(
    params: list[Tensor], spec: str | Callable, lr: float, weight_decay: float, momentum: float
) -> torch.optim.Optimizer:
    """The meta optimizer: ``spec`` is ``"adam"``, ``"sgd"`` or a callable ``params -> Optimizer``."""
    if callable(spec):
        return spec(params)
    if spec == "adam":  # capturable on CUDA: its step counter lives on the GPU (famus.meta.guard needs no sync)
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, capturable=any(p.is_cuda for p in params))
    if spec == "sgd":
        return torch.optim.SGD(params, lr=lr, weight_decay=weight_decay, momentum=momentum)
    raise ValueError(f"unknown meta_optimizer {spec!r}; valid: 'adam', 'sgd' or a callable")


class MetaMethod:
    """Base class. Subclasses define the meta parameters and the training loss.

    Args:
        loss_fn: per-example training loss ``(logits (n, C), y (n,)) -> (n,)`` (e.g. LDAM from
            :func:`famus.losses.build_loss`, or pseudo mode's MixMatch loss); ``None`` is cross-entropy.
            The meta loss on the meta set stays cross-entropy.
        regularizer: batch-level term ``logits (n, C) -> 0-d`` added to every training loss (e.g. the
            prior penalty of pseudo-clean co-training); it does not depend on the meta parameters.

    Attributes:
        meta_model: the meta model (an ``nn.Module``) or ``None`` (L2R).
        meta_optimizer: its optimizer, built by :meth:`bind` (``None`` before, and for L2R).
        lagged_ok: the meta parameters persist across steps, so the Virtual-Train gradient is a
            training gradient at the previous meta parameters (the learner's lagged mode).
        takes_loss_fn: the method trains with a per-example loss ``loss_fn`` may replace (MLC has its own).
        per_example: names of meta parameters with one entry per training example (L2R's
            ``eps``): in a process group each rank holds its shard's slice instead of a replica.

    In a process group, ``c`` must be the union batch's coefficients restricted to this rank's
    shard (normalizers summed over ranks with :func:`famus.distributed.global_sum`), so that the
    ranks' losses add up to the union batch's loss.
    """

    name = "base"
    lagged_ok = True
    takes_loss_fn = True
    per_example: frozenset[str] = frozenset()

    def __init__(self, loss_fn: PerExampleLossFn | None = None, regularizer: Regularizer | None = None) -> None:
        self.loss_fn = loss_fn
        self.regularizer = regularizer
        self.meta_model: nn.Module | None = None
        self.meta_optimizer: torch.optim.Optimizer | None = None
        self._optimizer_spec: dict | None = None  # make_meta_optimizer's keywords, for a meta model

    def _total(self, c: Tensor, losses: Tensor, logits: Tensor) -> Tensor:
        """``sum_i c_i L_i``, plus :attr:`regularizer` of the logits when one is set."""
        total = (c * losses).sum()
        return total if self.regularizer is None else total + self.regularizer(logits)

    def bind(self, num_classes: int | None, device: torch.device, dtype: torch.dtype) -> None:
        """Place the meta model next to the base model and build its meta optimizer (once; idempotent).

        Mirrors :meth:`famus.meta.Engine.bind`. The learner calls it at construction, when it knows the
        device and ``dtype`` (the meta step's precision, :mod:`famus.meta.precision`) but not yet the
        class count (``num_classes=None``), and again on its first batch with the model's C (MLC builds
        its ``C x C`` matrix then).
        """
        if self.meta_model is None or self.meta_optimizer is not None:
            return
        self.meta_model.to(device=device, dtype=dtype)
        self.meta_optimizer = make_meta_optimizer(list(self.meta_model.parameters()), **self._optimizer_spec)

    def meta_params(self, n: int, like: Tensor) -> dict[str, Tensor]:
        """Leaf tensors the meta gradient is taken with respect to.

        Args:
            n: training batch size.
            like: a tensor with the model's dtype and device.
        """
        return dict(self.meta_model.named_parameters())

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Weighted training loss used by Virtual-Train.

        Args:
            logits: ``(n, C)`` model outputs.
            y: ``(n,)`` int64 (noisy) labels (or ``(n, C)`` soft targets).
            theta: meta parameters, from :meth:`meta_params` or an override.

        Returns:
            ``(loss, c)``: the scalar loss ``sum_i c_i L_i`` and the coefficients ``c`` ``(n,)``.
        """
        raise NotImplementedError

    def apply(self, meta_grads: dict[str, Tensor]) -> None:
        """Update the meta parameters with a meta gradient (Eq. 4): a meta-optimizer step.

        Methods without a meta model (L2R) keep nothing between steps and do nothing here.
        """
        if self.meta_model is None:
            return
        assert self.meta_optimizer is not None, "call .bind(num_classes, device, dtype) first"
        for n, p in self.meta_model.named_parameters():
            p.grad = meta_grads[n].detach().clone()
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Actual-Train loss (Eq. 5) on ``(n, C)`` logits with the updated meta parameters; ``c`` is detached."""
        raise NotImplementedError

    def plain_loss(self, logits: Tensor, y: Tensor, uniform: bool = False) -> tuple[Tensor, Tensor]:
        """Actual-Train loss of a step without a meta update, and its coefficients ``c`` (detached).

        ``uniform``: every example weighs ``1/n`` (the meta warm-up: ordinary training). Otherwise
        the current meta parameters (amortized steps between meta updates, ``meta_every``); a method
        whose meta parameters do not persist across steps (L2R) has none, and weighs uniformly.
        """
        if uniform or not self.lagged_ok:
            losses = per_example_losses(self.loss_fn, logits, y)
            c = uniform_coefficients(losses)
            return self._total(c, losses, logits), c
        loss, c = self.actual_loss(logits, y, {})
        return loss, c.detach()

    def state_dict(self) -> dict:
        """Meta model and meta optimizer state (empty for methods without a meta model)."""
        if self.meta_model is None:
            return {}
        return {
            "meta_model": self.meta_model.state_dict(),
            "meta_optimizer": self.meta_optimizer.state_dict() if self.meta_optimizer else None,
        }

    def load_state_dict(self, state: dict) -> None:
        if self.meta_model is None:
            if state:
                raise RuntimeError(f"{self.name}'s meta model is built on the first batch: call learner.bind(x) first")
            return
        self.meta_model.load_state_dict(state["meta_model"])
        if self.meta_optimizer is not None and state.get("meta_optimizer") is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])


def build_method(name: str, **options) -> MetaMethod:
    """A method by registry name, e.g. ``build_method("mwnet", meta_lr=1e-3)``; unknown options list the valid ones."""
    return build(METHODS, name, options)
