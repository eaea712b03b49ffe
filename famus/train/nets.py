"""The networks a run trains: each a :class:`Net` (model, optimizer, meta learner, loss, GradScaler)."""

from __future__ import annotations

import inspect
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from famus import distributed as dist
from famus.losses import build_loss
from famus.meta import MetaLearner
from famus.meta.recipe import WARMUP, default_recipe
from famus.models import MODELS, build_model
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.methods import is_meta
from famus.train.step import Criterion, Precision

AUTO_META_WARMUP = WARMUP  # steps; measured in docs/learning-quality.md


@dataclass
class Net:
    """One trained network: ``learner`` is ``None`` for ERM; ``loss_fn`` ``None`` is plain cross-entropy;
    ``scaler`` is float16's GradScaler (else ``None``)."""

    model: nn.Module
    opt: torch.optim.Optimizer
    learner: MetaLearner | None = None
    loss_fn: Any = None
    scaler: torch.amp.GradScaler | None = None

    def criterion(self) -> Criterion:
        """The plain step's loss: cross-entropy, or the mean of ``--loss``'s per-example losses."""
        if self.loss_fn is None:
            return F.cross_entropy
        return lambda logits, y: self.loss_fn(logits, y).mean()

    def state_dict(self) -> dict[str, Any]:
        """Tensors and plain containers (one entry of a checkpoint's ``nets``)."""
        return {"model": self.model.state_dict(), "optimizer": self.opt.state_dict(),
                "learner": self.learner.state_dict() if self.learner is not None else None,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if self.learner is not None:
            self.learner.load_state_dict(state["learner"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """``--optimizer``: SGD (momentum, Nesterov, L2 weight decay) or AdamW (decoupled weight decay)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


def meta_warmup_steps(cfg: TrainConfig, data: RunData) -> int:
    """``cfg.meta_warmup``, or by default ``min(25, a quarter of an epoch's steps)`` of plain training first."""
    if cfg.meta_warmup is not None:
        return cfg.meta_warmup
    n = data.train_x.shape[0]
    return min(AUTO_META_WARMUP, (n // max(min(cfg.batch_size, n), 1)) // 4)


def meta_schedule(cfg: TrainConfig, data: RunData) -> tuple[int, int]:
    """``(meta_every, meta_dense)``: the config's, or where unset the default recipe's (:mod:`famus.meta.recipe`)."""
    recipe = default_recipe(cfg.method, meta_warmup_steps(cfg, data))
    every = cfg.meta_every if cfg.meta_every is not None else recipe.every
    dense = cfg.meta_dense if cfg.meta_dense is not None else recipe.dense
    return every, dense


def _model(cfg: TrainConfig, data: RunData, device: torch.device) -> nn.Module:
    options = dict(cfg.model_options)
    if cfg.model in MODELS and "input_size" in inspect.signature(MODELS.get(cfg.model)).parameters:
        options.setdefault("input_size", data.train_x.shape[-1])  # e.g. the MLP's first layer
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels, **options).to(device)
    if cfg.sync_bn and dist.is_distributed():
        model = dist.convert_sync_batchnorm(model)
    return model


def _learner(cfg: TrainConfig, data: RunData, model: nn.Module, opt, loss_fn, seed_offset: int,
             bind_x: Tensor, method_options: dict[str, Any]) -> MetaLearner:
    # the config's options, the --loss loss, then the batch source's (pseudo mode's MixMatch loss)
    extra: dict[str, Any] = {"loss_fn": loss_fn} if loss_fn is not None else {}
    extra.update(method_options)
    every, dense = meta_schedule(cfg, data)
    learner = MetaLearner(model, opt, cfg.method, cfg.meta_grad, seed=cfg.seed + 2 + seed_offset,
                          meta_every=every, meta_dense=dense, meta_warmup=meta_warmup_steps(cfg, data),
                          method_options={**cfg.method_options, **extra}, engine_options=cfg.engine_options)
    learner.bind(bind_x)
    return learner


def build_net(cfg: TrainConfig, data: RunData, device: torch.device, precision: Precision | None = None,
              seed_offset: int = 0, method_options: dict[str, Any] | None = None) -> Net:
    """Model, optimizer (``--optimizer``), per-example loss and meta learner (``None`` but for meta methods) of
    one network.

    ``seed_offset`` gives a second network its own initialization (pseudo-clean co-training);
    ``method_options`` are added to the config's (e.g. pseudo mode's ``loss_fn`` and ``regularizer``).
    A config whose recommended-recipe keys are unset (not yet validated) is validated on a copy first.
    """
    if None in (cfg.method, cfg.loss, cfg.meta_grad, cfg.meta_every, cfg.meta_dense):
        cfg = replace(cfg).validate()
    torch.manual_seed(cfg.seed + seed_offset)
    model = _model(cfg, data, device)
    opt = make_optimizer(cfg, model.parameters())
    # per-class terms (LDAM margins, CB weights) count the training labels the trainer actually has
    loss_fn = build_loss(cfg.loss, data.label_counts(), **cfg.loss_options)
    if cfg.loss == "ce":
        loss_fn = None  # F.cross_entropy as before, so plain runs stay bit-identical
    learner = None
    if is_meta(cfg.method):  # ERM and the baselines train plain networks
        learner = _learner(cfg, data, model, opt, loss_fn, seed_offset, data.augmenter.normalize(data.train_x[:2]),
                           method_options or {})
    return Net(model, opt, learner, loss_fn, precision.scaler() if precision is not None else None)
