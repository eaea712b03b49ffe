"""What one meta-learning iteration returns: :class:`MetaUpdate` (meta step done) and :class:`StepStats`."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from famus.meta import inputs as io
from famus.meta.engines import STAGES, MetaResult
from famus.meta.inputs import Inputs

if TYPE_CHECKING:
    from famus.meta.learner import MetaLearner


@dataclass
class StepStats:
    """What one :meth:`MetaLearner.step` did. Tensors are detached; nothing is synced.

    In a process group, the losses are the union batch's (the same on every rank) and ``weights``
    are this rank's shard's entries of the union batch's coefficients.

    Attributes:
        weights: ``(n,)`` coefficients of the Actual-Train loss ``sum_i weights_i * L_i``.
        train_loss: 0-d, the Actual-Train weighted loss.
        meta_loss: 0-d, ``L_c`` on the meta batch after the virtual step.
        gates: layer name -> 0-d tensor, 1.0 where the layer contributed (FaMUS/block/random).
        times: seconds for each of the six stages of the paper's Fig. 1b.
        aux: further detached scalars (``loss_r``, ``loss_g``).
        meta_skipped: 0-d float, 1.0 when the meta gradient was not finite and was not applied.
        meta_updated: whether this step updated the meta parameters (``False`` in the meta warm-up
            and between the meta updates of ``meta_every``; ``meta_loss`` is then NaN).
    """

    weights: Tensor
    train_loss: Tensor
    meta_loss: Tensor
    gates: dict[str, Tensor] | None
    times: dict[str, float]
    aux: dict[str, Tensor] = field(default_factory=dict)
    meta_skipped: Tensor | None = None
    meta_updated: bool = True

    @property
    def iteration_s(self) -> float:
        return sum(self.times.values())

    def to_dict(self) -> dict:
        """Plain Python numbers (syncs; call when logging)."""
        out = {"train_loss": float(self.train_loss), "meta_loss": float(self.meta_loss), **self.times}
        out.update({k: float(v) for k, v in self.aux.items()})
        if self.meta_skipped is not None:
            out["meta_skipped"] = float(self.meta_skipped)
        if self.gates is not None:
            out["gates"] = {k: float(v) for k, v in self.gates.items()}
        return out


class MetaUpdate:
    """What :meth:`MetaLearner.meta_update` did: Virtual-Train and Meta-Train, the model not yet stepped.

    Your loop then computes the Actual-Train logits, ``loss = update.loss(logits)``, and runs backward,
    clipping, gradient scaling and the optimizer step. Tensors are detached; nothing is synced.

    Attributes:
        meta_loss: 0-d, ``L_c`` on the meta batch after the virtual step.
        virtual_loss: 0-d, the Virtual-Train weighted loss (meta parameters before this update).
        meta_skipped: 0-d float, 1.0 when the meta gradient was not finite and was not applied.
        gates: layer name -> 0-d tensor, 1.0 where the layer contributed (FaMUS/block/random).
        times: seconds for the four meta stages (the Actual-Train ones are 0 here).
        aux: further detached scalars (``loss_r``, ``loss_g``).
        virtual_logits: ``(n, C)`` Virtual-Train logits still in their autograd graph, when they can
            stand in for an Actual-Train forward (``keep_forward``, and no random numbers drawn); else
            ``None``. :meth:`logits` uses them.
    """

    def __init__(self, learner: MetaLearner, x: Inputs, y: Tensor, result: MetaResult, skipped: Tensor,
                 times: dict[str, float]) -> None:
        self._learner, self._x, self._y, self._result = learner, x, y, result
        self._weights: Tensor | None = None
        virtual = result.virtual
        self.meta_loss = result.meta_loss
        self.virtual_loss = None if virtual is None else virtual.loss
        self.meta_skipped = skipped
        self.gates = result.gates
        self.times = times
        self.aux = result.aux
        self.virtual_logits = virtual.logits if virtual is not None and virtual.reusable else None

    @property
    def weights(self) -> Tensor:
        """``(n,)`` Actual-Train coefficients with the updated meta parameters, detached.

        Computed at the Virtual-Train logits: what :meth:`loss` applies to logits of the same forward
        (same weights, same batch, no dropout).
        """
        if self._weights is None:
            virtual = self._result.virtual
            if virtual is None:
                raise RuntimeError(f"engine {self._learner.engine_name!r} returns no Virtual-Train record; "
                                   "compute the weights with loss_and_weights(logits)")
            with torch.no_grad():
                self._weights = self.loss_and_weights(virtual.logits)[1].detach()
        return self._weights

    def loss(self, logits: Tensor) -> Tensor:
        """The method's Actual-Train loss (Eq. 5) on ``logits`` ``(n, C)`` (or an output with ``.logits``).

        Weighted cross-entropy (L2R, MW-Net: ``sum_i c_i L_i`` with the updated meta parameters), the
        corrected loss (MLC), plus the method's ``regularizer`` where set. Backpropagate it yourself.
        """
        return self.loss_and_weights(logits)[0]

    def loss_and_weights(self, logits: Tensor) -> tuple[Tensor, Tensor]:
        """:meth:`loss` and the ``(n,)`` coefficients it used (detached)."""
        loss, c = self._learner._actual_loss(io.logits_of(logits), self._y, self._result.meta_grads)
        return loss, c.detach()

    def logits(self) -> Tensor:
        """The Actual-Train logits ``(n, C)``: the kept Virtual-Train ones, or a fresh ``model(x)``.

        Reusing installs the BatchNorm statistics the Virtual-Train forward produced (they move once,
        as with a fresh forward). Sets the learner's ``reused_forward``.
        """
        learner = self._learner
        learner.reused_forward = self.virtual_logits is not None
        if self.virtual_logits is not None:
            learner._copy_buffers(self._result.virtual.buffers)
            return self.virtual_logits
        return io.forward(learner.model, None, self._x)

    def stats(self, train_loss: Tensor, weights: Tensor | None = None,
              times: dict[str, float] | None = None) -> StepStats:
        """The :class:`StepStats` of this iteration, given its Actual-Train loss (and weights, stage times)."""
        extra = times or {}
        return StepStats(
            weights=(self.weights if weights is None else weights).detach(),
            train_loss=train_loss.detach(),
            meta_loss=self.meta_loss,
            gates=self.gates,
            times={s: self.times.get(s, 0.0) + extra.get(s, 0.0) for s in STAGES},
            aux=self.aux,
            meta_skipped=self.meta_skipped,
        )
