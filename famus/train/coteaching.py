"""``--method coteaching``: Co-teaching (Han et al., "Co-teaching: Robust training of deep neural networks
with extremely noisy labels", NeurIPS 2018; code github.com/bhanML/Co-teaching).

Two networks with different initializations see the same mini-batches. At each step each network
ranks the batch by its own loss and keeps its ``int((1 - R(t)) * n)`` smallest-loss examples; each
network is updated on the examples its *peer* kept (the mean loss over them, from the step's one
forward pass, as ``loss_coteaching`` in the authors' code). The forget rate ramps from 0:
``R(e) = tau * min(e / T_k, 1)`` in 0-based epoch ``e`` (the paper's schedule; in its code
``T_k = num_gradual = 10`` of 200 epochs, ``exponent = 1``). Options
(:class:`famus.train.methods.CoTeachingOptions`):

* ``forget_rate`` tau: the noise rate, given by the user; by default estimated once, after the first
  epoch (trained with ``R = 0``): a 2-component GMM on each network's per-example losses against the
  given labels (:func:`famus.data.pseudo_clean.gmm_clean_probability`, as DivideMix's split), tau = the
  mean posterior of the high-loss component, averaged over the two networks. It never reads the
  injected noise rate or the clean labels. Each epoch's record holds ``forget_rate``,
  ``forget_rate_estimated`` and ``keep_rate`` (``1 - R(e)``), and, where noise was injected, the paper's
  ``label_precision`` (the share of clean labels among the kept examples; reporting only).
* ``forget_epochs`` T_k: by default the paper's 10 epochs, cut so that the ramp ends by the run's last
  epoch, ``min(10, max(1, epochs - 1))`` (scaling it to the run as a share of the paper's 200 epochs
  ramped a 24-epoch run in one epoch and lost 11 points: see :class:`~famus.train.methods.CoTeachingOptions`).

The optimizer, schedule, batch size and ``--loss`` (ranking and update loss) are the run's, as for
every method. Evaluation: both networks and their ensemble (mean logits), as pseudo mode does
(:func:`famus.train.evaluation.evaluate_models`): ``test_acc``/``val_acc`` are the ensemble's (model
selection too), ``test_acc_net1``/``test_acc_net2`` each network's (the paper reports one network's).
``model_best.pt`` and ``checkpoint.pt`` hold both networks. Clean scores (``example_scores.csv``): the
mean of the two final networks' probabilities of the given label.

Design: the epoch loop runs each network's pass over its own batches; co-teaching needs both networks
on the same batch at each step. Rather than a special case in the loop, a batch source may be *joint*
(:class:`famus.train.batches.BatchSource`): one pass per epoch whose steps are the source's own
:meth:`CoTeachingSource.step`, training every network. Everything else (learning rates, checkpoints
mid-epoch, resume, NaN checks, metrics, evaluation) is the one loop's.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from famus.data.pseudo_clean import gmm_clean_probability
from famus.meta.inputs import logits_of
from famus.meta.precision import upcast
from famus.train.batches import Batch, shuffled
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.methods import TRAINING_METHODS
from famus.train.nets import Net
from famus.train.position import EpochPosition
from famus.train.pseudo import eval_losses
from famus.train.scores import ScoreTracker
from famus.train.step import Criterion, Precision, apply_loss


def small_loss(losses: list[Tensor], keep: int) -> list[Tensor]:
    """Each network's ``keep`` smallest-loss rows: ``losses`` ``[(n,)] * k`` -> ``[(keep,)] * k`` int64
    (ties: the earlier row first)."""
    return [torch.argsort(loss.detach(), stable=True)[:keep] for loss in losses]


def per_example_loss(net: Net, logits: Tensor, y: Tensor) -> Tensor:
    """``(n,)`` losses of ``logits`` ``(n, C)``: the run's ``--loss`` (cross-entropy by default)."""
    return F.cross_entropy(logits, y, reduction="none") if net.loss_fn is None else net.loss_fn(logits, y)


def estimate_forget_rate(nets: list[Net], data: RunData, batch_size: int, seed: int) -> float:
    """The noisy share of the training set: per network, the mean posterior of the high-loss component of
    a 2-component GMM on its per-example losses against the given labels; averaged over the networks."""
    noisy = [1.0 - float(gmm_clean_probability(eval_losses(net.model, data, batch_size), seed=seed).mean())
             for net in nets]
    return sum(noisy) / len(noisy)


class CoTeachingSource:
    """Co-teaching's joint :class:`~famus.train.batches.BatchSource`: two networks, one pass per epoch of
    shuffled batches, each step training both (:meth:`step`)."""

    nets, joint, per_example, loss_every = 2, True, True, 1
    method_options: dict[str, Any] = {}

    def __init__(self, cfg: TrainConfig, data: RunData, gen: torch.Generator, batch: int, iters: int) -> None:
        self.opts = TRAINING_METHODS.get("coteaching").options_of(cfg)
        self.data, self.gen, self.batch, self.iters, self.epochs = data, gen, batch, iters, cfg.epochs
        self.eval_batch_size, self.seed = cfg.eval_batch_size, cfg.seed
        self.tau: float | None = self.opts.forget_rate
        self.forget = 0.0  # R(e) of the epoch under way
        self._sums = torch.zeros(2, dtype=torch.float64, device=data.train_x.device)  # clean kept, kept

    def begin_epoch(self, epoch: int, nets: list[Net], state: dict[str, Any] | None) -> dict[str, Any]:
        """The epoch's forget rate; after the first epoch, the estimate of tau (once, when not given)."""
        if self.tau is None and epoch >= 1:
            self.tau = estimate_forget_rate(nets, self.data, self.eval_batch_size, self.seed)
        self.forget = self.opts.forget_at(epoch, self.tau, self.epochs)
        if state:  # resumed mid-epoch: the kept-label sums so far came with the source's state
            return state
        self._sums.zero_()
        return {"forget": self.forget}

    def plain(self, epoch: int) -> bool:
        return False

    def criterion(self, epoch: int, net: Net) -> Criterion:
        return net.criterion()

    def batches(self, epoch: int, k: int, nets: list[Net], pos: EpochPosition) -> Iterator[tuple[int, Batch]]:
        data = self.data
        for it, x, idx in shuffled(data, self.gen, pos, self.batch, self.iters):
            yield it, Batch(x, data.train_y[idx], idx, data.corrupted[idx], _no_meta)

    def step(self, epoch: int, batch: Batch, nets: list[Net], precision: Precision) -> Tensor:
        """Both networks forward on ``batch``; each keeps its small-loss rows; each is updated on its peer's.
        Returns the mean of the two update losses (0-d, on the device)."""
        keep = max(1, int((1.0 - self.forget) * batch.y.shape[0]))
        with precision.autocast():
            losses = [per_example_loss(net, upcast(logits_of(net.model(batch.x)), torch.float32), batch.y)
                      for net in nets]
        kept = small_loss(losses, keep)
        total = torch.zeros((), device=batch.y.device)
        for k, net in enumerate(nets):
            total = total + apply_loss(net.model, net.opt, losses[k][kept[1 - k]].mean(), net.scaler).detach()
        clean = sum((~batch.corrupted[rows]).sum() for rows in kept)
        self._sums += torch.stack([clean.double(), clean.new_tensor(len(nets) * keep).double()])
        return total / len(nets)

    def record(self, epoch: int, nets: list[Net], state: dict[str, Any]) -> dict[str, Any]:
        """tau, whether it was estimated, the epoch's keep rate and (injected noise) the kept labels' precision."""
        out: dict[str, Any] = {"forget_rate": self.tau, "forget_rate_estimated": self.opts.forget_rate is None,
                               "keep_rate": 1.0 - self.forget}
        if self.data.noise_known:
            clean, kept = self._sums.tolist()
            out["label_precision"] = clean / kept if kept else None
        return out

    @torch.no_grad()
    def final_scores(self, nets: list[Net], scores: ScoreTracker | None) -> tuple[Tensor, Tensor]:
        """``(predicted (N,), clean score (N,))``: the ensemble's (mean logits) prediction and the mean of the
        networks' probabilities of the given label (eval mode, no augmentation)."""
        data, bs = self.data, self.eval_batch_size
        for net in nets:
            net.model.eval()
        predicted, p_given = [], []
        for i in range(0, data.train_x.shape[0], bs):
            x = data.augmenter.normalize(data.train_x[i : i + bs])
            logits = [logits_of(net.model(x)).float() for net in nets]
            predicted.append(sum(logits).argmax(1).cpu())  # the evaluated ensemble's (mean logits)
            p = sum(F.softmax(z, 1) for z in logits) / len(nets)
            p_given.append(p.gather(1, data.train_y[i : i + bs, None]).squeeze(1).cpu())
        for net in nets:
            net.model.train()
        return torch.cat(predicted), torch.cat(p_given)

    def state_dict(self) -> dict[str, Any]:
        return {"forget_rate": self.tau, "sums": self._sums.cpu()}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.tau = state["forget_rate"]
            self._sums = state["sums"].to(self._sums.device, torch.float64)


def _no_meta() -> tuple[Tensor, Tensor]:
    raise RuntimeError("co-teaching steps have no meta batch")
