"""Meta-learning methods: how meta parameters turn per-example losses into a training loss.

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
from torch.func import functional_call

from famus import distributed as dist
from famus.registry import Registry

METHODS: Registry[type[MetaMethod]] = Registry("method")


def _normalize(v: Tensor) -> Tensor:
    """``v / sum(v)``, leaving an all-zero vector at zero (no host sync).

    In a process group the sum is over the union batch (every rank's ``v``), differentiably.
    """
    s = dist.global_sum(v.sum())
    return v / torch.where(s != 0, s, torch.ones_like(s))


class MetaMethod:
    """Base class. Subclasses define the meta parameters and the training loss.

    Attributes:
        meta_model: the meta model (an ``nn.Module``) or ``None`` (L2R).
        lagged_ok: the meta parameters persist across steps, so the Virtual-Train gradient is a
            training gradient at the previous meta parameters (the learner's lagged mode).
        per_example: names of meta parameters with one entry per training example (L2R's
            ``eps``): in a process group each rank holds its shard's slice instead of a replica.

    In a process group, ``c`` must be the union batch's coefficients restricted to this rank's
    shard (normalizers summed over ranks with :func:`famus.distributed.global_sum`), so that the
    ranks' losses add up to the union batch's loss.
    """

    name = "base"
    meta_model: nn.Module | None = None
    lagged_ok = True
    per_example: frozenset[str] = frozenset()
    # optional batch-level term added to every training loss, ``logits (n, C) -> scalar`` (e.g. the
    # prior penalty of pseudo-clean co-training); it does not depend on the meta parameters
    regularizer: Callable[[Tensor], Tensor] | None = None

    def _total(self, c: Tensor, losses: Tensor, logits: Tensor) -> Tensor:
        """``sum_i c_i L_i``, plus :attr:`regularizer` of the logits when one is set."""
        total = (c * losses).sum()
        return total if self.regularizer is None else total + self.regularizer(logits)

    def to(self, device: torch.device, dtype: torch.dtype) -> MetaMethod:
        """Move the meta model next to the base model."""
        if self.meta_model is not None:
            self.meta_model.to(device=device, dtype=dtype)
        return self

    def meta_params(self, n: int, like: Tensor) -> dict[str, Tensor]:
        """Leaf tensors the meta gradient is taken with respect to.

        Args:
            n: training batch size.
            like: a tensor with the model's dtype and device.
        """
        raise NotImplementedError

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Weighted training loss used by Virtual-Train.

        Args:
            logits: ``(n, C)`` model outputs.
            y: ``(n,)`` int64 (noisy) labels.
            theta: meta parameters, from :meth:`meta_params` or an override.

        Returns:
            ``(loss, c)``: the scalar loss ``sum_i c_i L_i`` and the coefficients ``c`` ``(n,)``.
        """
        raise NotImplementedError

    meta_optimizer: torch.optim.Optimizer | None = None

    def apply(self, meta_grads: dict[str, Tensor]) -> None:
        """Update the meta parameters with a meta gradient (Eq. 4): a meta-optimizer step.

        Methods without a meta model (L2R) keep nothing between steps and do nothing here.
        """
        if self.meta_model is None:
            return
        assert self.meta_optimizer is not None, "call .to(device, dtype) first"
        for n, p in self.meta_model.named_parameters():
            p.grad = meta_grads[n].detach().clone()
        self.meta_optimizer.step()
        self.meta_optimizer.zero_grad(set_to_none=True)

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Actual-Train loss (Eq. 5) with the updated meta parameters; ``c`` is detached."""
        raise NotImplementedError

    def plain_loss(self, logits: Tensor, y: Tensor, uniform: bool = False) -> tuple[Tensor, Tensor]:
        """Actual-Train loss of a step without a meta update, and its coefficients ``c`` (detached).

        ``uniform``: every example weighs ``1/n`` (the meta warm-up: ordinary training). Otherwise
        the current meta parameters (amortized steps between meta updates, ``meta_every``); a method
        whose meta parameters do not persist across steps (L2R) has none, and weighs uniformly.
        """
        if uniform or not self.lagged_ok:
            losses = per_example_losses(getattr(self, "loss_fn", None), logits, y)
            c = torch.full_like(losses, 1.0 / (losses.numel() * dist.world_size()))
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
            return
        self.meta_model.load_state_dict(state["meta_model"])
        if self.meta_optimizer is not None and state.get("meta_optimizer") is not None:
            self.meta_optimizer.load_state_dict(state["meta_optimizer"])


def default_mwnet(hidden: int = 100) -> nn.Module:
    """MW-Net's meta model: ``Linear(1, hidden) - ReLU - Linear(hidden, 1) - Sigmoid``, ``(n, 1) -> (n, 1)``."""
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, 1), nn.Sigmoid())


# a per-example training loss: (logits (n, C), y (n,)) -> (n,), differentiable in the logits (famus.losses)
PerExampleLossFn = Callable[[Tensor, Tensor], Tensor]


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


@METHODS.register("mwnet")
class MWNet(MetaMethod):
    """Meta-Weight-Net (Shu et al. 2019): an MLP maps each example's loss to its weight.

    Args:
        meta_model: module mapping losses ``(n, 1)`` to weights ``(n, 1)``; default :func:`default_mwnet`.
        hidden: hidden width of the default meta model.
        meta_lr: learning rate of the meta optimizer (paper: 1e-3; long-tailed 1e-5).
        meta_optimizer: ``"adam"`` (the reference code's), ``"sgd"``, or a callable
            ``params -> torch.optim.Optimizer``.
        meta_weight_decay: weight decay of the meta optimizer.
        meta_momentum: momentum when ``meta_optimizer="sgd"``.
        normalize: divide the batch's weights by their sum (the reference code; default on).
        loss_fn: per-example training loss ``(logits (n, C), y (n,)) -> (n,)`` (e.g. LDAM from
            :func:`famus.losses.build_loss`); ``None`` is cross-entropy. The meta model sees it
            detached; the meta loss on the meta set stays cross-entropy.
    """

    name = "mwnet"

    def __init__(
        self,
        meta_model: nn.Module | None = None,
        hidden: int = 100,
        meta_lr: float = 1e-3,
        meta_optimizer: str | Callable = "adam",
        meta_weight_decay: float = 1e-4,
        meta_momentum: float = 0.9,
        normalize: bool = True,
        loss_fn: PerExampleLossFn | None = None,
    ) -> None:
        self.meta_model = meta_model if meta_model is not None else default_mwnet(hidden)
        self.normalize = normalize
        self.loss_fn = loss_fn
        self._make_opt = meta_optimizer
        self._opt_kw = dict(lr=meta_lr, weight_decay=meta_weight_decay, momentum=meta_momentum)
        self.meta_optimizer: torch.optim.Optimizer | None = None

    def to(self, device: torch.device, dtype: torch.dtype) -> MWNet:
        super().to(device, dtype)
        self.meta_optimizer = make_meta_optimizer(list(self.meta_model.parameters()), self._make_opt, **self._opt_kw)
        return self

    def meta_params(self, n: int, like: Tensor) -> dict[str, Tensor]:
        return dict(self.meta_model.named_parameters())

    def _coefficients(self, losses: Tensor, theta: dict[str, Tensor] | None) -> Tensor:
        inp = losses.detach().unsqueeze(1)
        v = self.meta_model(inp) if theta is None else functional_call(self.meta_model, theta, (inp,))
        v = v.reshape(-1)
        return _normalize(v) if self.normalize else v / (v.numel() * dist.world_size())

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = self._coefficients(losses, theta)
        return self._total(c, losses, logits), c

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        with torch.no_grad():
            c = self._coefficients(losses, None)
        return self._total(c, losses, logits), c


@METHODS.register("l2r")
class L2R(MetaMethod):
    """Learning to Reweight (Ren et al. 2018): per-example perturbations ``eps`` set to 0 each step.

    The meta gradient is ``dL_c/d eps`` (key ``"eps"``, shape ``(n,)``); the actual weights are
    ``max(-dL_c/d eps, 0)``, normalized to sum 1 (all zero stays zero).

    Args:
        loss_fn: per-example training loss ``(logits (n, C), y (n,)) -> (n,)``; ``None`` is cross-entropy.
    """

    name = "l2r"
    lagged_ok = False  # eps is reset to 0 each step: the Virtual-Train gradient is zero
    per_example = frozenset({"eps"})

    def __init__(self, loss_fn: PerExampleLossFn | None = None) -> None:
        self.loss_fn = loss_fn

    def meta_params(self, n: int, like: Tensor) -> dict[str, Tensor]:
        return {"eps": torch.zeros(n, dtype=like.dtype, device=like.device, requires_grad=True)}

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = theta["eps"]
        return self._total(c, losses, logits), c

    @staticmethod
    def weights(meta_grads: dict[str, Tensor]) -> Tensor:
        """``(n,)`` normalized ``max(-grad, 0)``."""
        return _normalize(torch.clamp(-meta_grads["eps"].detach(), min=0))

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = self.weights(meta_grads).to(losses.dtype)
        return self._total(c, losses, logits), c


def build_method(name: str, **options) -> MetaMethod:
    """A method by registry name, e.g. ``build_method("mwnet", meta_lr=1e-3)``."""
    return METHODS.get(name)(**options)


# MLC lives in its own module (it imports this one); importing it here registers "mlc"
from famus.meta import mlc as _mlc  # noqa: E402, F401
