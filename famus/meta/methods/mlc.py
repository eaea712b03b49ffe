"""MLC: meta loss correction with a learned class transition matrix (Wang, Hu and Hu, CVPR 2020).

The base model predicts the clean-label distribution ``p_i = softmax(z_i)``; a row-stochastic
transition matrix ``T`` (``T[k, j] = P(noisy label j | clean label k)``) maps it to the noisy-label
distribution ``q_i = p_i @ T``, and the training loss is the forward-corrected

    L_i = -log q_i[y_i]        (y_i the noisy label).

``T`` is the meta parameter: the meta gradient of the clean meta loss moves it (Eq. 3-4), and the
Actual-Train step (Eq. 5) uses the updated ``T``. Predictions at test time are ``argmax p``.

Parametrisation: ``T = softmax(T_logits, dim=1)``, so every row is a probability vector whatever
the optimizer does (no clamping or renormalisation as in the reference code). ``T_logits`` persists
across steps and is updated by Adam or SGD like MW-Net's meta model.

Differences from the reference code (ZhenWang-PhD/Training-Noise-Robust-Deep-Neural-Networks-via-
Meta-Learning), which resets ``T`` to the identity every step, takes one SGD step on ``T`` itself,
clamps and renormalises it, and multiplies the *logits* by ``T``: here ``T`` is a persistent,
always-stochastic matrix applied to the *probabilities*, which makes ``-log q`` a proper likelihood
of the noisy label (forward correction, Patrini et al. 2017).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from famus.meta.methods.base import METHODS, MetaMethod, PerExampleLossFn, Regularizer, uniform_coefficients


def diagonal_logit(num_classes: int, diag: float) -> float:
    """The diagonal value ``a`` of ``T_logits = a * I`` for which ``softmax`` rows have ``T[k, k] = diag``.

    ``e^a / (e^a + C - 1) = diag``  gives  ``a = log(diag * (C - 1) / (1 - diag))``.
    """
    if num_classes < 2:
        return 0.0
    if not 0.0 < diag < 1.0:
        raise ValueError(f"init_diag must be in (0, 1), got {diag}")
    return math.log(diag * (num_classes - 1) / (1.0 - diag))


def corrected_nll(logits: Tensor, y: Tensor, t_logits: Tensor) -> Tensor:
    """Forward-corrected per-example loss ``-log (softmax(z_i) @ softmax(T_logits, 1))[y_i]``.

    Computed in log space, ``log q_i[y] = logsumexp_k (log p_i[k] + log T[k, y])``, so it stays
    finite for confident predictions and small transition probabilities.

    Args:
        logits: ``(n, C)`` model outputs.
        y: ``(n,)`` int64 noisy labels.
        t_logits: ``(C, C)`` transition-matrix logits (row ``k``: clean class ``k``).

    Returns:
        ``(n,)`` losses, differentiable in ``logits`` and ``t_logits``.
    """
    log_p = torch.log_softmax(logits, dim=1)  # (n, C)
    log_t = torch.log_softmax(t_logits.to(logits.dtype), dim=1)  # (C, C)
    # log_t.T[y]: (n, C), entry [i, k] = log T[k, y_i]
    return -torch.logsumexp(log_p + log_t.t()[y], dim=1)


class TransitionMatrix(nn.Module):
    """Holds the meta parameter ``T_logits`` ``(C, C)``; ``forward()`` returns ``T`` ``(C, C)``.

    Args:
        num_classes: C.
        init_diag: initial ``T[k, k]`` (off-diagonal entries share ``1 - init_diag`` equally).
    """

    def __init__(self, num_classes: int, init_diag: float = 0.9) -> None:
        super().__init__()
        a = diagonal_logit(num_classes, init_diag)
        self.T_logits = nn.Parameter(torch.eye(num_classes) * a)

    def forward(self) -> Tensor:
        return torch.softmax(self.T_logits, dim=1)


@METHODS.register("mlc")
class MLC(MetaMethod):
    """Meta loss correction: a meta-learned, always row-stochastic class transition matrix.

    Meta parameters: ``{"T_logits": (C, C)}``; ``T = softmax(T_logits, dim=1)``. The per-example
    coefficients ``c`` are uniform ``1/n`` (MLC corrects the loss, it does not reweight examples).

    Args:
        num_classes: C, the size of ``T``; default: the model's, given by :meth:`bind` (the learner's
            first batch). When given, ``T`` exists from construction and :meth:`bind` checks C.
        init_diag: initial ``T[k, k]`` in ``(0, 1)``. Not 1: a saturated softmax passes almost no
            gradient to the logits, and 0.9 still starts close to plain cross-entropy.
        meta_lr: learning rate of the meta optimizer on ``T_logits``; 1e-2 with Adam is the value used
            on Fashion-MNIST (the supplement's 1e-5 is for the reference code's directly stepped ``T``).
        meta_optimizer: ``"adam"``, ``"sgd"`` or a callable ``params -> torch.optim.Optimizer``.
        meta_weight_decay: weight decay on ``T_logits`` (0: decay would pull ``T`` to uniform rows).
        meta_momentum: momentum when ``meta_optimizer="sgd"``.
        loss_fn: must stay ``None``: the corrected loss is MLC's own (:attr:`takes_loss_fn` is false).
        regularizer: see :class:`~famus.meta.methods.base.MetaMethod`.
    """

    name = "mlc"
    takes_loss_fn = False

    def __init__(
        self,
        num_classes: int | None = None,
        init_diag: float = 0.9,
        meta_lr: float = 1e-2,
        meta_optimizer: str | Callable = "adam",
        meta_weight_decay: float = 0.0,
        meta_momentum: float = 0.9,
        loss_fn: PerExampleLossFn | None = None,
        regularizer: Regularizer | None = None,
    ) -> None:
        if loss_fn is not None:
            raise ValueError("method 'mlc' has its own training loss (the corrected -log q); a loss_fn cannot be "
                             "combined with it (use cross-entropy)")
        super().__init__(None, regularizer)
        if not 0.0 < init_diag < 1.0:  # checked now, not on the first batch
            raise ValueError(f"init_diag must be in (0, 1), got {init_diag}")
        self.init_diag = init_diag
        if num_classes is not None:
            self.meta_model = self._transition(num_classes)
        self._optimizer_spec = dict(spec=meta_optimizer, lr=meta_lr, weight_decay=meta_weight_decay,
                                    momentum=meta_momentum)

    def _transition(self, num_classes: int) -> TransitionMatrix:
        if int(num_classes) < 2:
            raise ValueError(f"mlc needs num_classes >= 2 (the transition matrix is C x C), got {num_classes!r}")
        return TransitionMatrix(int(num_classes), self.init_diag)

    def bind(self, num_classes: int | None, device: torch.device, dtype: torch.dtype) -> None:
        """Builds ``T`` ``(C, C)`` for the model's C (or checks the one given), then places it and its optimizer.

        ``num_classes=None`` (the learner's construction) defers an unbuilt ``T`` to the first batch.
        """
        if num_classes is None and self.meta_model is None:
            return
        if self.meta_model is None:
            self.meta_model = self._transition(num_classes)
        elif num_classes is not None and self.meta_model.T_logits.shape[0] != num_classes:
            raise ValueError(f"mlc was built for {self.meta_model.T_logits.shape[0]} classes but the model has "
                             f"{num_classes}; pass num_classes={num_classes} or leave it out")
        super().bind(num_classes, device, dtype)

    @property
    def T(self) -> Tensor:
        """``(C, C)`` the current transition matrix (detached), rows summing to 1."""
        with torch.no_grad():
            return self.meta_model()

    def loss(self, logits: Tensor, y: Tensor, theta: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        t_logits = theta["T_logits"]
        if t_logits.shape[0] != logits.shape[1]:
            raise ValueError(f"mlc was built for {t_logits.shape[0]} classes but the model has {logits.shape[1]}; "
                             f"pass num_classes={logits.shape[1]}")
        losses = corrected_nll(logits, y, t_logits)
        c = uniform_coefficients(losses)
        return self._total(c, losses, logits), c

    def plain_loss(self, logits: Tensor, y: Tensor, uniform: bool = False) -> tuple[Tensor, Tensor]:
        """Always the corrected loss with the current ``T``: MLC corrects labels, its weights are uniform anyway."""
        return self.actual_loss(logits, y, {})

    def actual_loss(self, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        # apply() already moved T: Eq. 5 trains w with the updated meta parameters, held fixed here
        losses = corrected_nll(logits, y, self.meta_model.T_logits.detach())
        c = uniform_coefficients(losses)
        return self._total(c, losses, logits), c
