"""One epoch of every mode: each network's pass over its batches (or, for a joint source such as
co-teaching, one pass whose steps train every network), one step function, one set of sums.

No host sync per step: the losses, the NaN flag and the meta-step sums stay on the device and are
read at log, checkpoint and epoch boundaries only (every ``log_every`` steps of a pass).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from famus import distributed as dist
from famus.train.batches import Batch, BatchSource, passes
from famus.train.checkpoint import CheckpointSchedule
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.errors import check_finite
from famus.train.health import HealthMeter, Probe, assess, run_probe, short, transition_summary
from famus.train.nets import Net
from famus.train.position import EpochPosition
from famus.train.quality import QualityMeter, v_curve
from famus.train.scores import ScoreTracker
from famus.train.step import Precision, erm_step, lr_at, set_lr


class Clock:
    """An epoch's training time; what runs :meth:`paused` (tracking, logging, saving) is not counted."""

    def __init__(self, elapsed: float = 0.0) -> None:
        self.t0 = time.perf_counter() - elapsed

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0

    @contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self.t0 += time.perf_counter() - t


@dataclass
class EpochRunner:
    """Runs epochs of ``nets`` on ``source``'s batches; ``iters`` steps per network and epoch.

    ``schedule``: after a step it marks as due (and not the epoch's last), ``checkpoint(epoch, steps
    done, position)`` writes a mid-epoch checkpoint. ``tracker`` records the first network's steps.
    ``batch``: the global batch size (example scores).
    """

    cfg: TrainConfig
    data: RunData
    nets: list[Net]
    source: BatchSource
    precision: Precision
    iters: int
    batch: int
    bar: tqdm
    tracker: Any = None
    scores: ScoreTracker | None = None
    schedule: CheckpointSchedule | None = None
    checkpoint: Callable[[int, int, EpochPosition], None] | None = None
    _shares: list[torch.Tensor] = field(default_factory=list)  # per step (clean weight, weight), several ranks
    health: HealthMeter | None = None  # the label-free health check of the weighting (famus.train.health)
    probe: Probe | None = None  # its probe (the validation set), built on first use
    _probe_built: bool = False
    _flags: list[str] = field(default_factory=list)  # the latest health warnings
    _probe_last: dict[str, Any] = field(default_factory=dict)  # the latest probe (each window's verdict uses it)

    def run(self, epoch: int, step: int, pos: EpochPosition, clock: Clock) -> dict[str, Any]:
        """The epoch (or its rest, from ``pos``); ``step``: the run's steps before it. Returns its record."""
        quality = None  # weight quality (clean vs noisy): where the noise was injected; meta methods only
        watched = self.source.per_example and self.nets[0].learner is not None and self.cfg.log_quality
        if watched and self.data.noise_known:
            quality = QualityMeter(self.data.train_x.device)
        self.health = HealthMeter(self.data.num_classes, self.data.train_x.device) if watched else None
        saved = pos.quality or {}
        if "window" in saved:  # a checkpoint of famus before the health check: the quality meter's state alone
            saved = {"quality": saved}
        if quality is not None and saved.get("quality") is not None:
            quality.load_state_dict(saved["quality"])
        if self.health is not None and saved.get("health") is not None:
            self.health.load_state_dict(saved["health"])
        self._shares = []
        lr = lr_at(self.cfg, epoch, epoch * self.iters + min(pos.it, self.iters - 1), self.iters)
        for k in range(pos.k, passes(self.source)):
            pos.next_network(k)
            lr = self._pass(epoch, step, k, pos, quality, clock, lr)
        return self._record(pos, clock.elapsed(), lr, quality)

    def _pass(self, epoch: int, step: int, k: int, pos: EpochPosition, quality, clock: Clock, lr: float) -> float:
        """Pass ``k`` from ``pos.it`` (network ``k``'s, or every network's for a joint source); returns the
        last learning rate."""
        cfg, iters = self.cfg, self.iters
        trained = self.nets if self.source.joint else [self.nets[k]]
        base = step + k * iters  # the run's steps before this pass
        plain = self.source.plain(epoch)
        for it, batch in self.source.batches(epoch, k, self.nets, pos):
            lr = lr_at(cfg, epoch, epoch * iters + it, iters)  # each network's own iterations
            for net in trained:
                set_lr(net.opt, lr)
            loss = self._step(epoch, base + it + 1, k, batch, pos, quality, clock, plain).detach()
            if it % self.source.loss_every == 0:
                pos.loss_sum[k] += loss.double()
            pos.bad |= ~torch.isfinite(loss)
            pos.it = finished = it + 1
            if finished % cfg.log_every == 0 or finished == iters:
                with clock.paused():  # logging, not training time
                    self._log(epoch, base + finished, k, pos, quality, lr)
            last = (k, finished) == (passes(self.source) - 1, iters)  # the epoch's end has its own checkpoint
            if self.checkpoint is not None and not last and self.schedule.due(base + finished):
                check_finite(pos.bad, cfg.out, epoch, base + finished)  # only good states are saved
                with clock.paused():
                    pos.time_s = clock.elapsed()
                    pos.quality = {"quality": quality.state_dict() if quality is not None else None,
                                   "health": self.health.state_dict() if self.health is not None else None}
                    self.checkpoint(epoch, base + finished, pos)
        return lr

    def _step(self, epoch: int, step_no: int, k: int, batch: Batch, pos: EpochPosition, quality, clock: Clock,
              plain: bool) -> torch.Tensor:
        """One step of network ``k`` (``step_no``: the run's step count after it); returns its 0-d loss.
        A joint source's step trains every network on the batch."""
        if self.source.joint:
            return self.source.step(epoch, batch, self.nets, self.precision)
        net = self.nets[k]
        if net.learner is None or plain:
            return erm_step(net.model, net.opt, batch.x, batch.y, self.source.criterion(epoch, net), self.precision,
                            net.scaler)
        track = self.tracker is not None and k == 0 and self.tracker.should_track(step_no)
        xm = ym = None  # meta batches only where a meta update (or tracking) uses them: meta_every, warm-up
        if net.learner.meta_step_due():
            xm, ym = batch.meta()
        elif track:  # a meta batch for tracking alone must leave the run's random stream as it was
            state = self.source.gen.get_state()
            xm, ym = batch.meta()
            self.source.gen.set_state(state)
        with self.precision.autocast():
            stats = net.learner.step(batch.x, batch.y, xm, ym, scaler=net.scaler)
        if track:
            with clock.paused():  # tracking is analysis, not training time
                corrupted = batch.corrupted if self.data.noise_known else None  # no noise mask: no split
                self.tracker.record(step_no, epoch + 1, net.learner, batch.x, batch.y, xm, ym, stats, corrupted)
        self._account(stats, batch, pos, quality)
        return stats.train_loss

    def _account(self, stats, batch: Batch, pos: EpochPosition, quality) -> None:
        """Add a meta-learner step's statistics to the epoch's sums (on the device)."""
        pos.skipped += stats.meta_skipped
        if stats.meta_updated:
            pos.meta_sum += stats.meta_loss.double()
            pos.meta_steps += 1
        for key, v in stats.times.items():
            pos.stage[key] = pos.stage.get(key, 0.0) + v
        for key, v in (stats.gates or {}).items():
            pos.gates[key] = pos.gates.get(key, 0.0) + v.double()
        if batch.idx is None or not self.source.per_example:
            return  # mixed rows: no example of its own to score
        if self.scores is not None:
            self.scores.visit(batch.idx, stats.weights, self.batch)  # scatter on the device, no sync
        if self.health is not None:
            self.health.update(stats.weights, batch.y, self.batch, stats.meta_updated)
        if not self.data.noise_known:
            return  # no noise mask: the clean-noise fields would be meaningless
        w, clean = stats.weights.double(), (~batch.corrupted).double()
        if dist.is_distributed():  # the union batch's share, from every rank's sums (at the epoch's end)
            self._shares.append(torch.stack([(w * clean).sum(), w.sum()]))
        else:
            pos.clean_mass += (w * clean).sum() / w.sum().clamp(min=1e-12)
        pos.weighted += 1
        if quality is not None:
            quality.update(stats.weights, ~batch.corrupted)

    def _log(self, epoch: int, done: int, k: int, pos: EpochPosition, quality, lr: float) -> None:
        """Every ``log_every`` steps of a pass: the NaN check, the progress bar, a weight-quality window."""
        check_finite(pos.bad, self.cfg.out, epoch, done)
        self.bar.update(done - self.bar.n)
        sampled = math.ceil(pos.it / self.source.loss_every)
        post = {"loss": f"{float(pos.loss_sum[k]) / sampled:.4f}", "lr": f"{lr:g}"}
        window: dict[str, Any] = {}
        if quality is not None:
            window.update(quality.window(), v_curve=v_curve(self.nets[k].learner.method))
            auroc = window["weight_auroc"]
            post["auroc"] = "-" if auroc is None else f"{auroc:.3f}"
        if self.health is not None:
            window["health"] = self._health_window(k)
            if self._flags:
                post["health"] = short(self._flags)
        if window:
            pos.windows.append({"step": done, **window})
        self.bar.set_postfix(post)

    def _health_window(self, k: int) -> dict[str, Any]:
        """The window's weight statistics, MW-Net's V(loss), MLC's transition diagonal, and its warnings."""
        learner = self.nets[k].learner
        h = self.health.window()
        v = v_curve(learner.method)
        if v is not None:
            h["v_curve"] = v
        t = transition_summary(learner.method)
        if t is not None:
            h["t_diag"] = t["t_diag"]
        window = {**h, "num_classes": self.data.num_classes}
        done, balanced = self._meta_steps_done(learner), self._balanced()
        h["flags"] = assess(self.cfg.method, window, None, done, balanced)  # logged: the window's own numbers
        # the progress line adds the last epoch's probe (kept in memory only: a resumed run logs the same)
        self._flags = assess(self.cfg.method, window, self._probe_last or None, done, balanced)
        return h

    @staticmethod
    def _meta_steps_done(learner) -> int:
        return max(0, (learner.steps - learner.meta_warmup + learner.meta_every - 1) // learner.meta_every)

    def _balanced(self) -> bool:
        """A noise task, where V rising with the loss is wrong (not a long tail, whose point that is)."""
        return self.cfg.imbalance == 1 and self.cfg.loss == "ce"

    def _epoch_health(self, pos: EpochPosition) -> dict[str, Any]:
        """The epoch's health record: histogram, class means, MLC's matrix, the probe, the warnings."""
        learner = self.nets[0].learner
        out = self.health.epoch()
        t = transition_summary(learner.method)
        if t is not None:
            out.update(t)
        if not self._probe_built:
            self._probe_built = True
            if not dist.is_distributed():  # one process's probe: the meta gradient would be collective
                self.probe = Probe.build(self.data, self.cfg.seed, getattr(self.source, "meta_bs", 0) or self.batch)
        probe = {}
        if self.probe is not None:
            probe = run_probe(self.probe, learner, self.data, self.batch, self.precision.autocast)
            out.update(probe)
            self._probe_last = probe
        last = next((w["health"] for w in reversed(pos.windows) if "health" in w), {})
        flags = assess(self.cfg.method, {**out, **last, "num_classes": self.data.num_classes,
                                         "v_curve": v_curve(learner.method)},
                       probe, self._meta_steps_done(learner), self._balanced())
        out["flags"] = flags
        self._flags = flags
        return out

    def _record(self, pos: EpochPosition, epoch_time: float, lr: float, quality) -> dict[str, Any]:
        """The epoch's metrics record (floats): one host sync per epoch."""
        nets, iters = passes(self.source), self.iters
        steps, sampled = nets * iters, nets * math.ceil(iters / self.source.loss_every)
        record: dict[str, Any] = {"train_loss": float(pos.loss_sum.sum()) / sampled, "lr": lr,
                                  "time_per_iter_s": epoch_time / steps, "epoch_time_s": epoch_time}
        if all(net.learner is None for net in self.nets):
            return record
        record.update(meta_loss=float(pos.meta_sum) / pos.meta_steps if pos.meta_steps else None,
                      meta_steps=pos.meta_steps, meta_skipped=int(pos.skipped))
        clean_mass = pos.clean_mass
        if self._shares:
            (sums,) = dist.sum_over_ranks([torch.stack(self._shares)])
            clean_mass = (sums[:, 0] / sums[:, 1].clamp(min=1e-12)).sum()
        if pos.weighted:
            record["clean_weight_share"] = float(clean_mass) / pos.weighted
        record["stage_time_s"] = {key: v / steps for key, v in pos.stage.items()}
        if pos.gates:
            record["gate_rate"] = {key: float(v) / steps for key, v in pos.gates.items()}
        v = v_curve(self.nets[0].learner.method)
        if quality is not None:
            record.update(quality.epoch(), v_curve=v,
                          quality_steps=[{k: x for k, x in w.items() if k != "health"} for w in pos.windows])
        if self.health is not None:
            record["health_steps"] = [{"step": w["step"], **w["health"]} for w in pos.windows if "health" in w]
            record["health"] = self._epoch_health(pos)
            if v is not None:
                record["v_curve"] = v
        return record
