"""``--meta-set pseudo``: no clean labels. Two co-trained networks pick each other's meta sets.

Supplement Algorithm 2 and the reference code (built on DivideMix): after a cross-entropy
warm-up, each epoch each network's per-example training losses (eval mode, normalized) are
fit with a 2-component GMM; examples whose clean probability exceeds a threshold form the
pseudo-clean set, which is the *other* network's meta set and labeled set. The rest is
unlabeled data. Each step trains on a MixMatch batch (:mod:`famus.train.semi`: label
refinement, co-guessing, sharpening, Beta(alpha) mixup, a lambda_u ramp-up and a prior
penalty), reweighted by the meta method (or unweighted with ``--method erm``: DivideMix).
With ``pseudo_options.semi: false`` it is Algorithm 2 as written instead: the meta method
trains on every training example with its noisy label (cross-entropy), and only the meta
set comes from the other network's split.
Training reads only the noisy labels; the clean labels serve only to report the split's
precision and recall.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from famus.data.pseudo_clean import gmm_clean_probability, split_by_probability, split_quality
from famus.train.batches import Batch, shuffled
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.nets import Net
from famus.train.position import EpochPosition
from famus.train.scores import ScoreTracker
from famus.train.semi import SemiLoss, mix_batch, prior_penalty
from famus.train.step import Criterion


@torch.no_grad()
def eval_losses(model: torch.nn.Module, data: RunData, batch_size: int) -> torch.Tensor:
    """``(N,)`` per-example CE of every training example against its NOISY label, eval mode."""
    was = model.training
    model.eval()
    out = []
    for i in range(0, data.train_x.shape[0], batch_size):
        x = data.augmenter.normalize(data.train_x[i : i + batch_size])
        out.append(F.cross_entropy(model(x), data.train_y[i : i + batch_size], reduction="none"))
    model.train(was)
    return torch.cat(out).cpu()


@torch.no_grad()
def final_scores(models: list[torch.nn.Module], data: RunData, batch_size: int,
                 seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted (N,), clean score (N,))``: the ensemble's (mean logits) prediction and the mean of the
    networks' GMM clean probabilities, from the final models' losses against the given labels."""
    probs = [gmm_clean_probability(eval_losses(m, data, batch_size), seed=seed).float() for m in models]
    for m in models:
        m.eval()
    predicted = []
    for i in range(0, data.train_x.shape[0], batch_size):
        x = data.augmenter.normalize(data.train_x[i : i + batch_size])
        predicted.append(sum(m(x) for m in models).argmax(1).cpu())
    for m in models:
        m.train()
    return torch.cat(predicted), sum(probs) / len(probs)


class PseudoSource:
    """``--meta-set pseudo``: two networks, each trained on the other's GMM split (a
    :class:`~famus.train.batches.BatchSource`).

    Per epoch (:meth:`begin_epoch`): each network's clean probabilities and the split quality.
    Warm-up epochs: plain cross-entropy on shuffled noisy-label batches. Then network ``k``'s batches
    are MixMatch batches (or, ``semi: false``, the noisy-label batches) with meta batches from the
    other network's pseudo-clean set, drawn every step (the random stream of the reference runs).
    ``train_loss`` averages the losses of every ``log_every``-th step, as pseudo mode always has.
    """

    nets, per_example, joint = 2, False, False

    def __init__(self, cfg: TrainConfig, data: RunData, gen: torch.Generator, batch: int, iters: int) -> None:
        self.opts, self.data, self.gen, self.batch, self.iters = cfg.pseudo(), data, gen, batch, iters
        self.loss_every, self.eval_batch_size, self.seed = cfg.log_every, cfg.eval_batch_size, cfg.seed
        self.meta_batch_size = cfg.meta_batch_size
        self.rng = np.random.default_rng(cfg.seed + 3)  # Beta draws for mixup
        self.semi = SemiLoss(max(batch // 2, 1))

    @property
    def method_options(self) -> dict[str, Any]:
        """With MixMatch batches (``semi``), the meta methods' loss and the prior penalty."""
        if not self.opts.semi:
            return {}
        return {"loss_fn": self.semi, "regularizer": prior_penalty if self.opts.prior_penalty else None}

    def begin_epoch(self, epoch: int, nets: list[Net], state: dict[str, Any] | None) -> dict[str, Any]:
        """``lambda_u``'s ramp-up; at a new epoch, each network's GMM split from its own losses against the
        noisy labels, and its quality (reporting only): ``{"probs": [(N,)] * 2, "record": {...}}``."""
        ramp = (epoch - self.opts.warmup_epochs) / max(self.opts.rampup_epochs, 1)
        self.semi.lambda_u = self.opts.lambda_u * min(1.0, ramp)
        if state:
            return state
        data = self.data
        probs = [gmm_clean_probability(eval_losses(n.model, data, self.eval_batch_size), seed=self.seed) for n in nets]
        record: dict[str, Any] = {}
        for k in range(2):
            meta_idx, _ = split_by_probability(probs[k], self.opts.meta_threshold, min_size=self.opts.min_meta)
            record.update({f"{key}_net{k + 1}": v for key, v in split_quality(meta_idx, data.corrupted).items()})
        for key in ("split_precision", "split_recall", "split_size"):
            record[key] = (record[f"{key}_net1"] + record[f"{key}_net2"]) / 2  # reporting only
        return {"probs": probs, "record": record}

    def plain(self, epoch: int) -> bool:
        return epoch < self.opts.warmup_epochs

    def criterion(self, epoch: int, net: Net) -> Criterion:
        """Cross-entropy; with MixMatch batches after the warm-up, DivideMix's ``Lx + lambda_u Lu`` (+ prior)."""
        if self.plain(epoch) or not self.opts.semi:
            return F.cross_entropy
        if not self.opts.prior_penalty:
            return self.semi.mean
        return lambda logits, t: self.semi.mean(logits, t) + prior_penalty(logits)

    def batches(self, epoch: int, k: int, nets: list[Net], pos: EpochPosition) -> Iterator[tuple[int, Batch]]:
        data = self.data
        if self.plain(epoch):
            for it, x, idx in shuffled(data, self.gen, pos, self.batch, self.iters):
                yield it, Batch(x, data.train_y[idx], idx, data.corrupted[idx], _no_meta)
            return
        prob_other = pos.epoch_state["probs"][1 - k]  # co-divide: the other network's split
        meta_idx, _ = split_by_probability(prob_other, self.opts.meta_threshold, min_size=self.opts.min_meta)
        meta_idx = meta_idx.to(data.train_x.device)
        meta_bs = min(self.meta_batch_size or self.batch, meta_idx.numel())
        if self.opts.semi:
            steps = self._mixmatch(nets, k, prob_other, pos.it)
        else:  # Algorithm 2 as written: every training example with its noisy label
            steps = ((it, x, data.train_y[idx], idx) for it, x, idx in
                     shuffled(data, self.gen, pos, self.batch, self.iters))
        for it, x, t, idx in steps:
            meta = _no_meta
            if nets[k].learner is not None:  # drawn every step, used where the step is a meta step
                mi = meta_idx[torch.randint(meta_idx.numel(), (meta_bs,), generator=self.gen).to(meta_idx.device)]
                drawn = (data.augmenter(data.train_x[mi], self.gen), data.train_y[mi])
                meta = lambda drawn=drawn: drawn  # noqa: E731
            yield it, Batch(x, t, None if self.opts.semi else idx, data.corrupted[idx], meta)

    def _mixmatch(self, nets: list[Net], k: int, prob_other: Tensor, start: int):
        """``(iteration, mixed x, soft targets (n, C), each row's own example)`` for MixMatch batches
        ``start..iters-1`` of network ``k``: half labeled examples from the other network's split, the
        rest unlabeled (see :func:`famus.train.semi.mix_batch`)."""
        data, gen, dev = self.data, self.gen, self.data.train_x.device
        half = self.semi.n_labeled
        labeled, unlabeled = split_by_probability(prob_other, self.opts.p_threshold, min_size=half)
        if unlabeled.numel() == 0:
            unlabeled = labeled
        labeled, unlabeled = labeled.to(dev), unlabeled.to(dev)
        w_all = prob_other.to(device=dev, dtype=torch.float32)  # clean probabilities: label-refinement weights
        for it in range(start, self.iters):
            li = labeled[torch.randint(labeled.numel(), (half,), generator=gen).to(dev)]
            ui = unlabeled[torch.randint(unlabeled.numel(), (self.batch - half,), generator=gen).to(dev)]
            lv = (data.augmenter(data.train_x[li], gen), data.augmenter(data.train_x[li], gen))
            uv = (data.augmenter(data.train_x[ui], gen), data.augmenter(data.train_x[ui], gen))
            mb = mix_batch(nets[k].model, nets[1 - k].model, lv, data.train_y[li], w_all[li], uv, data.num_classes,
                           self.opts.temperature, self.opts.alpha, self.rng, gen, refine=self.opts.refine)
            yield it, mb.x, mb.t, torch.cat([li, ui])

    def record(self, epoch: int, nets: list[Net], state: dict[str, Any]) -> dict[str, Any]:
        """The split quality, the phase and (MixMatch) ``lambda_u``."""
        if self.plain(epoch):
            return {**state["record"], "phase": "warmup"}
        out = {**state["record"], "phase": "meta" if nets[0].learner is not None else "semi"}
        if self.opts.semi:
            out["lambda_u"] = self.semi.lambda_u
        return out

    def final_scores(self, nets: list[Net], scores: ScoreTracker | None) -> tuple[Tensor, Tensor]:
        return final_scores([n.model for n in nets], self.data, self.eval_batch_size, self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"numpy_rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.rng.bit_generator.state = state["numpy_rng"]


def _no_meta() -> tuple[Tensor, Tensor]:
    raise RuntimeError("this step has no meta batch")  # a plain step never asks for one
