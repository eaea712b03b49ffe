"""The health check's probe: trusted examples the meta model never trains on, weighed by the method's current
weighting with their trusted label and with wrong ones, and compared with training examples
(:mod:`famus.train.health` has what it measures and why).

It changes nothing in training: its own generator, the model run on copies of its buffers with the global
random state restored, and L2R's weights through :meth:`famus.MetaLearner.meta_gradient` (no state change).
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from famus.meta.inputs import forward
from famus.meta.methods import L2R, MWNet
from famus.meta.methods.base import per_example_losses
from famus.train.quality import batch_auroc

PROBE_TRAIN = 500  # training examples compared with the probe


def auc(pos: Tensor, neg: Tensor) -> float | None:
    """``P(pos > neg) + P(tie) / 2`` over all pairs (None when either is empty)."""
    if pos.numel() == 0 or neg.numel() == 0:
        return None
    w = torch.cat([pos, neg]).double().cpu()
    lab = torch.cat([torch.ones(pos.numel(), dtype=torch.bool), torch.zeros(neg.numel(), dtype=torch.bool)])
    return round(float(batch_auroc(w, lab)), 6)


def null_se(n1: int, n2: int) -> float:
    """Standard error of an AUC of ``n1`` against ``n2`` scores when there is no separation."""
    return math.sqrt((n1 + n2 + 1) / (12.0 * n1 * n2))


@dataclass
class Probe:
    """The label-free probe: trusted examples with their label and a wrong one, and a fixed training sample.

    Built with its own generator: the run's random streams never see it.

    Attributes:
        x, y: the validation examples ``(P, ...)`` (stored form) and their trusted labels ``(P,)``;
        y_wrong: ``(P,)`` a wrong label each (uniform over the other classes);
        train_idx: ``(S,)`` the training sample; xm, ym: a fixed meta batch (L2R's meta gradient).
    """

    x: Tensor
    y: Tensor
    y_wrong: Tensor
    train_idx: Tensor
    xm: Tensor
    ym: Tensor

    @classmethod
    def build(cls, data, seed: int, meta_bs: int) -> Probe | None:
        """From ``data`` (:class:`~famus.train.data.RunData`); ``None`` when it has no validation set."""
        if not data.has_val or data.num_classes < 2:
            return None
        gen = torch.Generator().manual_seed(seed + 7919)  # a stream of its own
        y = data.val_y
        shift = torch.randint(1, data.num_classes, (y.numel(),), generator=gen).to(y.device)
        n = data.train_x.shape[0]
        idx = torch.randperm(n, generator=gen)[: min(n, PROBE_TRAIN)].to(data.train_x.device)
        midx = torch.randperm(data.meta_x.shape[0], generator=gen)[: max(1, meta_bs)].to(data.train_x.device)
        return cls(data.val_x, y, (y + shift) % data.num_classes, idx, data.meta_x[midx], data.meta_y[midx])


def _chunks(n: int, size: int):
    for i in range(0, n, size):
        yield slice(i, min(i + size, n))


@contextmanager
def _untouched(model: torch.nn.Module):
    """Train mode for the forward, then the model's mode and the global random state as they were."""
    was = model.training
    devices = [p.device.index or 0 for p in model.parameters() if p.is_cuda][:1]
    with torch.random.fork_rng(devices=devices):
        try:
            model.train()
            yield
        finally:
            model.train(was)


def _mwnet_weights(learner, x: Tensor, y: Tensor, norm) -> Tensor:
    """``V(loss)`` ``(n,)`` of stored rows ``x`` (normalized here), train-mode forward on copied buffers."""
    model, method = learner.model, learner.method
    params = dict(model.named_parameters())
    p = next(method.meta_model.parameters())
    state = {**params, **{k: b.clone() for k, b in model.named_buffers()}}  # BN writes into the copies only
    logits = forward(model, state, norm(x))
    losses = per_example_losses(method.loss_fn, logits, y)
    return method.meta_model(losses.detach().to(p.dtype).unsqueeze(1)).reshape(-1).double()


def _l2r_weights(learner, x: Tensor, y: Tensor, norm, xm: Tensor, ym: Tensor) -> Tensor:
    """``max(-dL_c/d eps, 0)`` ``(n,)`` of stored rows ``x``, through the run's engine (changes no state)."""
    g = learner.meta_gradient(norm(x), y, xm, ym)["eps"]
    return torch.clamp(-g.detach().double(), min=0)


def probe_weights(learner, x: Tensor, y: Tensor, norm, xm: Tensor, ym: Tensor, size: int) -> Tensor | None:
    """The method's current (unnormalized) weights of stored rows ``x`` ``(n, ...)`` with labels ``y`` ``(n,)``,
    in chunks of ``size`` (the batch size: BatchNorm sees batches like training's); ``None`` for other methods.

    ``norm``: stored rows -> model inputs; ``xm, ym``: a normalized meta batch (L2R).
    """
    if not isinstance(learner.method, (MWNet, L2R)):
        return None
    out = []
    for s in _chunks(x.shape[0], size):
        if isinstance(learner.method, MWNet):
            with _untouched(learner.model), torch.no_grad():
                out.append(_mwnet_weights(learner, x[s], y[s], norm))
        else:
            out.append(_l2r_weights(learner, x[s], y[s], norm, xm, ym))
    return torch.cat(out)


@torch.no_grad()
def runner_up(learner, x: Tensor, y: Tensor, norm, size: int) -> Tensor:
    """``(n,)`` the model's likeliest class other than ``y`` for stored rows ``x``: the most plausible wrong label
    (train-mode forward on copied buffers, as the weights are computed)."""
    model = learner.model
    params = dict(model.named_parameters())
    out = []
    with _untouched(model):
        for s in _chunks(x.shape[0], size):
            state = {**params, **{k: b.clone() for k, b in model.named_buffers()}}
            logits = forward(model, state, norm(x[s])).float()
            logits[torch.arange(logits.shape[0], device=logits.device), y[s]] = -torch.inf
            out.append(logits.argmax(1))
    return torch.cat(out)


def run_probe(probe: Probe, learner, data, size: int, autocast) -> dict[str, Any]:
    """The probe's AUCs at the current state (see the module docstring); ``{}`` for methods without weights.

    ``size``: chunk size (the batch size); ``autocast``: the run's precision context (a callable).
    """
    if not isinstance(learner.method, (MWNet, L2R)):
        return {}
    norm = data.augmenter.normalize
    xm = norm(probe.xm)
    with autocast():
        wt = probe_weights(learner, data.train_x[probe.train_idx], data.train_y[probe.train_idx], norm, xm,
                           probe.ym, size)
        wv = probe_weights(learner, probe.x, probe.y, norm, xm, probe.ym, size)
        ww = probe_weights(learner, probe.x, probe.y_wrong, norm, xm, probe.ym, size)
        wh = probe_weights(learner, probe.x, runner_up(learner, probe.x, probe.y, norm, size), norm, xm, probe.ym, size)
    s, p = wt.numel(), wv.numel()
    out = {"probe_flip_auc": auc(wv, ww), "probe_hard_auc": auc(wv, wh), "probe_vs_train": auc(wv, wt),
           "probe_se": round(null_se(p, p), 6), "probe_train_se": round(null_se(p, s), 6), "probe_n": p}
    if data.noise_known:  # the truth on the same sample, for docs/health-check.md
        bad = data.corrupted[probe.train_idx].cpu()
        out["sample_auroc"] = auc(wt.cpu()[~bad], wt.cpu()[bad])
    return out
