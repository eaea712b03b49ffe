"""The default recipe: which engine and which steps update the meta model when the user names none.

An exact one-step meta gradient costs about three ERM steps at best (``fd``: two forward and two
backward passes of the training batch plus the meta batch's). Below that, the only levers are
approximations: updating the meta model on some steps only (``meta_every``), lagging, and layer
sampling (FaMUS). The recipe amortizes: after ``warmup`` plain steps, the meta model is updated on
every step for ``dense`` steps, while the weighting forms, then on every ``every``-th step, once it
has; the steps between are ordinary steps weighted by the current meta model (one forward and
backward). The engine is ``auto``: ``exact`` or ``fd``, whichever is faster on the model, lagged
(``+lagged``: a meta step's Actual-Train reuses the Virtual-Train gradient, one forward and backward
fewer, with the meta model of one update before).

Methods whose meta parameters do not persist across steps (L2R: ``eps`` is reset each step) have no
weighting between meta updates and no lagged mode, so for them the recipe is ``auto`` on every step.

``famus bench --engines default`` times the recipe amortized over a run's steps (:meth:`Recipe.counts`),
and ``famus train`` uses it wherever ``meta_grad``, ``meta_every`` or ``meta_dense`` are not set. With your
own loop: ``MetaLearner(model, opt, "mwnet", **default_recipe("mwnet").learner_options())``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

DEFAULT_SPEC = "default"  # the recipe's name in famus bench --engines


@dataclass(frozen=True)
class Recipe:
    """A schedule of meta updates over an engine.

    Attributes:
        engine: the engine spec (a registry name, optionally with ``+lagged``).
        warmup: plain, uniformly weighted steps first.
        dense: then this many steps, each with a meta update.
        every: then a meta update on every ``every``-th step.
    """

    engine: str
    warmup: int
    dense: int
    every: int

    def due(self, step: int) -> bool:
        """Whether 0-based ``step`` updates the meta model (as :meth:`MetaLearner.meta_step_due`)."""
        k = step - self.warmup
        return k >= 0 and (k < self.dense or (k - self.dense) % self.every == 0)

    def learner_options(self) -> dict[str, object]:
        """The recipe as :class:`~famus.meta.MetaLearner` keywords (``meta_grad``, ``meta_every``, ``meta_dense``,
        ``meta_warmup``)."""
        return {"meta_grad": self.engine, "meta_every": self.every, "meta_dense": self.dense,
                "meta_warmup": self.warmup}

    def engine_for(self, every: int) -> str:
        """The recipe's engine under a schedule of a meta update every ``every`` steps: lagged only where the
        schedule amortizes (``every > 1``). A meta update on every step is the paper's algorithm, unlagged:
        lagged on every step, MW-Net took the opposite weighting on 1 of 3 seeds of the MLP at 60% symmetric
        noise (docs/cost.md)."""
        return self.engine if every > 1 else self.engine.removesuffix("+lagged")

    def counts(self, steps: int) -> tuple[int, int, int]:
        """``(warm-up steps, meta steps, plain weighted steps)`` over a run of ``steps`` steps."""
        warm = min(self.warmup, steps)
        rest = steps - warm
        dense = min(self.dense, rest)
        meta = dense + math.ceil((rest - dense) / self.every)
        return warm, meta, rest - meta


# Measured in docs/cost.md: dense for the first 200 steps after the warm-up (the weighting forms in
# 75-150 meta updates on every setting measured), then every 5th step, lagged: 1.30x an ERM step on
# the ResNet-32 bench amortized over 20,000 steps (docs/cost.md), weighting as exact's.
DENSE_STEPS = 200
EVERY = 5
ENGINE = "auto"
LAGGED = ENGINE + "+lagged"
WARMUP = 25  # famus train: min(25, a quarter of an epoch) (docs/learning-quality.md)


def default_recipe(method: str, warmup: int = WARMUP) -> Recipe:
    """The recipe for ``method`` (``"mwnet"``, ``"mlc"``, ``"l2r"``); ``warmup`` as the run resolved it."""
    from famus.meta.methods import METHODS

    persists = getattr(METHODS.get(method), "lagged_ok", True)
    if not persists:  # no meta parameters between updates (nor a lagged mode): every step is a meta step
        return Recipe(ENGINE, warmup, 0, 1)
    return Recipe(LAGGED, warmup, DENSE_STEPS, EVERY)
