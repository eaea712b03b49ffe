"""Per-example training losses: CE; for long-tailed data LDAM (+ DRW), focal and class-balanced; for noisy
labels the robust GCE and SCE.

Every loss here is a :class:`PerExampleLoss`: ``loss(logits (n, C), y (n,)) -> (n,)``, differentiable
in the logits (the meta-gradient engines differentiate it, in reverse or forward mode). Per-class
weights are folded into each example's loss, so the mean over a batch is the weighted objective
and a meta method (MW-Net, L2R) can reweight the examples further.

>>> counts = torch.tensor([500, 100, 10])
>>> loss = build_loss("ldam", counts, max_m=0.5, s=1.0)
>>> round(loss.margins.max().item(), 6)
0.5
>>> loss(torch.zeros(4, 3), torch.tensor([0, 1, 2, 2])).shape
torch.Size([4])
"""

from __future__ import annotations

import inspect

import torch
import torch.nn.functional as F
from torch import Tensor

from famus.registry import Registry

__all__ = ["LOSSES", "CBLoss", "CELoss", "FocalLoss", "GCELoss", "LDAMLoss", "PerExampleLoss", "SCELoss",
           "build_loss", "class_balanced_weights", "ldam_margins"]


def _check_counts(class_counts: Tensor) -> Tensor:
    counts = torch.as_tensor(class_counts, dtype=torch.float64).reshape(-1)
    if counts.numel() == 0:
        raise ValueError("class_counts is empty; pass the number of training examples of every class")
    if bool((counts < 0).any()):
        raise ValueError(f"class_counts must be >= 0, got {counts.tolist()}")
    return counts


def class_balanced_weights(class_counts: Tensor, beta: float = 0.9999) -> Tensor:
    """Class-balanced weights by the effective number of samples (Cui et al. 2019).

    ``w_j = (1 - beta) / (1 - beta ** n_j)``, normalised so that ``sum_j w_j = C``.

    Args:
        class_counts: ``(C,)`` training examples per class.
        beta: in ``[0, 1)``; 0 gives equal weights, ``beta -> 1`` inverse class frequency.

    Returns:
        ``(C,)`` float64 weights. A class with no examples gets the largest weight (``n_j`` taken as 1)
        so that it never divides by zero; it has no training examples to weight anyway.
    """
    if not 0.0 <= beta < 1.0:
        raise ValueError(f"beta must be in [0, 1), got {beta}")
    counts = _check_counts(class_counts).clamp(min=1)
    effective = (1.0 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts)) / (1.0 - beta)
    w = 1.0 / effective
    return w * (counts.numel() / w.sum())


def ldam_margins(class_counts: Tensor, max_m: float = 0.5) -> Tensor:
    """LDAM's label-distribution-aware margins (Cao et al. 2019): ``m_j ∝ n_j ** (-1/4)``.

    Args:
        class_counts: ``(C,)`` training examples per class.
        max_m: the largest margin (the rarest class's); the paper uses 0.5.

    Returns:
        ``(C,)`` float64 margins, ``max(m) == max_m``. An empty class is treated as ``n_j = 1``.
    """
    if max_m < 0:
        raise ValueError(f"max_m must be >= 0, got {max_m}")
    m = _check_counts(class_counts).clamp(min=1) ** -0.25
    return m * (max_m / m.max())


class PerExampleLoss:
    """Base class: ``(logits (n, C), y (n,) int64) -> (n,)`` per-example losses.

    Attributes:
        class_weights: ``(C,)`` float64 per-class weights or ``None``; example ``i`` is weighted by
            ``class_weights[y_i]``.
    """

    name = "base"
    class_weights: Tensor | None = None

    def set_epoch(self, epoch: int) -> None:
        """Called by the training loop at the start of every epoch (0-based); a no-op by default."""

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        """``(n,)`` losses before the per-class weights."""
        raise NotImplementedError

    def __call__(self, logits: Tensor, y: Tensor) -> Tensor:
        losses = self.unweighted(logits, y)
        if self.class_weights is None:
            return losses
        return self.class_weights.to(device=logits.device, dtype=logits.dtype)[y] * losses

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class CELoss(PerExampleLoss):
    """Plain cross-entropy ``-log softmax(z)_y``."""

    name = "ce"

    def __init__(self, class_counts: Tensor | None = None) -> None:
        pass

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        return F.cross_entropy(logits, y, reduction="none")


def _focal(ce: Tensor, gamma: float) -> Tensor:
    """``(1 - p_y) ** gamma * CE`` from the per-example CE ``(n,)``, with ``p_y = exp(-CE)``."""
    if gamma == 0:
        return ce
    # -expm1(-ce) is 1 - p_y without cancellation; the clamp keeps the derivative of x^gamma finite
    # at p_y = 1 (x = 0) when gamma < 1 (below the clamp the gradient is 0, not inf * 0 = nan)
    return (-torch.expm1(-ce)).clamp(min=1e-12) ** gamma * ce


class FocalLoss(PerExampleLoss):
    """Softmax focal loss (Lin et al. 2017): ``(1 - p_y) ** gamma * CE``.

    Args:
        gamma: focusing parameter (0 is CE; the focal-loss paper uses 2).
    """

    name = "focal"

    def __init__(self, class_counts: Tensor | None = None, gamma: float = 2.0) -> None:
        if gamma < 0:
            raise ValueError(f"gamma must be >= 0, got {gamma}")
        self.gamma = gamma

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        return _focal(F.cross_entropy(logits, y, reduction="none"), self.gamma)

    def __repr__(self) -> str:
        return f"FocalLoss(gamma={self.gamma})"


class CBLoss(PerExampleLoss):
    """Class-balanced loss (Cui et al. 2019): CE or focal, weighted by :func:`class_balanced_weights`.

    Args:
        class_counts: ``(C,)`` training examples per class.
        beta: effective-number hyper-parameter (paper: 0.9999 on CIFAR-LT).
        base: ``"ce"`` or ``"focal"`` (the softmax focal loss; the paper's CB focal is sigmoid-based).
        gamma: focal parameter when ``base="focal"``.
    """

    name = "cb"

    def __init__(self, class_counts: Tensor, beta: float = 0.9999, base: str = "ce", gamma: float = 1.0) -> None:
        if base not in ("ce", "focal"):
            raise ValueError(f"cb base must be 'ce' or 'focal', got {base!r}")
        self.beta, self.base, self.gamma = beta, base, gamma
        self.class_weights = class_balanced_weights(class_counts, beta)

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        ce = F.cross_entropy(logits, y, reduction="none")
        return _focal(ce, self.gamma) if self.base == "focal" else ce

    def __repr__(self) -> str:
        return f"CBLoss(beta={self.beta}, base={self.base!r}, gamma={self.gamma})"


class LDAMLoss(PerExampleLoss):
    """LDAM loss (Cao et al. 2019): ``CE(s * (z - m_y e_y), y)`` with margins from :func:`ldam_margins`.

    Args:
        class_counts: ``(C,)`` training examples per class.
        max_m: the largest margin (paper: 0.5).
        s: logit scale. The paper's 30 goes with a cosine classifier (logits in [-1, 1]); the famus
            zoo has plain linear classifiers, whose logits are already on the CE scale, and there
            ``s=30`` multiplies every gradient by 30 (on digits, ERM+LDAM with ``s=30`` and lr 0.1
            stayed at chance). Hence the default 1; pass ``s=30`` with a normalised classifier.
        drw_epoch: deferred re-weighting (DRW): from this 0-based epoch on, examples are weighted by
            :func:`class_balanced_weights` (paper: 160 of 200). ``None``: never.
        beta: effective-number hyper-parameter of the DRW weights (paper: 0.9999).
    """

    name = "ldam"

    def __init__(
        self,
        class_counts: Tensor,
        max_m: float = 0.5,
        s: float = 1.0,
        drw_epoch: int | None = None,
        beta: float = 0.9999,
    ) -> None:
        if s <= 0:
            raise ValueError(f"s must be > 0, got {s}")
        self.max_m, self.s, self.drw_epoch, self.beta = max_m, s, drw_epoch, beta
        self.margins = ldam_margins(class_counts, max_m)
        self._drw_weights = class_balanced_weights(class_counts, beta)
        self.class_weights = None
        self.set_epoch(0)

    def set_epoch(self, epoch: int) -> None:
        on = self.drw_epoch is not None and epoch >= self.drw_epoch
        self.class_weights = self._drw_weights if on else None

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        m = self.margins.to(device=logits.device, dtype=logits.dtype)[y]
        # subtract the margin from the true class's logit only (one_hot keeps it differentiable in z)
        shifted = logits - m.unsqueeze(1) * F.one_hot(y, logits.shape[1]).to(logits.dtype)
        return F.cross_entropy(self.s * shifted, y, reduction="none")

    def __repr__(self) -> str:
        return f"LDAMLoss(max_m={self.max_m}, s={self.s}, drw_epoch={self.drw_epoch}, beta={self.beta})"


class GCELoss(PerExampleLoss):
    """Generalized cross-entropy (Zhang & Sabuncu, NeurIPS 2018): ``L_q = (1 - p_y ** q) / q``.

    Between cross-entropy (``q -> 0``) and MAE (``q = 1``): bounded by ``1 / q``, and its gradient
    ``-p_y ** q * (e_y - p)`` (in the logits) is CE's scaled by ``p_y ** q``, so examples the model finds
    unlikely (often the mislabeled ones) pull less.

    The paper's truncated loss (``L_q(k)`` below ``p_y = k``) is not offered: its gradient is zero for
    every example with ``p_y <= k``, all of them at the start of training, so the authors train with
    plain ``L_q`` first and then prune examples on a schedule (state over the whole training set, not a
    per-example loss). This is plain ``L_q``, which the authors also report.

    Args:
        q: in ``(0, 1]``; the paper's default 0.7.
    """

    name = "gce"

    def __init__(self, class_counts: Tensor | None = None, q: float = 0.7) -> None:
        if not 0.0 < q <= 1.0:
            raise ValueError(f"gce q must be in (0, 1], got {q}")
        self.q = q

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        log_py = F.log_softmax(logits, 1).gather(1, y.unsqueeze(1)).squeeze(1)
        # p_y^q = exp(q log p_y): no underflow to 0 ** q (infinite derivative) when p_y is tiny;
        # -expm1 keeps 1 - p_y^q accurate when p_y -> 1
        return -torch.expm1(self.q * log_py) / self.q

    def __repr__(self) -> str:
        return f"GCELoss(q={self.q})"


class SCELoss(PerExampleLoss):
    """Symmetric cross-entropy (Wang et al., ICCV 2019): ``alpha * CE + beta * RCE``.

    RCE is cross-entropy with prediction and label swapped, ``-sum_k p_k log q_k`` with ``q`` the
    one-hot label and ``log 0`` clipped to ``A``; as ``log 1 = 0``, ``RCE = -A * (1 - p_y)`` (an MAE).
    Computed in that closed form. The authors' code clamps ``p`` to ``[1e-7, 1]`` first (a difference
    of at most ``(C - 1) * 1e-7 * |A|``) and the one-hot to ``[1e-4, 1]``, i.e. ``A = ln(1e-4) = -9.21``
    rather than the paper's -4; ``A`` only scales ``beta`` (``beta * A`` is what counts).

    Args:
        alpha: CE weight; beta: RCE weight. Defaults: the paper's CIFAR-10 values (0.1, 1.0), for
            10-class data like Fashion-MNIST; it used (0.01, 1.0) on MNIST and (6.0, 0.1) on CIFAR-100.
        A: ``log 0``'s clip, < 0 (the paper: -4).
    """

    name = "sce"

    def __init__(self, class_counts: Tensor | None = None, alpha: float = 0.1, beta: float = 1.0,
                 A: float = -4.0) -> None:
        if alpha < 0 or beta < 0 or alpha + beta == 0:
            raise ValueError(f"sce alpha and beta must be >= 0 and not both 0, got {alpha} and {beta}")
        if A >= 0:
            raise ValueError(f"sce A (log 0 clipped) must be < 0, got {A}")
        self.alpha, self.beta, self.A = alpha, beta, A

    def unweighted(self, logits: Tensor, y: Tensor) -> Tensor:
        log_py = F.log_softmax(logits, 1).gather(1, y.unsqueeze(1)).squeeze(1)
        rce = -self.A * -torch.expm1(log_py)  # -A * (1 - p_y), accurate as p_y -> 1
        return self.alpha * -log_py + self.beta * rce

    def __repr__(self) -> str:
        return f"SCELoss(alpha={self.alpha}, beta={self.beta}, A={self.A})"


LOSSES: Registry[type[PerExampleLoss]] = Registry("loss function")  # "loss" would read "losss"
LOSSES.add("ce", CELoss)
LOSSES.add("focal", FocalLoss)
LOSSES.add("cb", CBLoss)
LOSSES.add("ldam", LDAMLoss)
LOSSES.add("gce", GCELoss)
LOSSES.add("sce", SCELoss)


def build_loss(name: str, class_counts: Tensor, **options) -> PerExampleLoss:
    """A per-example loss by registry name.

    Args:
        name: ``"ce"``, ``"ldam"``, ``"focal"``, ``"cb"``, ``"gce"`` or ``"sce"`` (see ``LOSSES.names()``).
        class_counts: ``(C,)`` training examples per class (the margins and weights use them).
        **options: the loss's own options (``max_m``, ``s``, ``drw_epoch``, ``beta``, ``gamma``, ``base``;
            ``q``; ``alpha``, ``beta``, ``A``).

    Raises:
        UnknownNameError: unknown ``name``; TypeError: an option the loss does not take.
    """
    cls = LOSSES.get(name)
    valid = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", "class_counts")]
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise TypeError(f"loss {name!r} got unknown option(s) {', '.join(unknown)}; "
                        f"valid options: {', '.join(valid) or '(none)'}")
    return cls(class_counts, **options)
