"""Every name ``--method`` takes: ERM, the meta methods and the baselines, in one registry.

:data:`famus.meta.METHODS` holds the meta methods a :class:`~famus.meta.MetaLearner` runs (``mwnet``,
``l2r``, ``mlc``). :data:`TRAINING_METHODS` holds every way ``famus train`` trains, so an unknown
``--method`` lists all of them:

* ``erm``: plain training on the (noisy) labels;
* each meta method: a meta learner per network, ``--meta-grad``, a trusted meta set;
* ``coteaching`` (:mod:`famus.train.coteaching`): two networks, each trained on the examples the other
  finds small-loss (Han et al., NeurIPS 2018);
* ``prune`` (:mod:`famus.train.prune`): rank label issues, drop the flagged examples, retrain ERM.

This module holds what a config check needs (names, the baselines' typed ``method_options``), no
training code, so :mod:`famus.train.config` can check a method before anything is loaded or written.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from famus.meta.methods import METHODS
from famus.registry import Registry
from famus.train.scores import WEIGHT_SCORED

if TYPE_CHECKING:
    from famus.train.config import TrainConfig

def checked_options(cls: type, options: dict[str, Any], what: str) -> Any:
    """``options`` over the defaults of dataclass ``cls``, each of its field's type (an int is taken for a
    float); an unknown key, a wrong type or a non-finite number is a one-line ``ValueError``."""
    from famus.train.config import _kind, _matches, _non_finite, _show, _union_args

    names = [f.name for f in dataclasses.fields(cls)]
    unknown = set(options) - set(names)
    if unknown:
        raise ValueError(f"unknown {what} {sorted(unknown)}; valid: {', '.join(sorted(names))}")
    opts = {f.name: options.get(f.name, f.default) for f in dataclasses.fields(cls)}
    for name, hint in typing.get_type_hints(cls).items():
        if not _matches(opts[name], hint) or _non_finite(opts[name]) is not None:
            raise ValueError(f"{what} {name} must be {_kind(hint)}, got {_show(opts[name])}")
        if isinstance(opts[name], int) and not isinstance(opts[name], bool) and float in _union_args(hint):
            opts[name] = float(opts[name])
    return cls(**opts)


@dataclass(frozen=True)
class CoTeachingOptions:
    """``--method coteaching``'s ``method_options`` (Han et al. 2018; the authors' code's defaults).

    ``forget_rate`` tau: the share of each batch a network drops at full schedule, the noise rate in the
    paper; ``None``: estimated after the first epoch (a 2-component GMM on each network's losses; the mean
    posterior of the high-loss component). ``forget_epochs`` T_k: the forget rate ramps as
    ``R(e) = tau * min(e / T_k, 1)`` over the 0-based epoch ``e``; ``None``: the paper's 10 epochs, cut to
    end by the run's last epoch: ``min(10, max(1, epochs - 1))``. (The paper's share of its 200 epochs,
    5%, ramps a 24-epoch run in one epoch: on ``configs/results-fmnist-sym60.yaml``, seed 1, that gave
    70.0% last and 74.9% validation-chosen test accuracy; 10 epochs gave 81.1% and 81.1%.)
    """

    forget_rate: float | None = None
    forget_epochs: int | None = None

    def check(self, cfg: TrainConfig) -> None:
        if self.forget_rate is not None and not 0.0 <= self.forget_rate < 1.0:
            raise ValueError(f"method_options forget_rate must be in [0, 1) (the share of each batch dropped), "
                             f"got {self.forget_rate}")
        if self.forget_epochs is not None and self.forget_epochs < 1:
            raise ValueError(f"method_options forget_epochs must be >= 1, got {self.forget_epochs}")

    def ramp_epochs(self, epochs: int) -> int:
        """T_k: ``forget_epochs``, or the paper's 10 epochs, at most the run's ``epochs - 1`` (at least 1)."""
        return self.forget_epochs if self.forget_epochs is not None else min(10, max(1, epochs - 1))

    def forget_at(self, epoch: int, tau: float | None, epochs: int) -> float:
        """``R(epoch)``: 0 in the first epoch (where an estimated ``tau`` is not known yet), then the ramp."""
        if epoch == 0 or tau is None:
            return 0.0
        return tau * min(epoch / self.ramp_epochs(epochs), 1.0)


RANKERS = ("confident", "cleanlab", "famus")


@dataclass(frozen=True)
class PruneOptions:
    """``--method prune``'s ``method_options``: find label issues, drop them, retrain ERM on the rest.

    ``ranker``: ``confident`` (famus's confident learning on out-of-fold probabilities, Northcutt et al.
    2021), ``cleanlab`` (``cleanlab.filter.find_label_issues`` with its defaults on the same probabilities;
    ``pip install cleanlab``) or ``famus`` (the clean scores of a ``meta_method`` run on the training set,
    flagged below ``threshold``, in units of the uniform weight; needs a trusted set; on
    ``configs/results-fmnist-sym60.yaml``, seed 1, 0.5 flagged 4565 examples, 97% of them mislabeled, 81% of
    the mislabeled). ``folds``: K of the K-fold out-of-fold probabilities (cleanlab's default 5);
    ``fold_epochs``: each fold's ERM epochs (``None``: the run's); also the epochs of the ``famus`` ranker's run.
    """

    ranker: str = "confident"
    folds: int = 5
    fold_epochs: int | None = None
    threshold: float = 0.5
    meta_method: str = "mwnet"

    def check(self, cfg: TrainConfig) -> None:
        if self.ranker not in RANKERS:
            raise ValueError(f"method_options ranker must be one of {', '.join(RANKERS)}, got {self.ranker!r}")
        if self.folds < 2:
            raise ValueError(f"method_options folds must be >= 2, got {self.folds}")
        if self.fold_epochs is not None and self.fold_epochs < 1:
            raise ValueError(f"method_options fold_epochs must be >= 1, got {self.fold_epochs}")
        if not math.isfinite(self.threshold) or self.threshold < 0:
            raise ValueError(f"method_options threshold must be >= 0 (a relative meta weight), got {self.threshold}")
        if self.meta_method not in WEIGHT_SCORED:
            raise ValueError(f"method_options meta_method must be one of {', '.join(WEIGHT_SCORED)} (a method "
                             f"whose weights are clean scores), got {self.meta_method!r}")
        if self.ranker == "cleanlab":
            import importlib.util

            if importlib.util.find_spec("cleanlab") is None:
                raise ValueError("ranker cleanlab needs the cleanlab package: pip install cleanlab "
                                 "(or use ranker confident, famus's own confident learning)")


@dataclass(frozen=True)
class TrainingMethod:
    """One ``--method``: ``meta`` methods run a meta learner (``--meta-grad``, a trusted set); ``pseudo``:
    it runs with ``--meta-set pseudo``; ``distributed``: on several processes; ``options``: the dataclass
    of its ``method_options`` (``None``: the meta method's own, checked when its learner is built; ERM
    takes none); ``source``: its paper."""

    name: str
    source: str
    meta: bool = False
    pseudo: bool = False
    distributed: bool = True
    options: type | None = None

    def options_of(self, cfg: TrainConfig) -> Any:
        """The checked ``method_options`` (an ``options`` instance; ``None`` for ERM and the meta methods)."""
        if self.options is None:  # ERM ignores method_options (a config's meta method's, e.g. compare's baseline)
            return None
        opts = checked_options(self.options, cfg.method_options, "method_options")
        opts.check(cfg)
        return opts

    def needs_trusted_set(self, opts: Any) -> bool:
        """Whether the method reads a trusted meta set (meta methods; ``prune`` with the ``famus`` ranker)."""
        return self.meta or (isinstance(opts, PruneOptions) and opts.ranker == "famus")


TRAINING_METHODS: Registry[TrainingMethod] = Registry("method")
TRAINING_METHODS.add("erm", TrainingMethod("erm", "empirical risk minimization on the given labels", pseudo=True))
for _name in METHODS.names():
    TRAINING_METHODS.add(_name, TrainingMethod(_name, "meta method (famus.meta.METHODS)", meta=True,
                                               pseudo=_name != "mlc"))  # MLC's corrected loss takes no soft targets
TRAINING_METHODS.add("coteaching", TrainingMethod(
    "coteaching", "Han et al., Co-teaching, NeurIPS 2018 (github.com/bhanML/Co-teaching)",
    distributed=False, options=CoTeachingOptions))  # it ranks the whole batch, not a rank's shard
TRAINING_METHODS.add("prune", TrainingMethod(
    "prune", "Northcutt et al., Confident Learning, JAIR 2021 (cleanlab): find, prune, retrain",
    distributed=False, options=PruneOptions))  # its phases run in turn, on one process


# What famus train runs when no --method (and no --loss) is given: the most accurate recipe of docs/versus.md
# with a trusted set and without one (see the page for where a baseline wins, and by how much).
RECOMMENDED: dict[str, dict[str, str]] = {
    # L2R (a meta update on every step, uniform_share 0.5): the most accurate row with a trusted set in 2 of the
    # 4 MLP columns, within 1.8 points of the best row in the others (1.61 at 40% symmetric, 1.73 at 40% pair),
    # the smallest worst-case seed spread of the meta methods
    "trusted": {"method": "l2r", "loss": "ce"},
    "no trusted set": {"method": "erm", "loss": "sce"},  # symmetric cross-entropy (Wang et al. 2019), 1x ERM
    # --meta-set pseudo: DivideMix; above the paper's pseudo-clean MW-Net in 3 of 4 columns, level in the 4th
    "pseudo": {"method": "erm", "loss": "ce"},
}


def check_method(cfg: TrainConfig) -> TrainingMethod:
    """Check ``cfg``'s method: its name (an unknown one lists every method), its ``method_options`` and the
    settings it needs or refuses. Returns its registry entry."""
    spec = TRAINING_METHODS.get(cfg.method)
    opts = spec.options_of(cfg)
    if cfg.track_every and not spec.meta:
        raise ValueError(f"--track-every compares an engine's meta gradient with exact's; --method {cfg.method} has "
                         "none (leave it at 0)")
    if cfg.meta_set == "pseudo" and not spec.pseudo:
        usable = ", ".join(n for n in TRAINING_METHODS if TRAINING_METHODS.get(n).pseudo)
        raise ValueError(f"--meta-set pseudo trains on soft MixMatch targets; --method {cfg.method} cannot (use "
                         f"--method {usable})")
    if spec.needs_trusted_set(opts) and cfg.meta_per_class == 0 and cfg.meta_set == "clean" and not cfg.meta_data:
        raise ValueError(f"method {cfg.method!r} needs a meta set: pass --meta-per-class k > 0 or --meta-data PATH")
    return spec


def is_meta(method: str) -> bool:
    """Whether ``method`` is a meta method (a meta learner per network)."""
    return method in TRAINING_METHODS and TRAINING_METHODS.get(method).meta
