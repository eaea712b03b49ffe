"""Learning to Reweight (Ren et al. 2018): per-example perturbations ``eps`` set to 0 each step."""

from __future__ import annotations

import torch
from torch import Tensor

from famus.meta.methods.base import (
    METHODS,
    MetaMethod,
    normalized,
    per_example_losses,
)


@METHODS.register("l2r")
class L2R(MetaMethod):
    """L2R: the meta gradient is ``dL_c/d eps`` (key ``"eps"``, shape ``(n,)``).

    The actual weights are ``max(-dL_c/d eps, 0)``, normalized to sum 1 (all zero stays zero).

    Args:
        loss_fn, regularizer: see :class:`~famus.meta.methods.base.MetaMethod`.
    """

    name = "l2r"
    lagged_ok = False  # eps is reset to 0 each step: the Virtual-Train gradient is zero
    per_example = frozenset({"eps"})

    def meta_params(self, n: int, like: Tensor) -> dict[str, Tensor]:
        return {"eps": torch.zeros(n, dtype=like.dtype, device=like.device, requires_grad=True)}

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = theta["eps"]
        return self._total(c, losses, logits), c

    @staticmethod
    def weights(meta_grads: dict[str, Tensor]) -> Tensor:
        """``(n,)`` normalized ``max(-grad, 0)``."""
        return normalized(torch.clamp(-meta_grads["eps"].detach(), min=0))

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        losses = per_example_losses(self.loss_fn, logits, y)
        c = self.weights(meta_grads).to(losses.dtype)
        return self._total(c, losses, logits), c
