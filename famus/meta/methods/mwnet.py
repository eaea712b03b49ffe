"""Meta-Weight-Net (Shu et al. 2019): an MLP maps each example's loss to its weight."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call

from famus import distributed as dist
from famus.meta.methods.base import (
    METHODS,
    MetaMethod,
    PerExampleLossFn,
    Regularizer,
    normalized,
    per_example_losses,
)


def default_mwnet(hidden: int = 100) -> nn.Module:
    """MW-Net's meta model: ``Linear(1, hidden) - ReLU - Linear(hidden, 1) - Sigmoid``, ``(n, 1) -> (n, 1)``."""
    return nn.Sequential(nn.Linear(1, hidden), nn.ReLU(inplace=False), nn.Linear(hidden, 1), nn.Sigmoid())


@METHODS.register("mwnet")
class MWNet(MetaMethod):
    """Meta-Weight-Net: the weight of example ``i`` is ``V(L_i; theta)``, ``V`` a small MLP.

    Args:
        meta_model: module mapping losses ``(n, 1)`` to weights ``(n, 1)``; default :func:`default_mwnet`.
        hidden: hidden width of the default meta model.
        meta_lr: learning rate of the meta optimizer (paper: 1e-3; long-tailed 1e-5).
        meta_optimizer: ``"adam"`` (the reference code's), ``"sgd"``, or a callable
            ``params -> torch.optim.Optimizer``.
        meta_weight_decay: weight decay of the meta optimizer.
        meta_momentum: momentum when ``meta_optimizer="sgd"``.
        normalize: divide the batch's weights by their sum (the reference code; default on).
        loss_fn, regularizer: see :class:`~famus.meta.methods.base.MetaMethod`; the meta model sees
            the per-example losses detached.
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
        regularizer: Regularizer | None = None,
    ) -> None:
        super().__init__(loss_fn, regularizer)
        self.meta_model = meta_model if meta_model is not None else default_mwnet(hidden)
        self.normalize = normalize
        self._optimizer_spec = dict(spec=meta_optimizer, lr=meta_lr, weight_decay=meta_weight_decay,
                                    momentum=meta_momentum)

    def _coefficients(self, losses: Tensor, theta: dict[str, Tensor] | None) -> Tensor:
        """``(n,)`` weights of ``(n,)`` losses: the meta model at ``theta`` (``None``: its own parameters)."""
        inp = losses.detach().unsqueeze(1)
        v = self.meta_model(inp) if theta is None else functional_call(self.meta_model, theta, (inp,))
        v = v.reshape(-1)
        return normalized(v) if self.normalize else v / (v.numel() * dist.world_size())

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = self._coefficients(losses, theta)
        return self._total(c, losses, logits), c

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        with torch.no_grad():
            c = self._coefficients(losses, None)
        return self._total(c, losses, logits), c
