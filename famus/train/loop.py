"""One training loop for every method: ``erm`` and the meta-learning methods, any engine."""

from __future__ import annotations

import inspect
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

import famus
from famus import distributed as dist
from famus.atomic import atomic_write_text
from famus.data import NOISE, save_noisy_labels
from famus.losses import LOSSES, build_loss
from famus.meta import ENGINES, METHODS, MetaLearner
from famus.meta.inputs import logits_of
from famus.meta.precision import upcast
from famus.models import MODELS, build_model
from famus.train.checkpoint import BEST, CHECKPOINT, CheckpointSchedule, CorruptFileError, save_checkpoint
from famus.train.config import TrainConfig, from_dict, load_config
from famus.train.data import GROUPS, RunData, describe_noise, prepare_data
from famus.train.metrics import MetricsWriter
from famus.train.quality import QualityMeter, v_curve
from famus.train.resume import CONFIG_FILE, check_resumable_folder, resume_checkpoint
from famus.train.scores import ScoreTracker, finish_scores, predict, score_source
from famus.train.selection import ModelSelection
from famus.train.summary import run_summary, write_summary
from famus.verified import remove_stale_temporaries, save_verified


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. the loss became NaN); the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    """The training device; under a launcher with several processes, ``cuda`` is this rank's GPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and torch.cuda.is_available():
        name = dist.rank_device(name)
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r} requested but CUDA is not available; use --device cpu")
    return dev


def code_version() -> str:
    """famus version plus the git commit of the source tree, when it is a checkout."""
    here = Path(famus.__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5
        )
        commit = out.stdout.strip() if out.returncode == 0 else ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit, dirty = "", ""
    return f"{famus.__version__}+{commit}{'.dirty' if dirty else ''}" if commit else famus.__version__


def _check_out_dir(cfg: TrainConfig) -> Path:
    """Fail early, before anything is loaded or written, if the run folder is unusable."""
    run_dir = Path(cfg.out)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"--out {str(run_dir)!r} exists and is not a folder; choose another --out")
    if cfg.resume:
        check_resumable_folder(run_dir)
    elif run_dir.exists() and any(run_dir.iterdir()):
        raise ValueError(
            f"--out {str(run_dir)!r} already holds files; pass --resume to continue it or choose another --out"
        )
    probe = run_dir
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"cannot create --out {str(run_dir)!r}: {str(probe)!r} is a file; choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write to {str(probe)!r} (for --out {str(run_dir)!r}); choose a writable --out")
    return run_dir


def _validate_names(cfg: TrainConfig) -> None:
    if cfg.method != "erm":
        METHODS.get(cfg.method)
        ENGINES.get(cfg.meta_grad.removesuffix("+lagged"))  # "+lagged": the one-backward mode
    NOISE.get(cfg.noise)
    LOSSES.get(cfg.loss)
    if cfg.loss != "ce" and cfg.method != "erm" and "loss_fn" not in _init_params(cfg.method):
        raise ValueError(f"method {cfg.method!r} has its own training loss; --loss {cfg.loss} cannot be combined "
                         "with it (use --loss ce)")


def _check_distributed(cfg: TrainConfig) -> None:
    """What does not run on several processes yet, as clear errors."""
    if dist.world_size() == 1:
        return
    if cfg.meta_set == "pseudo":
        raise ValueError("--meta-set pseudo does not run on several processes yet; use one process")
    if cfg.track_every:
        raise ValueError("--track-every does not run on several processes yet; use one process or 0")


def _init_params(method: str) -> set[str]:
    return set(inspect.signature(METHODS.get(method).__init__).parameters)


def group_accuracy(per_class: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, float | None]:
    """Mean per-class test accuracy of each many/medium/few-shot group (``None`` for an empty group).

    The mean of per-class accuracies equals the group's accuracy on a class-balanced test set.
    """
    return {g: round(float(per_class[groups[g]].mean()), 6) if groups[g] else None for g in GROUPS}


def lr_at(cfg: TrainConfig, epoch: int, step: int, iters: int) -> float:
    """The learning rate of iteration ``step`` (0-based; ``iters`` per epoch).

    A linear warm-up ``lr * (step + 1) / W`` over the first ``W = round(lr_warmup_epochs * iters)``
    iterations, then the schedule: ``step``, ``lr * gamma^(milestones passed)`` with milestones in
    epochs or iterations; or ``cosine``, ``lr * (1 + cos(pi * t)) / 2`` with ``t`` going from 0 after the
    warm-up to 1 at the end of the run (never reaching 0: ``t < 1`` at the last iteration).
    """
    warm = round(cfg.lr_warmup_epochs * iters)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    if cfg.schedule == "cosine":
        t = (step - warm) / max(cfg.epochs * iters - warm, 1)
        return cfg.lr * 0.5 * (1.0 + math.cos(math.pi * t))
    point = epoch if cfg.milestone_unit == "epoch" else step
    return cfg.lr * cfg.gamma ** sum(point >= m for m in cfg.milestones)


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    """``--optimizer``: SGD (momentum, Nesterov, L2 weight decay) or AdamW (decoupled weight decay)."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, nesterov=cfg.nesterov,
                           weight_decay=cfg.weight_decay)


@dataclass
class Precision:
    """A run's ``--amp``: the autocast dtype (``None``: float32) and, for float16, the GradScaler."""

    device: torch.device
    dtype: torch.dtype | None = None
    scaler: torch.amp.GradScaler | None = None

    def autocast(self):
        """The forward (and meta step) context: ``torch.autocast`` or nothing."""
        return torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None else nullcontext()


def make_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """``--amp``: bf16 autocast on any device; fp16 autocast plus a GradScaler on CUDA only."""
    if cfg.amp is None:
        return Precision(device)
    if cfg.amp == "fp16" and device.type != "cuda":
        raise ValueError("--amp fp16 needs a CUDA device (it trains with a GradScaler); on the CPU use --amp bf16")
    if cfg.amp == "fp16":
        return Precision(device, torch.float16, torch.amp.GradScaler("cuda"))
    return Precision(device, torch.bfloat16)


@torch.no_grad()
def evaluate(model: torch.nn.Module, data: RunData, batch_size: int,
             split: str = "test") -> tuple[float | None, torch.Tensor | None]:
    """Accuracy and per-class accuracy ``(C,)`` on the ``test`` (or ``val``) split, in eval mode.

    ``(None, None)`` when the split is empty. With several processes each rank evaluates a contiguous part
    of the split (the ranks' models are identical) and the per-class counts are summed over ranks.
    """
    xs, ys = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    if ys is None or ys.numel() == 0:
        return None, None
    was = model.training
    model.eval()
    correct = torch.zeros(data.num_classes, device=ys.device)
    n, w, r = xs.shape[0], dist.world_size(), dist.rank()
    for i in range(n * r // w, n * (r + 1) // w, batch_size):
        end = min(i + batch_size, n * (r + 1) // w)
        x = data.augmenter.normalize(xs[i:end])
        y = ys[i:end]
        hit = (logits_of(model(x)).argmax(1) == y).float()
        correct.index_add_(0, y, hit)
    (correct,) = dist.sum_over_ranks([correct])
    model.train(was)
    counts = torch.bincount(ys, minlength=data.num_classes).clamp(min=1)
    return float(correct.sum() / ys.numel()), (correct / counts).cpu()


def _coerce(cfg: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(cfg, TrainConfig):
        return cfg
    if isinstance(cfg, dict):
        return from_dict(cfg)
    return load_config(cfg)


AUTO_META_WARMUP = 25  # steps; measured in docs/learning-quality.md


def meta_warmup_steps(cfg: TrainConfig, data: RunData) -> int:
    """``cfg.meta_warmup``, or by default ``min(25, a quarter of an epoch's steps)`` of plain training first."""
    if cfg.meta_warmup is not None:
        return cfg.meta_warmup
    n = data.train_x.shape[0]
    return min(AUTO_META_WARMUP, (n // max(min(cfg.batch_size, n), 1)) // 4)


def build_components(cfg: TrainConfig, data: RunData, device: torch.device, seed_offset: int = 0):
    """Model, optimizer (``--optimizer``), per-example loss (``None`` = plain CE) and meta learner (``None`` for ERM).

    ``seed_offset`` gives a second network its own initialization (pseudo-clean co-training).
    """
    torch.manual_seed(cfg.seed + seed_offset)
    model_options = dict(cfg.model_options)
    if cfg.model in MODELS and "input_size" in inspect.signature(MODELS.get(cfg.model)).parameters:
        model_options.setdefault("input_size", data.train_x.shape[-1])  # e.g. the MLP's first layer
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels,
                        **model_options).to(device)
    if cfg.sync_bn and dist.is_distributed():
        model = dist.convert_sync_batchnorm(model)
    opt = make_optimizer(cfg, model.parameters())
    # per-class terms (LDAM margins, CB weights) count the training labels the trainer actually has
    loss_fn = build_loss(cfg.loss, data.label_counts(), **cfg.loss_options)
    if cfg.loss == "ce":
        loss_fn = None  # F.cross_entropy as before, so plain runs stay bit-identical
    learner = None
    if cfg.method != "erm":
        extra: dict[str, Any] = {"loss_fn": loss_fn} if loss_fn is not None else {}
        if "num_classes" in _init_params(cfg.method) and "num_classes" not in cfg.method_options:
            extra["num_classes"] = data.num_classes  # MLC's transition matrix is C x C
        learner = MetaLearner(model, opt, cfg.method, cfg.meta_grad, seed=cfg.seed + 2 + seed_offset,
                              meta_every=cfg.meta_every, meta_warmup=meta_warmup_steps(cfg, data),
                              method_options={**cfg.method_options, **extra}, engine_options=cfg.engine_options)
        learner.bind(data.augmenter.normalize(data.train_x[:2]))
    return model, opt, loss_fn, learner


def train(config: TrainConfig | dict | str | Path) -> dict[str, Any]:
    """Train one run and return its summary.

    Args:
        config: a :class:`TrainConfig`, a dict of config keys, or a YAML file path.

    Returns:
        ``{"run_dir", "val_chosen_acc", "val_chosen_epoch", "selection", "val_source", "last_test_acc",
        "best_test_acc", "time_per_iter_s", "epochs", "clean_score"}`` (see :mod:`famus.train.summary`), plus
        ``label_issues`` (AUROC and precision at N of the clean scores) when noise was injected, and the last
        epoch's ``group_acc`` (many/medium/few-shot) and ``group_rule`` for long-tailed runs.

    The run folder holds ``config.yaml`` (resolved), ``run.json`` (seed, code version,
    environment, resumes), ``classes.json`` (class names, when known), ``noisy_labels.pt``,
    ``split.pt``, ``metrics.jsonl`` (one record per epoch), ``checkpoint.pt`` (latest: each epoch's
    end and every ``checkpoint_every`` steps, or after 10 minutes), ``model_best.pt`` (chosen on
    validation), ``example_scores.csv`` and ``summary.json``; each ``.pt`` file has a ``.sha256``
    sidecar (:mod:`famus.verified`). Every config value is checked before anything is written.

    With ``resume``, the run continues from its checkpoint, mid-epoch too, exactly as if never
    interrupted; the config may differ from the run's only in safe keys
    (:data:`famus.train.resume.SAFE_ON_RESUME`, and more ``epochs``). A folder without a
    checkpoint starts afresh.

    Several processes (``torchrun --nproc_per_node N -m famus train ...``, or inside a process group
    the caller initialized): data-parallel training, each rank on an equal shard of every (global)
    batch and meta batch, with the union batch's meta step (:mod:`famus.distributed`). Rank 0 writes
    the run folder (checkpoints at epoch ends only); every rank returns the same summary.
    """
    cfg = _coerce(config).validate()
    if cfg.meta_set == "pseudo":
        cfg = replace(cfg, meta_per_class=0)  # no clean examples: the meta set comes from the GMM split
    device = resolve_device(cfg.device)
    # under torchrun (WORLD_SIZE > 1) with no process group yet: create it (nccl on GPUs, gloo on CPU)
    with dist.process_group(device, cfg.dist_timeout_s):
        return _train(cfg, device)


@dataclass
class EpochPosition:
    """How far an epoch got: its batch order, finished iterations and the sums of its metrics record.

    Saved in mid-epoch checkpoints, so that a resumed epoch ends exactly as an uninterrupted one.
    """

    perm: torch.Tensor  # the epoch's batch order
    it: int  # finished iterations
    loss_sum: torch.Tensor  # float64 sums over the finished iterations
    meta_sum: torch.Tensor
    clean_mass: torch.Tensor
    bad: torch.Tensor  # a NaN or inf loss not yet reported
    skipped: torch.Tensor  # meta steps skipped for a non-finite meta gradient
    meta_steps: int = 0  # steps that updated the meta parameters (meta_every, meta_warmup)
    stage: dict[str, float] = field(default_factory=dict)  # stage times (s)
    gates: dict[str, torch.Tensor] = field(default_factory=dict)  # FaMUS gate counts
    time_s: float = 0.0  # training time of the epoch so far
    quality: dict[str, Any] | None = None  # the weight-quality meter's sums (QualityMeter.state_dict)
    windows: list[dict[str, Any]] = field(default_factory=list)  # the epoch's weight-quality log windows

    @classmethod
    def start(cls, perm: torch.Tensor) -> EpochPosition:
        """A new epoch with batch order ``perm``."""
        def zero() -> torch.Tensor:
            return torch.zeros((), device=perm.device, dtype=torch.float64)

        return cls(perm, 0, zero(), zero(), zero(), torch.zeros((), device=perm.device, dtype=torch.bool), zero())

    def state_dict(self) -> dict[str, Any]:
        """Tensors, numbers and plain containers (a checkpoint's ``position``)."""
        return {"iteration": self.it, "perm": self.perm.cpu(), "loss_sum": self.loss_sum.cpu(),
                "meta_sum": self.meta_sum.cpu(), "clean_mass": self.clean_mass.cpu(), "bad": self.bad.cpu(),
                "skipped": self.skipped.cpu(), "meta_steps": self.meta_steps, "stage": dict(self.stage),
                "gates": {k: v.cpu() for k, v in self.gates.items()}, "time_s": self.time_s,
                "quality": self.quality, "windows": list(self.windows)}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str) -> EpochPosition:
        """The position saved by :meth:`state_dict`, its tensors on ``device``."""
        t = {k: state[k].to(device) for k in ("perm", "loss_sum", "meta_sum", "clean_mass", "bad", "skipped")}
        return cls(t["perm"], int(state["iteration"]), t["loss_sum"], t["meta_sum"], t["clean_mass"], t["bad"],
                   t["skipped"], int(state["meta_steps"]), dict(state["stage"]),
                   {k: v.to(device) for k, v in state["gates"].items()},
                   float(state["time_s"]), state.get("quality"), list(state.get("windows", [])))


def _restore(ck: dict[str, Any], path: Path, model, opt, learner, gen, data: RunData, iters: int,
             precision: Precision | None = None):
    """Load ``ck`` into the run's objects; returns ``(epoch, steps done, best, elapsed, position)``.

    Raises:
        CorruptFileError: the checkpoint does not fit the run (missing keys, wrong shapes).
    """
    try:
        model.load_state_dict(ck["model"])
        opt.load_state_dict(ck["optimizer"])
        if learner is not None:
            learner.load_state_dict(ck["learner"])
        gen.set_state(ck["generator"])
        torch.random.set_rng_state(ck["torch_rng"])
        if precision is not None and precision.scaler is not None and ck.get("scaler"):
            precision.scaler.load_state_dict(ck["scaler"])
        position = None
        if ck.get("position") is not None:
            position = EpochPosition.from_state(ck["position"], data.train_x.device)
            if position.perm.shape != (data.train_x.shape[0],) or not 0 < position.it < iters:
                raise ValueError("its mid-epoch position does not fit the training set")
        best = ck["best_test_acc"]
        return int(ck["epoch"]), int(ck["step"]), None if best is None else float(best), float(ck["elapsed_s"]), \
            position
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptFileError(f"{path} does not fit this run ({type(e).__name__}: {first})") from None


def _train(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    # Everything that can fail on bad input happens before the first byte is written; with several
    # processes, a failure on one rank is raised on all of them (none is left waiting for it).
    with dist.agree_on_errors():
        _validate_names(cfg)
        _check_distributed(cfg)
        run_dir = _check_out_dir(cfg)
        # every rank loads the same checkpoint (several machines: --out on a shared disk)
        ck = resume_checkpoint(cfg, run_dir) if cfg.resume else None
        if ck is not None and ck.get("position") is not None and dist.world_size() > 1:
            raise ValueError(f"{run_dir / CHECKPOINT} was written mid-epoch, which resumes on one process only")
        precision = make_precision(cfg, device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        data = prepare_data(cfg, device)
        if cfg.meta_set != "pseudo":
            if cfg.method != "erm" and data.meta_x.shape[0] == 0:
                raise ValueError(f"method {cfg.method!r} needs a meta set: pass --meta-per-class k > 0")
            n = data.train_x.shape[0]
            if n < 2:
                raise ValueError(f"only {n} training examples left after the meta split; lower --meta-per-class")
            batch = min(cfg.batch_size, n)  # the global batch: each rank gets an equal shard of it
            iters = n // batch  # drop the ragged last batch: BatchNorm needs > 1 example
            meta_bs = min(cfg.meta_batch_size or cfg.batch_size, data.meta_x.shape[0]) if cfg.method != "erm" else 0
            shards = (None, None)
            if dist.is_distributed():
                rows = dist.shard(batch, "--batch-size")
                shards = rows, dist.shard(meta_bs, "the meta batch size (--meta-batch-size)") if meta_bs else None
    noise_line = describe_noise(cfg, data)
    if noise_line and dist.is_main():
        tqdm.write(noise_line, file=sys.stderr)  # injected noise is never silent
    if cfg.meta_set == "pseudo":
        return _train_pseudo_run(cfg, data, run_dir, device, ck)
    model, opt, loss_fn, learner = build_components(cfg, data, device)
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch order, meta batches, augmentation
    main = dist.is_main()  # rank 0 writes the run folder and shows progress

    # many/medium/few-shot groups by training class counts, reported for long-tailed runs
    groups, group_rule = data.class_groups() if cfg.imbalance > 1 else (None, None)
    start_epoch, done, best, elapsed, position = 0, 0, None, 0.0, None
    selection = ModelSelection(data.has_val)  # model_best.pt: chosen on validation, never on test labels
    scores = ScoreTracker(data.train_x.shape[0], device, cfg.score_decay) if learner is not None else None
    if ck is not None:
        start_epoch, done, best, elapsed, position = _restore(ck, run_dir / CHECKPOINT, model, opt, learner, gen,
                                                              data, iters, precision)
        selection.load_state_dict(ck.get("selection"))
        if scores is not None:
            scores.load_state_dict(ck.get("scores"))
    step = done - (position.it if position is not None else 0)  # steps before the epoch in progress
    if main:
        start_run_folder(cfg, run_dir, data, device, ck is not None, done, groups, group_rule)
    metrics = None
    if main:
        metrics = MetricsWriter(run_dir, csv_too=cfg.metrics_format == "csv", tensorboard=cfg.tensorboard,
                                keep_until=start_epoch if cfg.resume else None)

    tracker = None
    if learner is not None and cfg.track_every:
        from famus.report.tracking import Tracker

        tracker = Tracker(run_dir, cfg.track_every, [i.name for i in learner.layer_infos],
                          keep_until=done if cfg.resume else None)
        if ck is not None and ck.get("tracker"):
            tracker.load_state_dict(ck["tracker"])
    # mid-epoch checkpoints on one process only (with several, each rank has its own sums and BN statistics)
    schedule = CheckpointSchedule(cfg.checkpoint_every) if main and dist.world_size() == 1 else None

    def save(epoch_done: int, steps_done: int, pos: EpochPosition | None = None) -> None:
        save_checkpoint(run_dir / CHECKPOINT, {
            "epoch": epoch_done, "step": steps_done, "position": pos.state_dict() if pos is not None else None,
            "model": model.state_dict(), "optimizer": opt.state_dict(),
            "learner": learner.state_dict() if learner else None, "generator": gen.get_state(),
            "torch_rng": torch.random.get_rng_state(), "best_test_acc": best, "elapsed_s": elapsed,
            "config": cfg.to_dict(), "tracker": tracker.state_dict() if tracker else None,
            "scaler": precision.scaler.state_dict() if precision.scaler is not None else None,
            "selection": selection.state_dict(), "scores": scores.state_dict() if scores else None})
        if schedule is not None:
            schedule.written()

    bar = tqdm(total=cfg.epochs * iters, initial=done, disable=not (cfg.progress and main),
               desc=f"{cfg.method}/{cfg.meta_grad}" if learner else "erm", unit="it", dynamic_ncols=True)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            if loss_fn is not None:
                loss_fn.set_epoch(epoch)  # LDAM's deferred re-weighting
            record = _train_epoch(cfg, model, opt, learner, data, gen, epoch, step, iters, batch, meta_bs, bar,
                                  loss_fn=loss_fn, tracker=tracker, shards=shards,
                                  position=position if epoch == start_epoch else None, schedule=schedule,
                                  checkpoint=save, precision=precision, scores=scores)
            step += iters
            if scores is not None:
                scores.end_epoch()  # every rank: the shards' weights are combined here
            # per-rank BatchNorm statistics: every rank continues from (and rank 0 saves) their average
            dist.average_buffers_(model)
            acc, per_class = evaluate(model, data, cfg.eval_batch_size)
            val_acc, _ = evaluate(model, data, cfg.eval_batch_size, "val")
            best = acc if best is None else best if acc is None else max(best, acc)
            chosen = selection.update(epoch + 1, val_acc, acc)
            elapsed += record.pop("epoch_time_s")
            record.update(epoch=epoch + 1, step=step, test_acc=acc, val_acc=val_acc, **selection.record(),
                          best_test_acc=best, wall_time_s=elapsed)
            if per_class is not None:
                record["per_class_acc"] = [round(float(a), 6) for a in per_class]
            if groups is not None and per_class is not None:
                record.update(group_acc=group_accuracy(per_class, groups), group_rule=group_rule)
            if not main:
                continue
            metrics.write(record)  # before the checkpoint: a kill between the two redoes the epoch and its record
            if chosen:
                save_checkpoint(run_dir / BEST, {"epoch": epoch + 1, "model": model.state_dict(),
                                                 "selection": selection.rule})
            save(epoch + 1, step)
            bar.set_postfix({k: f"{v:.4f}" for k, v in (("test_acc", acc), ("val_acc", val_acc)) if v is not None})
    finally:
        bar.close()
        if metrics is not None:
            metrics.close()
        if tracker is not None:
            tracker.close()
    if not main:  # the other ranks return rank 0's summary
        return dist.broadcast_object(None)
    summary = run_summary(run_dir, selection, data)
    predicted, p_given = predict(model, data.train_x, data.train_y, data.augmenter, cfg.eval_batch_size)
    source = score_source(cfg.method)
    summary.update(finish_scores(run_dir, data, predicted, scores.score if source == "meta_weight" else p_given,
                                 source))
    write_summary(run_dir, summary)
    return dist.broadcast_object(summary)


def start_run_folder(cfg: TrainConfig, run_dir: Path, data: RunData, device: torch.device, resumed: bool,
                     step: int = 0, groups=None, group_rule=None) -> None:
    """The first writes of a run, once every check passed: stale temporaries go; a new run (or one
    resumed without a checkpoint) gets its header; a resumed one its updated ``config.yaml`` and a
    note in ``run.json``."""
    remove_stale_temporaries(run_dir)
    if not resumed:
        _write_run_header(cfg, run_dir, data, device, groups, group_rule)
        return
    atomic_write_text(run_dir / CONFIG_FILE, replace(cfg, resume=False).to_yaml())  # e.g. more epochs
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        info = {}
    resumes = info.get("resumed") if isinstance(info.get("resumed"), list) else []
    resumes.append({"step": step, "code_version": code_version(), "torch": torch.__version__, "device": str(device),
                    "threads": torch.get_num_threads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    info["resumed"] = resumes
    atomic_write_text(run_dir / "run.json", json.dumps(info, indent=2) + "\n")


def _write_run_header(cfg: TrainConfig, run_dir: Path, data: RunData, device: torch.device, groups=None,
                      group_rule=None) -> None:
    """config.yaml, run.json (seed, code version, environment), noisy labels and the split."""
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run_dir / CONFIG_FILE, replace(cfg, resume=False).to_yaml())  # the run, not how it started
    run_info = {"seed": cfg.seed, "code_version": code_version(), "torch": torch.__version__,
                "python": platform.python_version(), "device": str(device), "threads": torch.get_num_threads(),
                "train_examples": int(data.train_x.shape[0]), "meta_examples": int(data.meta_x.shape[0]),
                "noise": cfg.noise, "realised_noise_rate": data.noise.rate,
                "meta_source": data.meta_source, "val_source": data.val_source,
                "val_examples": int(data.val_y.numel()) if data.val_y is not None else 0,
                "started": time.strftime("%Y-%m-%dT%H:%M:%S"),
                "class_counts": data.class_counts().tolist()}
    if groups is not None:
        run_info.update(class_groups=groups, group_rule=group_rule)
    if dist.is_distributed():
        run_info.update(world_size=dist.world_size(), backend=torch.distributed.get_backend())
    atomic_write_text(run_dir / "run.json", json.dumps(run_info, indent=2) + "\n")
    if data.class_names is not None:  # index -> class name (folder names, list-file names, ...)
        atomic_write_text(run_dir / "classes.json", json.dumps(data.class_names, indent=1) + "\n")
    save_noisy_labels(run_dir / "noisy_labels.pt", data.clean_y.cpu(), data.noise)
    save_verified(run_dir / "split.pt", {"train_index": data.train_index, "meta_index": data.meta_index,
                                         "meta_source": data.meta_source})


def _train_pseudo_run(cfg: TrainConfig, data: RunData, run_dir: Path, device: torch.device,
                      ck: dict[str, Any] | None) -> dict[str, Any]:
    from famus.train.pseudo import train_pseudo

    iters = data.train_x.shape[0] // min(cfg.batch_size, data.train_x.shape[0])
    bar = tqdm(total=cfg.epochs * iters * 2, disable=not cfg.progress, unit="it",
               dynamic_ncols=True, desc=f"pseudo {cfg.method}/{cfg.meta_grad}" if cfg.method != "erm" else "pseudo erm")
    try:
        summary = train_pseudo(cfg, data, run_dir, device, bar, ck)
    finally:
        bar.close()
    write_summary(run_dir, summary)
    return summary


def _check_finite(bad: torch.Tensor, cfg: TrainConfig, epoch: int, step: int) -> None:
    """Stop (keeping the last good checkpoint) if a loss since the last check was NaN or inf."""
    if bool(bad):
        raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}, step {step} or before; "
                            f"stopped. The last good checkpoint is kept in {cfg.out}; try a lower --lr")


def _erm_step(model, opt, x, y, loss_fn, precision: Precision) -> torch.Tensor:
    """One plain step (forward under ``--amp``, scaled backward for float16); returns the (union) mean loss."""
    with precision.autocast():
        logits = upcast(logits_of(model(x)), torch.float32)
        loss = F.cross_entropy(logits, y) if loss_fn is None else loss_fn(logits, y).mean()
    opt.zero_grad(set_to_none=True)
    scaler = precision.scaler
    (loss if scaler is None else scaler.scale(loss)).backward()
    if dist.is_distributed():  # DDP-style: the union batch's mean loss is the mean of the ranks' means
        (loss,) = dist.reduce_gradients_(model.parameters(), [loss.detach()], mean=True)
    if scaler is None:
        opt.step()
    else:
        scaler.step(opt)
        scaler.update()
    return loss


def _train_epoch(cfg, model, opt, learner, data: RunData, gen, epoch, step, iters, batch, meta_bs, bar, loss_fn=None,
                 tracker=None, shards=(None, None), position: EpochPosition | None = None,
                 schedule: CheckpointSchedule | None = None,
                 checkpoint: Callable[[int, int, EpochPosition], None] | None = None,
                 precision: Precision | None = None, scores: ScoreTracker | None = None):
    """One epoch, or its rest from ``position``; returns its metrics record (floats), syncing only
    every ``log_every`` steps.

    ``shards``: this rank's rows of each training batch and of each meta batch (several processes;
    every rank draws the same batches from the same generator and keeps its slice).
    ``schedule``: after a step it marks as due (and not the epoch's last), ``checkpoint(epoch,
    steps done, position)`` writes a mid-epoch checkpoint; its time is not training time.
    ``precision``: ``--amp`` (the forward passes and the meta step under autocast; float16's GradScaler).
    """
    precision = precision or Precision(data.train_x.device)
    rows, meta_rows = shards
    distributed = dist.is_distributed()
    shares: list[torch.Tensor] = []  # per step (weight on clean examples, total weight) of this shard
    model.train()
    dev = data.train_x.device
    pos = position or EpochPosition.start(torch.randperm(data.train_x.shape[0], generator=gen).to(dev))
    perm = pos.perm
    # weight quality (clean vs noisy): known only where the noise was injected; meta methods only
    quality = QualityMeter(dev) if learner is not None and cfg.log_quality and data.noise_known else None
    if quality is not None and pos.quality is not None:
        quality.load_state_dict(pos.quality)
    t_epoch = time.perf_counter() - pos.time_s
    lr = lr_at(cfg, epoch, step + pos.it, iters)
    for it in range(pos.it, iters):
        lr = lr_at(cfg, epoch, step + it, iters)
        for g in opt.param_groups:
            g["lr"] = lr
        idx = perm[it * batch : (it + 1) * batch]
        x = data.augmenter(data.train_x[idx], gen, rows)
        if rows is not None:
            idx = idx[rows]
        y = data.train_y[idx]
        if learner is None:
            loss = _erm_step(model, opt, x, y, loss_fn, precision)
        else:
            xm = ym = None  # meta batches only where a meta update (or tracking) uses them: meta_every, warm-up
            if learner.meta_step_due() or (tracker is not None and tracker.should_track(step + it + 1)):
                midx = torch.randperm(data.meta_x.shape[0], generator=gen)[:meta_bs].to(dev)
                xm = data.augmenter(data.meta_x[midx], gen, meta_rows)
                if meta_rows is not None:
                    midx = midx[meta_rows]
                ym = data.meta_y[midx]
            with precision.autocast():
                stats = learner.step(x, y, xm, ym, scaler=precision.scaler)
            pos.skipped += stats.meta_skipped
            if tracker is not None and tracker.should_track(step + it + 1):
                t_track = time.perf_counter()  # tracking is analysis, not training time
                tracker.record(step + it + 1, epoch + 1, learner, x, y, xm, ym, stats, data.corrupted[idx])
                t_epoch += time.perf_counter() - t_track
            loss = stats.train_loss
            if scores is not None:
                scores.visit(idx, stats.weights, batch)  # scatter on the device, no sync
            if stats.meta_updated:
                pos.meta_sum += stats.meta_loss.double()
                pos.meta_steps += 1
            w = stats.weights.double()
            if distributed:  # the union batch's share, from every rank's sums (at the epoch's end)
                shares.append(torch.stack([(w * (~data.corrupted[idx]).double()).sum(), w.sum()]))
            else:
                pos.clean_mass += (w * (~data.corrupted[idx]).double()).sum() / w.sum().clamp(min=1e-12)
            for k, v in stats.times.items():
                pos.stage[k] = pos.stage.get(k, 0.0) + v
            for k, v in (stats.gates or {}).items():
                pos.gates[k] = pos.gates.get(k, 0.0) + v.double()
            if quality is not None:
                quality.update(stats.weights, ~data.corrupted[idx])
        pos.loss_sum += loss.detach().double()
        pos.bad |= ~torch.isfinite(loss.detach())
        finished = it + 1
        if finished % cfg.log_every == 0 or finished == iters:
            _check_finite(pos.bad, cfg, epoch, step + finished)
            bar.update(step + finished - bar.n)
            post = {"loss": f"{float(pos.loss_sum) / finished:.4f}", "lr": f"{lr:g}"}
            if quality is not None:
                t_log = time.perf_counter()  # logging, not training time
                pos.windows.append({"step": step + finished, **quality.window(),
                                    "v_curve": v_curve(learner.method)})
                auroc = pos.windows[-1]["weight_auroc"]
                post["auroc"] = "-" if auroc is None else f"{auroc:.3f}"
                t_epoch += time.perf_counter() - t_log
            bar.set_postfix(post)
        if schedule is not None and checkpoint is not None and finished < iters and schedule.due(step + finished):
            _check_finite(pos.bad, cfg, epoch, step + finished)  # only good states are saved
            t_save = time.perf_counter()
            pos.it, pos.time_s = finished, t_save - t_epoch
            pos.quality = quality.state_dict() if quality is not None else None
            checkpoint(epoch, step + finished, pos)
            t_epoch += time.perf_counter() - t_save
    epoch_time = time.perf_counter() - t_epoch
    clean_mass = pos.clean_mass
    if shares:
        (sums,) = dist.sum_over_ranks([torch.stack(shares)])
        clean_mass = (sums[:, 0] / sums[:, 1].clamp(min=1e-12)).sum()
    record: dict[str, Any] = {"train_loss": float(pos.loss_sum) / iters, "lr": lr,
                              "time_per_iter_s": epoch_time / iters, "epoch_time_s": epoch_time}
    if learner is not None:
        record["meta_loss"] = float(pos.meta_sum) / pos.meta_steps if pos.meta_steps else None
        record["meta_steps"] = pos.meta_steps
        record["meta_skipped"] = int(pos.skipped)
        record["clean_weight_share"] = float(clean_mass) / iters
        record["stage_time_s"] = {k: v / iters for k, v in pos.stage.items()}
        if pos.gates:
            record["gate_rate"] = {k: float(v) / iters for k, v in pos.gates.items()}
    if quality is not None:
        record.update(quality.epoch(), v_curve=v_curve(learner.method), quality_steps=pos.windows)
    return record
