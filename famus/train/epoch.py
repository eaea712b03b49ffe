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

    def run(self, epoch: int, step: int, pos: EpochPosition, clock: Clock) -> dict[str, Any]:
        """The epoch (or its rest, from ``pos``); ``step``: the run's steps before it. Returns its record."""
        quality = None  # weight quality (clean vs noisy): where the noise was injected; meta methods only
        if self.source.per_example and self.nets[0].learner is not None and self.cfg.log_quality \
                and self.data.noise_known:
            quality = QualityMeter(self.data.train_x.device)
            if pos.quality is not None:
                quality.load_state_dict(pos.quality)
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
                    pos.quality = quality.state_dict() if quality is not None else None
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
                self.tracker.record(step_no, epoch + 1, net.learner, batch.x, batch.y, xm, ym, stats, batch.corrupted)
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
        if quality is not None:
            pos.windows.append({"step": done, **quality.window(), "v_curve": v_curve(self.nets[k].learner.method)})
            auroc = pos.windows[-1]["weight_auroc"]
            post["auroc"] = "-" if auroc is None else f"{auroc:.3f}"
        self.bar.set_postfix(post)

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
        if quality is not None:
            record.update(quality.epoch(), v_curve=v_curve(self.nets[0].learner.method), quality_steps=pos.windows)
        return record
