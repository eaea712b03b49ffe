"""Where a run's steps come from: a :class:`BatchSource` (one interface, one per ``--meta-set``).

The epoch loop (:mod:`famus.train.epoch`) asks the source, each epoch, for each network's pass
of :class:`Batch` es, and for the loss of its plain steps; the source's per-epoch hook may
prepare the epoch (pseudo mode: the GMM split). :class:`CleanSource` is ``--meta-set clean``:
one network, shuffled batches of the training set (or of some of its rows: ``--method prune``'s
folds and retrain), meta batches from the trusted set. A *joint* source (co-teaching,
:mod:`famus.train.coteaching`) has one pass per epoch whose every step trains all its networks on
the same batch, by the source's own :meth:`BatchSource.step`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from famus.train.data import RunData
from famus.train.nets import Net
from famus.train.position import EpochPosition
from famus.train.scores import ScoreTracker, predict
from famus.train.step import Criterion, Precision


@dataclass
class Batch:
    """One step's data.

    Attributes:
        x: inputs ``(n, ...)``, augmented; y: labels ``(n,)`` int64 or soft targets ``(n, C)``.
        idx: ``(n,)`` the training example of each row, when rows are training examples with their
            noisy labels (example scores, weight quality); ``None`` for mixed rows.
        corrupted: ``(n,)`` bool, whether each row's (own) example has a corrupted label (tracking).
        meta: draws the meta batch ``(x_meta (m, ...), y_meta (m,))``, called only when a step uses it.
    """

    x: Tensor
    y: Tensor
    idx: Tensor | None
    corrupted: Tensor
    meta: Callable[[], tuple[Tensor, Tensor]]


class BatchSource(Protocol):
    """What a ``--meta-set`` mode gives the epoch loop."""

    nets: int  # networks trained
    # False: each network makes its own pass of ``iters`` steps per epoch (its plain or meta step);
    # True: one pass per epoch, each step training every network on the same batch (``step``)
    joint: bool
    loss_every: int  # ``train_loss`` averages every ``loss_every``-th step's loss of a pass
    per_example: bool  # weight quality and example scores apply (rows are training examples)
    gen: torch.Generator  # the run's random stream: batch order, meta batches, augmentation
    method_options: dict[str, Any]  # added to the config's method options (e.g. pseudo mode's MixMatch loss)

    def begin_epoch(self, epoch: int, nets: list[Net], state: dict[str, Any] | None) -> dict[str, Any]:
        """Prepare ``epoch``; returns its state (``state`` itself when resuming mid-epoch)."""

    def plain(self, epoch: int) -> bool:
        """Whether ``epoch`` trains with plain steps even where a network has a meta learner (a warm-up)."""

    def criterion(self, epoch: int, net: Net) -> Criterion:
        """The loss of ``net``'s plain steps in ``epoch``."""

    def batches(self, epoch: int, k: int, nets: list[Net], pos: EpochPosition) -> Iterator[tuple[int, Batch]]:
        """``(iteration, batch)`` for the rest of network ``k``'s pass, from ``pos.it``."""

    def step(self, epoch: int, batch: Batch, nets: list[Net], precision: Precision) -> Tensor:
        """A joint source's step (called only where ``joint``): trains every network on ``batch`` (their
        learning rates are set); returns the 0-d loss that ``train_loss`` averages, not synced to the host."""

    def record(self, epoch: int, nets: list[Net], state: dict[str, Any]) -> dict[str, Any]:
        """The source's keys of the epoch's metrics record."""

    def final_scores(self, nets: list[Net], scores: ScoreTracker | None) -> tuple[Tensor, Tensor]:
        """``(predicted (N,), clean score (N,))`` of the training examples at the end (``scores``: the
        meta-weight scores, where the run keeps them)."""

    def state_dict(self) -> dict[str, Any] | None: ...

    def load_state_dict(self, state: dict[str, Any] | None) -> None: ...


def passes(source: BatchSource) -> int:
    """A source's passes per epoch: one per network, or one for a joint source."""
    return 1 if source.joint else source.nets


def shuffled(data: RunData, gen: torch.Generator, pos: EpochPosition, batch: int, iters: int,
             rows: Tensor | None = None, among: Tensor | None = None) -> Iterator[tuple[int, Tensor, Tensor]]:
    """``(iteration, x augmented, example indices)`` for the rest of one shuffled pass over the training
    set (``among``: over these of its examples only); the batch order is drawn at the pass's start and
    kept in ``pos.perm``. ``rows``: this rank's rows of each batch (several processes)."""
    if pos.perm is None:
        n = data.train_x.shape[0] if among is None else among.numel()
        pos.perm = torch.randperm(n, generator=gen).to(data.train_x.device)
        if among is not None:
            pos.perm = among.to(data.train_x.device)[pos.perm]
    for it in range(pos.it, iters):
        idx = pos.perm[it * batch : (it + 1) * batch]
        x = data.augmenter(data.train_x[idx], gen, rows)
        yield it, x, idx if rows is None else idx[rows]


class CleanSource:
    """``--meta-set clean``: one network; meta batches from the held-out trusted set, drawn when used.

    ``shards``: this rank's rows of each training batch and of each meta batch (several processes;
    every rank draws the same batches from the same generator and keeps its slice). ``train_rows``:
    the training examples it draws from (``None``: all).
    """

    nets, per_example, joint = 1, True, False
    method_options: dict[str, Any] = {}
    loss_every = 1

    def __init__(self, data: RunData, gen: torch.Generator, batch: int, iters: int, meta_bs: int,
                 shards: tuple[slice | None, slice | None] = (None, None), eval_batch_size: int = 1000,
                 train_rows: Tensor | None = None) -> None:
        self.data, self.gen, self.batch, self.iters, self.meta_bs = data, gen, batch, iters, meta_bs
        self.rows, self.meta_rows = shards
        self.eval_batch_size, self.train_rows = eval_batch_size, train_rows

    def begin_epoch(self, epoch: int, nets: list[Net], state: dict[str, Any] | None) -> dict[str, Any]:
        return state or {}

    def plain(self, epoch: int) -> bool:
        return False

    def criterion(self, epoch: int, net: Net) -> Criterion:
        return net.criterion()

    def _meta(self) -> tuple[Tensor, Tensor]:
        data = self.data
        midx = torch.randperm(data.meta_x.shape[0], generator=self.gen)[: self.meta_bs].to(data.train_x.device)
        xm = data.augmenter(data.meta_x[midx], self.gen, self.meta_rows)
        return xm, data.meta_y[midx if self.meta_rows is None else midx[self.meta_rows]]

    def batches(self, epoch: int, k: int, nets: list[Net], pos: EpochPosition) -> Iterator[tuple[int, Batch]]:
        data = self.data
        for it, x, idx in shuffled(data, self.gen, pos, self.batch, self.iters, self.rows, self.train_rows):
            yield it, Batch(x, data.train_y[idx], idx, data.corrupted[idx], self._meta)

    def record(self, epoch: int, nets: list[Net], state: dict[str, Any]) -> dict[str, Any]:
        return {}

    def final_scores(self, nets: list[Net], scores: ScoreTracker | None) -> tuple[Tensor, Tensor]:
        data = self.data
        predicted, p_given = predict(nets[0].model, data.train_x, data.train_y, data.augmenter, self.eval_batch_size)
        return predicted, scores.score if scores is not None else p_given

    def state_dict(self) -> dict[str, Any] | None:
        return None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        pass
