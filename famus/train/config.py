"""Typed run configuration: a dataclass, YAML files and command-line overrides.

Config keys mirror the command-line flags (``--noise-rate`` is ``noise_rate``; hyphens
are accepted in YAML too).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from famus.yamlload import load_file

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("step", "cosine")
AMP = (None, "bf16", "fp16")


@dataclass
class TrainConfig:
    """Everything a run depends on. Defaults are a quick ``digits`` run."""

    # data
    dataset: str = "digits"
    data_dir: str | None = None
    dataset_options: dict[str, Any] = field(default_factory=dict)
    train_subset: int | None = None  # keep this many training examples (stratified), before the meta split
    # label noise injected into the training labels: none (the labels as given), symmetric, pair, asymmetric,
    # instance (instance-dependent, Xia et al. 2020), matrix, file; all but matrix and file need noise_rate
    noise: str = "none"
    noise_rate: float | None = None
    noise_options: dict[str, Any] = field(default_factory=dict)  # include_true, mapping, matrix, path, key
    imbalance: float = 1.0  # long-tail imbalance factor IF (1 = balanced)
    meta_per_class: int = 100  # clean meta examples per class, held out of training (unless meta_data)
    meta_data: str | None = None  # the trusted set from its own folder/file (then none is drawn from training)
    # validation examples per class (model selection), held out of the trusted set; with no trusted set
    # (meta_per_class 0, --meta-set pseudo) out of the noisy training data, with their noisy labels
    val_per_class: int = 0
    meta_set: str = "clean"  # clean (held-out trusted examples) or pseudo (GMM-selected, no clean labels)
    pseudo_options: dict[str, Any] = field(default_factory=dict)  # PseudoOptions keys; typed: cfg.pseudo()
    augment: bool = True
    augment_options: dict[str, Any] = field(default_factory=dict)  # flip, crop, padding (default: per dataset)
    score_decay: float = 0.5  # example_scores.csv: clean score = EMA of the meta weights over visits, this decay
    # model
    model: str = "small-resnet"
    model_options: dict[str, Any] = field(default_factory=dict)
    # method
    # erm, mwnet, l2r, mlc, coteaching, prune; None: the recommended recipe (docs/versus.md; set by validate()):
    # with a trusted set MW-Net (its default recipe), without one ERM on the SCE loss (famus.train.methods)
    method: str | None = None
    # auto (exact or fd, the faster), fd, exact, famus, jvp, ... (+lagged); None: the default recipe's
    # (auto+lagged; L2R auto), like meta_every and meta_dense below (famus.meta.recipe; set by validate())
    meta_grad: str | None = None
    method_options: dict[str, Any] = field(default_factory=dict)  # meta_lr, normalize, ...
    engine_options: dict[str, Any] = field(default_factory=dict)  # k, temperature, candidates, ...
    # which steps update the meta model (famus.meta.recipe): after the warm-up, every step for meta_dense
    # steps, then every meta_every-th step (the others are ordinary steps weighted by the current meta
    # model); None: the default recipe's (dense 200, then every 5th; L2R, whose meta parameters do not
    # persist between steps: every step)
    meta_every: int | None = None
    meta_dense: int | None = None
    # (meta_warmup below: docs/learning-quality.md shows the first meta updates can trap MW-Net in the
    # opposite weighting, for exact too; 25 plain steps first avoided it on every seed measured)
    # the first steps train without meta updates, uniformly weighted; None: min(25, a quarter of an epoch)
    meta_warmup: int | None = None
    meta_batch_size: int | None = None  # default: batch_size
    # training loss (famus.losses): ce, gce, sce (robust to noise), ldam, focal, cb (long tail); per-class terms
    # use the training label counts.
    # erm, l2r and mwnet train on it (MW-Net's meta model sees it); the meta loss stays cross-entropy.
    loss: str | None = None  # None: the recommended recipe's loss where the method is left unset too, else ce
    loss_options: dict[str, Any] = field(default_factory=dict)  # q; alpha, beta, A; max_m, s, drw_epoch, gamma
    # optimisation
    epochs: int = 10
    batch_size: int = 100
    optimizer: str = "sgd"  # sgd or adamw; the virtual step follows it (famus.meta.virtual_step)
    lr: float = 0.1
    momentum: float = 0.9  # sgd
    nesterov: bool = False  # sgd
    weight_decay: float = 5e-4  # sgd: L2; adamw: decoupled
    schedule: str = "step"  # step (lr * gamma^milestones passed) or cosine (lr to 0 over the run)
    lr_warmup_epochs: float = 0.0  # linear warm-up of the lr over this many epochs (fractions allowed), then schedule
    milestones: list[int] = field(default_factory=list)  # lr /= 1/gamma at these points
    milestone_unit: str = "epoch"  # epoch or iter
    gamma: float = 0.1
    amp: str | None = None  # mixed precision: None (float32), bf16, or fp16 (CUDA only, with a GradScaler)
    # run
    seed: int = 1
    out: str = "runs/run"
    resume: bool = False
    device: str = "cpu"  # cpu, cuda, auto
    threads: int | None = None
    eval_batch_size: int = 1000
    metrics_format: str = "jsonl"  # jsonl or csv (jsonl is always written)
    tensorboard: bool = False
    progress: bool = True
    log_every: int = 20
    log_quality: bool = True  # weight quality (AUROC, clean share, MW-Net's V(loss)) each log window
    track_every: int = 0  # every N steps, compare the engine's meta gradient with exact (famus report)
    # a mid-epoch checkpoint every N steps (besides each epoch's end); None: when 10 minutes passed since the last
    checkpoint_every: int | None = None
    # several processes (torchrun; batch_size and meta_batch_size are the global, union batch sizes)
    sync_bn: bool = False  # BatchNorm statistics over the union batch (else each rank's shard's)
    dist_timeout_s: float = 600.0  # a collective waiting longer than this fails (a peer died or hangs)

    def validate(self) -> TrainConfig:
        """Cheap checks with clear messages, before anything is loaded or written.

        Every value must have its field's type (a bool is a bool, an int an int; a float field
        takes an int, which becomes a float) and every number, also inside option dicts and
        lists, must be finite; then the ranges and names below.
        """
        check_types(self)
        self._resolve_method()
        self._resolve_recipe()
        self._validate_noise()
        self._validate_data()
        if self.imbalance < 1:
            raise ValueError(f"imbalance factor must be >= 1, got {self.imbalance}")
        if self.track_every < 0:
            raise ValueError(f"track_every must be >= 0, got {self.track_every}")
        for name in ("epochs", "batch_size", "eval_batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.meta_every is not None and self.meta_every < 1:
            raise ValueError(f"meta_every must be >= 1 (or unset: the default recipe), got {self.meta_every}")
        for name in ("meta_warmup", "meta_dense"):
            if getattr(self, name) is not None and getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 (or unset: the default recipe), got {getattr(self, name)}")
        for name in ("meta_batch_size", "train_subset", "threads", "checkpoint_every"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1 (or unset), got {getattr(self, name)}")
        if not 0 <= self.seed < 2**62:
            raise ValueError(f"seed must be in [0, 2^62), got {self.seed}")
        for name in ("momentum", "weight_decay"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.gamma <= 0:
            raise ValueError(f"gamma must be > 0, got {self.gamma}")
        if self.meta_set not in ("clean", "pseudo"):
            raise ValueError(f"meta_set must be 'clean' or 'pseudo', got {self.meta_set!r}")
        if self.meta_set == "pseudo":
            self.pseudo()  # a bad option is refused here, before anything is written
            if self.loss != "ce":
                raise ValueError("--meta-set pseudo trains with its own MixMatch loss; use --loss ce")
        from famus.train.methods import check_method  # the method registry checks its options with this module's

        check_method(self)  # the name, its method_options, what it needs (a trusted set) and refuses
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        self._validate_optimisation()
        if self.milestone_unit not in ("epoch", "iter"):
            raise ValueError(f"milestone_unit must be 'epoch' or 'iter', got {self.milestone_unit!r}")
        if self.metrics_format not in ("jsonl", "csv"):
            raise ValueError(f"metrics_format must be 'jsonl' or 'csv', got {self.metrics_format!r}")
        if not self.dist_timeout_s > 0:
            raise ValueError(f"dist_timeout_s must be > 0, got {self.dist_timeout_s}")
        if self.device not in ("cpu", "cuda", "auto") and not self.device.startswith("cuda:"):
            raise ValueError(f"device must be cpu, cuda, cuda:N or auto, got {self.device!r}")
        return self

    def has_trusted_set(self) -> bool:
        """Whether the run has trusted labels for a meta set: ``--meta-data`` or ``meta_per_class`` > 0, clean mode."""
        return self.meta_set == "clean" and (self.meta_per_class > 0 or bool(self.meta_data))

    def _resolve_method(self) -> None:
        """``method`` and ``loss`` left unset: the recommended recipe (:data:`famus.train.methods.RECOMMENDED`)."""
        from famus.train.methods import RECOMMENDED

        loss = "ce"
        if self.method is None:
            recipe = RECOMMENDED["pseudo" if self.meta_set == "pseudo" else
                                 "trusted" if self.has_trusted_set() else "no trusted set"]
            self.method, loss = recipe["method"], recipe["loss"]
        if self.loss is None:
            self.loss = loss

    def _resolve_recipe(self) -> None:
        """The default recipe (:mod:`famus.meta.recipe`) for the meta-update keys left unset: ``meta_grad``,
        ``meta_every``, ``meta_dense`` (written to the run's ``config.yaml`` as resolved)."""
        from famus.meta.methods import METHODS
        from famus.meta.recipe import default_recipe

        recipe = default_recipe(self.method if self.method in METHODS else "mwnet")
        if self.meta_every is None:
            self.meta_every = recipe.every
        if self.meta_dense is None:
            self.meta_dense = recipe.dense
        if self.meta_grad is None:  # lagged only where the schedule amortizes (--meta-every 1: the paper's step)
            self.meta_grad = recipe.engine_for(self.meta_every)

    def _validate_optimisation(self) -> None:
        """Optimizer, schedule and precision choices."""
        for key, valid in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("amp", AMP)):
            if getattr(self, key) not in valid:
                shown = ", ".join("null" if v is None else v for v in valid)
                raise ValueError(f"{key} must be one of {shown}, got {getattr(self, key)!r}")
        if not 0 <= self.lr_warmup_epochs <= self.epochs:
            raise ValueError(f"lr_warmup_epochs must be in [0, epochs={self.epochs}], got {self.lr_warmup_epochs}")

    def _validate_noise(self) -> None:
        """Noise is off unless asked for; a rate without a noise (or the reverse) is a mistake, not a default."""
        rate = self.noise_rate
        if rate is not None and not 0.0 <= rate <= 1.0:
            raise ValueError(f"noise rate must be in [0, 1], got {rate}; pass e.g. --noise-rate 0.4")
        if self.noise in RATE_NOISES and rate is None:
            raise ValueError(f"--noise {self.noise} needs a rate: pass --noise-rate R (e.g. 0.4)")
        if self.noise == "none" and rate:
            raise ValueError(f"--noise-rate {rate} given but no noise is injected (--noise none, the default); "
                             "pass --noise symmetric (or pair, asymmetric, instance) to inject it")

    def _validate_data(self) -> None:
        """The trusted and validation sets and the augmentation options."""
        if self.meta_per_class < 0:
            raise ValueError(f"meta_per_class must be >= 0, got {self.meta_per_class}")
        if self.val_per_class < 0:
            raise ValueError(f"val_per_class must be >= 0, got {self.val_per_class}")
        if self.meta_set == "pseudo" and self.meta_data:
            raise ValueError("--meta-set pseudo uses no trusted labels: drop --meta-data (validation can come from "
                             "a val/ folder, or --val-per-class k out of the noisy training data)")
        unknown = set(self.augment_options) - {"flip", "crop", "padding"}
        if unknown:
            raise ValueError(f"unknown augment_options {sorted(unknown)}; valid: crop, flip, padding")
        if not 0.0 <= self.score_decay < 1.0:
            raise ValueError(f"score_decay must be in [0, 1), got {self.score_decay}")

    def pseudo(self) -> PseudoOptions:
        """``pseudo_options`` as a checked :class:`PseudoOptions` (the defaults where a key is missing)."""
        return PseudoOptions.from_dict(self.pseudo_options)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


@dataclass(frozen=True)
class PseudoOptions:
    """``--meta-set pseudo``'s ``pseudo_options`` (see :mod:`famus.train.pseudo`).

    ``warmup_epochs`` of plain cross-entropy first; then each epoch the GMM split (clean probability
    above ``p_threshold``: labeled set, above ``meta_threshold``: meta set, at least ``min_meta``)
    and MixMatch batches (``alpha``, ``temperature``, ``lambda_u`` ramped up over ``rampup_epochs``,
    label ``refine``-ment, ``prior_penalty``), or with ``semi: false`` plain noisy-label batches.
    """

    warmup_epochs: int = 1
    p_threshold: float = 0.5
    meta_threshold: float = 0.5
    alpha: float = 4.0
    lambda_u: float = 25.0
    rampup_epochs: int = 16
    temperature: float = 0.5
    min_meta: int = 10
    refine: bool = True
    prior_penalty: bool = True
    semi: bool = True

    @classmethod
    def from_dict(cls, options: dict[str, Any]) -> PseudoOptions:
        """``options`` over the defaults, checked: an unknown key or a bad value is a ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(options) - names
        if unknown:
            raise ValueError(f"unknown pseudo_options {sorted(unknown)}; valid: {', '.join(sorted(names))}")
        opts = {**dataclasses.asdict(cls()), **options}
        for name, hint in typing.get_type_hints(cls).items():
            if not _matches(opts[name], hint) or _non_finite(opts[name]) is not None:
                raise ValueError(f"pseudo_options {name} must be {_kind(hint)}, got {_show(opts[name])}")
            if hint is float:
                opts[name] = float(opts[name])
        for key in ("p_threshold", "meta_threshold"):
            if not 0.0 <= float(opts[key]) <= 1.0:
                raise ValueError(f"pseudo_options {key} must be in [0, 1], got {opts[key]}")
        for key in ("alpha", "temperature"):
            if not float(opts[key]) > 0:
                raise ValueError(f"pseudo_options {key} must be > 0, got {opts[key]}")
        for key in ("warmup_epochs", "rampup_epochs", "lambda_u"):
            if float(opts[key]) < 0:
                raise ValueError(f"pseudo_options {key} must be >= 0, got {opts[key]}")
        if int(opts["min_meta"]) < 1:
            raise ValueError(f"pseudo_options min_meta must be >= 1, got {opts['min_meta']}")
        return cls(**opts)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(hint: Any) -> str:
    """``int | None`` -> ``"an int or null"``: how a type reads in an error message."""
    names = {bool: "a bool (true or false)", int: "an int", float: "a number", str: "a string",
             dict: "a mapping {key: value}", type(None): "null"}

    def one(a: Any) -> str:
        if typing.get_origin(a) is list:
            plural = {int: "ints", float: "numbers", str: "strings"}
            return f"a list of {plural.get(typing.get_args(a)[0], 'values')}" if typing.get_args(a) else "a list"
        return names.get(typing.get_origin(a) or a, str(a))

    return " or ".join(one(a) for a in _union_args(hint))


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (Union, types.UnionType)


def _matches(value: Any, hint: Any) -> bool:
    """Whether ``value`` has type ``hint`` (str, int, float, bool, None, unions, dict[str, Any], list[int])."""
    if _is_union(hint):
        return any(_matches(value, a) for a in typing.get_args(hint))
    origin, args = typing.get_origin(hint) or hint, typing.get_args(hint)
    if hint is type(None):
        return value is None
    if origin is bool:
        return isinstance(value, bool)
    if origin is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) for k in value)
    if origin is list:
        return isinstance(value, list) and (not args or all(_matches(v, args[0]) for v in value))
    return isinstance(value, origin)


def _non_finite(value: Any) -> float | None:
    """The first NaN or infinite number in ``value`` (looking inside dicts and lists), if any."""
    if isinstance(value, float) and not math.isfinite(value):
        return value
    items = value.values() if isinstance(value, dict) else value if isinstance(value, (list, tuple)) else ()
    for v in items:
        bad = _non_finite(v)
        if bad is not None:
            return bad
    return None


def check_types(cfg: TrainConfig) -> None:
    """Check every value of ``cfg`` against its field's type; ints in float fields become floats.

    Raises:
        ValueError: one line naming the key, the expected type and the value.
    """
    for name, hint in HINTS.items():
        value = getattr(cfg, name)
        if not _matches(value, hint):
            raise ValueError(f"config key {name!r} must be {_kind(hint)}, got {_show(value)}")
        bad = _non_finite(value)
        if bad is not None:
            raise ValueError(f"config key {name!r} must be finite, got {bad}" +
                             (f" in {_show(value)}" if bad is not value else ""))
        if isinstance(value, int) and not isinstance(value, bool) and float in _union_args(hint):
            setattr(cfg, name, float(value))


def _union_args(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if _is_union(hint) else (hint,)


RATE_NOISES = ("symmetric", "pair", "asymmetric", "instance")  # the noises drawn at a rate


def _key(k: str) -> str:
    return k.replace("-", "_")


def from_dict(data: dict[str, Any], base: TrainConfig | None = None) -> TrainConfig:
    """A config from ``data`` (keys with ``-`` or ``_``) over ``base``; unknown keys are errors."""
    out = dataclasses.replace(base) if base is not None else TrainConfig()
    for k, v in data.items():
        if not isinstance(k, str):
            raise ValueError(f"config keys are names, got {_show(k)}; valid keys: {', '.join(sorted(FIELDS))}")
        key = _key(k)
        if key not in FIELDS:
            raise ValueError(f"unknown config key {k!r}; valid keys: {', '.join(sorted(FIELDS))}")
        setattr(out, key, v)
    return out


def load_config(path: str | Path, base: TrainConfig | None = None) -> TrainConfig:
    """Read a YAML config file (a mapping of config keys)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file {str(p)!r} not found; see configs/ for examples")
    try:
        data = load_file(p) or {}  # size, alias and depth limits
    except yaml.YAMLError as e:
        raise ValueError(f"config file {str(p)!r} is not valid YAML: {yaml_error(e)}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(p)!r} must hold a mapping of config keys")
    data.pop("base", None)
    return from_dict(data, base)


def yaml_error(e: yaml.YAMLError) -> str:
    """A YAML error on one line: the problem and where (``line L, column C``)."""
    problem = getattr(e, "problem", None) or str(e).strip().splitlines()[0]
    mark = getattr(e, "problem_mark", None)
    return f"{problem} at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else problem
