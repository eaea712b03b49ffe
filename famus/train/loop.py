"""One training loop for every method (``erm``, the meta methods with any engine, ``coteaching``) and every
``--meta-set``; ``--method prune`` (:mod:`famus.train.prune`) runs it on subsets of the training set.

A run is a list of :class:`~famus.train.nets.Net` s (one in clean mode, two in pseudo mode and
co-teaching) and a :class:`~famus.train.batches.BatchSource`; this module sets them up, resumes, runs
the epochs (:mod:`famus.train.epoch`), evaluates, writes metrics, ``model_best.pt`` and checkpoints
(:mod:`famus.train.state`), and ends with the summary.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from famus import distributed as dist
from famus.data import NOISE
from famus.losses import LOSSES
from famus.meta import ENGINES, METHODS
from famus.progress import progress
from famus.train.batches import BatchSource, CleanSource, passes
from famus.train.checkpoint import BEST, CHECKPOINT, CheckpointSchedule, save_checkpoint
from famus.train.config import TrainConfig, from_dict, load_config
from famus.train.coteaching import CoTeachingSource
from famus.train.data import RunData, describe_noise, prepare_data
from famus.train.epoch import Clock, EpochRunner
from famus.train.evaluation import evaluate_models
from famus.train.methods import TRAINING_METHODS
from famus.train.metrics import MetricsWriter
from famus.train.nets import Net, build_net
from famus.train.position import EpochPosition
from famus.train.pseudo import PseudoSource
from famus.train.resume import resume_checkpoint
from famus.train.run_folder import claim_out_dir, note_run_info, start_run_folder
from famus.train.scores import ScoreTracker, finish_scores, score_source
from famus.train.selection import ModelSelection
from famus.train.state import Resumed, restore
from famus.train.step import Precision, make_precision
from famus.train.summary import run_summary, write_summary

log = logging.getLogger(__name__)


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


def check_names(cfg: TrainConfig) -> None:
    """The registry names of a (validated) config: an unknown one is an error listing the valid ones."""
    meta = TRAINING_METHODS.get(cfg.method).meta
    if meta:
        ENGINES.get(cfg.meta_grad.removesuffix("+lagged"))  # "+lagged": the one-backward mode
    NOISE.get(cfg.noise)
    LOSSES.get(cfg.loss)
    if cfg.loss != "ce" and meta and not METHODS.get(cfg.method).takes_loss_fn:
        raise ValueError(f"method {cfg.method!r} has its own training loss; --loss {cfg.loss} cannot be combined "
                         "with it (use --loss ce)")


def _check_distributed(cfg: TrainConfig) -> None:
    """What does not run on several processes, as clear errors."""
    if dist.world_size() == 1:
        return
    if cfg.meta_set == "pseudo":  # each rank would need the whole GMM split and both networks' shards
        raise ValueError("--meta-set pseudo does not run on several processes (its GMM split and MixMatch "
                         "batches are not sharded); use one process")
    if cfg.track_every:  # the exact meta gradient it compares with is not computed over the union batch
        raise ValueError("--track-every does not run on several processes (the exact meta gradient it "
                         "compares with is one process's); use one process or --track-every 0")
    if not TRAINING_METHODS.get(cfg.method).distributed:  # e.g. co-teaching ranks the whole batch
        raise ValueError(f"--method {cfg.method} does not run on several processes; use one process")
    if cfg.checkpoint_every is not None:  # mid-epoch state (partial sums, BN statistics) is per process
        raise ValueError("checkpoint_every does not run on several processes (mid-epoch state is each "
                         "process's own); leave it unset: checkpoints are written at every epoch's end")


def _coerce(cfg: TrainConfig | dict | str | Path) -> TrainConfig:
    if isinstance(cfg, TrainConfig):
        return cfg
    if isinstance(cfg, dict):
        return from_dict(cfg)
    return load_config(cfg)


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
        if cfg.method == "prune":  # this loop, run on subsets of the training set
            from famus.train.prune import train_prune

            return train_prune(cfg, device)
        with ExitStack() as hold:  # the run folder's lock (rank 0), until the run ends whatever the outcome
            run, ck = setup(cfg, device, hold)
            return run.train(ck)


@dataclass
class Sizes:
    """The global batch, steps per network and epoch, the meta batch and this rank's rows of both."""

    batch: int
    iters: int
    meta_bs: int = 0
    shards: tuple[slice | None, slice | None] = (None, None)


def _sizes(cfg: TrainConfig, data: RunData, train_rows: torch.Tensor | None = None) -> Sizes:
    """``train_rows``: the training examples the run draws its batches from (``None``: all)."""
    n = data.train_x.shape[0] if train_rows is None else train_rows.numel()
    meta = TRAINING_METHODS.get(cfg.method).meta
    if cfg.meta_set != "pseudo" and meta and data.meta_x.shape[0] == 0:
        if cfg.val_per_class and data.has_val:  # the validation set took the whole trusted set
            raise ValueError(f"method {cfg.method!r} needs a meta set, but validation (--val-per-class "
                             f"{cfg.val_per_class}) took all of the trusted examples (from {data.meta_source}), "
                             "leaving none; raise --meta-per-class above --val-per-class (or give a larger "
                             "--meta-data), or lower --val-per-class")
        raise ValueError(f"method {cfg.method!r} needs a meta set: pass --meta-per-class k > 0")
    if n < 2:
        left = "after the meta split; lower --meta-per-class" if train_rows is None else "to train on"
        raise ValueError(f"only {n} training examples left {left}")
    batch = min(cfg.batch_size, n)  # the global batch: each rank gets an equal shard of it
    sizes = Sizes(batch, n // batch)  # drop the ragged last batch: BatchNorm needs > 1 example
    if cfg.meta_set != "pseudo" and meta:
        sizes.meta_bs = min(cfg.meta_batch_size or cfg.batch_size, data.meta_x.shape[0])
    if dist.is_distributed():
        rows = dist.shard(batch, "--batch-size")
        sizes.shards = rows, dist.shard(sizes.meta_bs, "the meta batch size (--meta-batch-size)") \
            if sizes.meta_bs else None
    return sizes


def setup(cfg: TrainConfig, device: torch.device, hold: ExitStack, data: RunData | None = None,
          train_rows: torch.Tensor | None = None, lock: bool = True) -> tuple[_Run, dict[str, Any] | None]:
    """A run's objects and the checkpoint it resumes from (``None``: it starts); ``run.train(ck)`` trains it.

    ``hold``: keeps the run folder's lock (rank 0) until the caller's block ends, whatever the outcome (run
    ``run.train`` inside it); ``lock=False``: the caller holds it already (``--method prune``'s retrain).
    ``data``: the run's data, already prepared for ``cfg`` (``None``: prepared here); ``train_rows``:
    ``(n,)`` int64, the training examples it trains on (``None``: all), e.g. ``--method prune``'s folds.
    """
    # Everything that can fail on bad input happens before the first byte is written; with several
    # processes, a failure on one rank is raised on all of them (none is left waiting for it).
    with dist.agree_on_errors():
        check_names(cfg)
        _check_distributed(cfg)
        # one process per run folder: rank 0 locks it before anything is written
        run_dir = hold.enter_context(claim_out_dir(cfg, lock=lock and dist.is_main()))
        # every rank loads the same checkpoint (several machines: --out on a shared disk)
        ck = resume_checkpoint(cfg, run_dir) if cfg.resume else None
        if ck is not None and ck.get("position") is not None and dist.world_size() > 1:
            raise ValueError(f"{run_dir / CHECKPOINT} was written mid-epoch, which resumes on one process only")
        precision = make_precision(cfg, device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        prepared = data is None
        data = prepare_data(cfg, device) if prepared else data
        sizes = _sizes(cfg, data, train_rows)
    noise_line = describe_noise(cfg, data)
    if prepared and noise_line and dist.is_main():
        log.info(noise_line.removeprefix("famus: "))  # injected noise: said where messages are shown
    return _Run.build(cfg, data, run_dir, device, precision, sizes, train_rows), ck


@dataclass
class _Run:
    """A run's objects, between the checks and the summary."""

    cfg: TrainConfig
    data: RunData
    run_dir: Path
    device: torch.device
    precision: Precision
    sizes: Sizes
    source: BatchSource
    nets: list[Net]
    gen: torch.Generator
    selection: ModelSelection
    scores: ScoreTracker | None = None
    main: bool = True  # rank 0 writes the run folder and shows progress
    train_rows: torch.Tensor | None = None  # the training examples trained on (None: all)

    @classmethod
    def build(cls, cfg: TrainConfig, data: RunData, run_dir: Path, device: torch.device, precision: Precision,
              sizes: Sizes, train_rows: torch.Tensor | None = None) -> _Run:
        gen = torch.Generator().manual_seed(cfg.seed + 1)  # batch order, meta batches, augmentation, mixing
        if cfg.meta_set == "pseudo":
            source: BatchSource = PseudoSource(cfg, data, gen, sizes.batch, sizes.iters)
        elif cfg.method == "coteaching":  # a joint source: both networks step on each batch
            source = CoTeachingSource(cfg, data, gen, sizes.batch, sizes.iters)
        else:
            source = CleanSource(data, gen, sizes.batch, sizes.iters, sizes.meta_bs, sizes.shards,
                                 cfg.eval_batch_size, train_rows)
        # the second network gets its own initialization (pseudo-clean co-training)
        nets = [build_net(cfg, data, device, precision, seed_offset=100 * k, method_options=source.method_options)
                for k in range(source.nets)]
        scores = None  # the meta weights as clean scores, where they are the run's (example_scores.csv)
        if score_source(cfg.method, cfg.meta_set) == "meta_weight":
            scores = ScoreTracker(data.train_x.shape[0], device, cfg.score_decay)
        return cls(cfg, data, run_dir, device, precision, sizes, source, nets, gen, ModelSelection(data.has_val),
                   scores, dist.is_main(), train_rows)

    def _restore(self, ck: dict[str, Any] | None) -> Resumed:
        if ck is None:
            return Resumed()
        rows = ck.get("train_rows")
        if (rows is None) != (self.train_rows is None) or (rows is not None and not torch.equal(
                rows, self.train_rows.cpu())):  # e.g. a prune fold's folder resumed on its own
            raise ValueError(f"{self.run_dir / CHECKPOINT} trained on other training examples than this run "
                             "(a --method prune phase resumes with its prune run: --resume its --out)")
        n = self.data.train_x.shape[0] if self.train_rows is None else self.train_rows.numel()
        res = restore(ck, self.run_dir / CHECKPOINT, self.nets, self.gen, self.source, n, self.sizes.iters,
                      self.device)
        self.selection.load_state_dict(ck.get("selection"))
        if self.scores is not None:
            self.scores.load_state_dict(ck.get("scores"))
        return res

    def _tracker(self, ck: dict[str, Any] | None, done: int):
        """``--track-every``: the first network's meta gradients (``tracking.jsonl``)."""
        learner = self.nets[0].learner
        if learner is None or not self.cfg.track_every:
            return None
        from famus.train.tracking import Tracker

        tracker = Tracker(self.run_dir, self.cfg.track_every, [i.name for i in learner.layer_infos],
                          keep_until=done if self.cfg.resume else None)
        if ck is not None and ck.get("tracker"):
            tracker.load_state_dict(ck["tracker"])
        return tracker

    def save(self, epoch_done: int, steps_done: int, best: float | None, elapsed: float, tracker,
             pos: EpochPosition | None = None) -> None:
        """``checkpoint.pt`` (:mod:`famus.train.state`)."""
        save_checkpoint(self.run_dir / CHECKPOINT, {
            "epoch": epoch_done, "step": steps_done, "position": pos.state_dict() if pos is not None else None,
            "nets": [net.state_dict() for net in self.nets], "generator": self.gen.get_state(),
            "torch_rng": torch.random.get_rng_state(), "source": self.source.state_dict(),
            "best_test_acc": best, "elapsed_s": elapsed, "config": self.cfg.to_dict(),
            "tracker": tracker.state_dict() if tracker else None, "selection": self.selection.state_dict(),
            "scores": self.scores.state_dict() if self.scores else None,
            "train_rows": self.train_rows.cpu() if self.train_rows is not None else None})

    def save_best(self, epoch_done: int) -> None:
        """``model_best.pt``: the chosen epoch's model (``models``: every network, when there are several)."""
        state = {"epoch": epoch_done, "model": self.nets[0].model.state_dict(), "selection": self.selection.rule}
        if len(self.nets) > 1:  # the ensemble was chosen; torch.save stores the shared tensors once
            state["models"] = [state["model"], *(net.model.state_dict() for net in self.nets[1:])]
        save_checkpoint(self.run_dir / BEST, state)

    def train(self, ck: dict[str, Any] | None) -> dict[str, Any]:
        """Run the epochs from ``ck`` (or from the start) and return the summary (every rank)."""
        cfg, iters, nets = self.cfg, self.sizes.iters, passes(self.source)
        res = self._restore(ck)
        # many/medium/few-shot groups by training class counts, reported for long-tailed runs
        groups = self.data.class_groups() if cfg.imbalance > 1 else (None, None)
        if self.main:
            start_run_folder(cfg, self.run_dir, self.data, self.device, ck is not None, res.step, *groups)
        metrics = None
        if self.main:
            metrics = MetricsWriter(self.run_dir, csv_too=cfg.metrics_format == "csv", tensorboard=cfg.tensorboard,
                                    keep_until=res.epoch if cfg.resume else None)
        tracker = self._tracker(ck, res.step)
        bar = progress(cfg.epochs * iters * nets, res.step, self._bar_name(), iters * nets, cfg.progress and self.main)
        runner = EpochRunner(cfg, self.data, self.nets, self.source, self.precision, iters, self.sizes.batch, bar,
                             tracker, self.scores)
        # mid-epoch checkpoints on one process only (with several, each rank has its own sums and BN statistics)
        if self.main and dist.world_size() == 1:
            runner.schedule = CheckpointSchedule(cfg.checkpoint_every)

            def checkpoint(epoch: int, done: int, pos: EpochPosition) -> None:
                self.save(epoch, done, res.best, res.elapsed, tracker, pos)
                runner.schedule.written()

            runner.checkpoint = checkpoint
        try:
            self._epochs(runner, res, metrics, groups)
        finally:
            bar.close()
            if metrics is not None:
                metrics.close()
            if tracker is not None:
                tracker.close()
        return self._summary()

    def _bar_name(self) -> str:
        name = f"{self.cfg.method}/{self.cfg.meta_grad}" if TRAINING_METHODS.get(self.cfg.method).meta \
            else self.cfg.method
        return f"pseudo {name}" if self.cfg.meta_set == "pseudo" else name

    def _epochs(self, runner: EpochRunner, res: Resumed, metrics: MetricsWriter | None, groups) -> None:
        """The epoch loop: ``res`` is where it starts and holds the best accuracy and the time so far."""
        iters, pos = self.sizes.iters, res.position
        step = res.step - (pos.k * iters + pos.it if pos is not None else 0)  # steps before the epoch under way
        for epoch in range(res.epoch, self.cfg.epochs):
            clock = Clock(pos.time_s if pos is not None else 0.0)
            for net in self.nets:
                if net.loss_fn is not None:
                    net.loss_fn.set_epoch(epoch)  # LDAM's deferred re-weighting
            state = self.source.begin_epoch(epoch, self.nets, pos.epoch_state if pos is not None else None)
            pos = pos or EpochPosition.start(passes(self.source), self.data.train_x.device, state)
            record = runner.run(epoch, step, pos, clock)
            record.update(self.source.record(epoch, self.nets, pos.epoch_state))
            step += passes(self.source) * iters
            pos = None
            self._end_epoch(epoch, step, record, res, metrics, groups, runner)

    def _end_epoch(self, epoch: int, step: int, record: dict[str, Any], res: Resumed,
                   metrics: MetricsWriter | None, groups, runner: EpochRunner) -> None:
        """Evaluate, then (rank 0) the metrics record, ``model_best.pt`` and the checkpoint."""
        if self.scores is not None:
            self.scores.end_epoch()  # every rank: the shards' weights are combined here
        for net in self.nets:  # per-rank BatchNorm statistics: every rank continues from their average
            dist.average_buffers_(net.model)
        record.update(evaluate_models([net.model for net in self.nets], self.data, self.cfg.eval_batch_size, *groups))
        acc = record["test_acc"]
        res.best = acc if res.best is None else res.best if acc is None else max(res.best, acc)
        chosen = self.selection.update(epoch + 1, record["val_acc"], acc)
        res.elapsed += record.pop("epoch_time_s")
        record.update(epoch=epoch + 1, step=step, **self.selection.record(), best_test_acc=res.best,
                      wall_time_s=res.elapsed)
        meta = self._meta_update_info()
        if meta is not None and meta.get("choice") is not None:
            record["engine_choice"] = meta["choice"]  # what --meta-grad auto timed faster
        if not self.main:
            return
        if meta is not None:
            note_run_info(self.run_dir, meta_update=meta)
        metrics.write(record)  # before the checkpoint: a kill between the two redoes the epoch and its record
        if chosen:
            self.save_best(epoch + 1)
        self.save(epoch + 1, step, res.best, res.elapsed, runner.tracker)
        if runner.schedule is not None:
            runner.schedule.written()
        runner.bar.set_postfix({k: f"{record[k]:.4f}" for k in ("test_acc", "val_acc") if record[k] is not None})

    def _meta_update_info(self) -> dict[str, Any] | None:
        """The first network's meta-update schedule and engine (``run.json``'s ``meta_update``): the engine, with
        ``choice`` and its ``timings`` where it chose by timing (``auto``), lagged, warm-up, dense and every."""
        learner = self.nets[0].learner
        if learner is None:
            return None
        engine = learner.engine
        info = {"engine": learner.engine_name, "lagged": learner.lagged, "warmup": learner.meta_warmup,
                "dense": learner.meta_dense, "every": learner.meta_every}
        if hasattr(engine, "choice"):
            info["choice"] = engine.choice
            if getattr(engine, "timings", None):  # measured in this process (a resumed one loads only the choice)
                info["timings_s"] = dict(engine.timings)
        return info

    def _summary(self) -> dict[str, Any]:
        if not self.main:  # the other ranks return rank 0's summary
            return dist.broadcast_object(None)
        summary = run_summary(self.run_dir, self.selection, self.data)
        predicted, score = self.source.final_scores(self.nets, self.scores)
        summary.update(finish_scores(self.run_dir, self.data, predicted, score,
                                     score_source(self.cfg.method, self.cfg.meta_set)))
        write_summary(self.run_dir, summary)
        return dist.broadcast_object(summary)
