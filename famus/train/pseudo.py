"""``--meta-set pseudo``: no clean labels. Two co-trained networks pick each other's meta sets.

Supplement Algorithm 2 and the reference code: after a cross-entropy warm-up, each epoch
each network's per-example training losses (eval mode, normalized) are fit with a
2-component GMM; examples whose clean probability exceeds a threshold form the
pseudo-clean set, which is the *other* network's meta set and labeled set. The rest is
unlabeled data with MixMatch-style guessed labels (sharpening, Beta(alpha) mixup, a
lambda_u ramp-up). Training reads only the noisy labels; the clean labels serve only to
report the split's precision and recall.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from famus.data.pseudo_clean import gmm_clean_probability, split_by_probability, split_quality
from famus.train.checkpoint import save_checkpoint
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.metrics import MetricsWriter

PSEUDO_DEFAULTS = dict(warmup_epochs=1, p_threshold=0.5, meta_threshold=0.5, alpha=4.0, lambda_u=25.0,
                       rampup_epochs=16, temperature=0.5, min_meta=10)


class SemiLoss:
    """Per-example loss of a mixed batch: soft cross-entropy for the first ``n_labeled`` rows,
    ``lambda_u * MSE(softmax, target)`` for the unlabeled rest (MixMatch).

    Called as ``(logits (n, C), targets (n, C) float) -> (n,)``.
    """

    def __init__(self, n_labeled: int) -> None:
        self.n_labeled = n_labeled
        self.lambda_u = 0.0

    def __call__(self, logits: Tensor, targets: Tensor) -> Tensor:
        ce = -(targets * F.log_softmax(logits, dim=1)).sum(1)
        mse = ((F.softmax(logits, dim=1) - targets) ** 2).mean(1)
        labeled = torch.arange(logits.shape[0], device=logits.device) < self.n_labeled
        return torch.where(labeled, ce, self.lambda_u * mse)


def sharpen(p: Tensor, temperature: float) -> Tensor:
    """``p^(1/T)`` renormalized, ``(n, C) -> (n, C)``."""
    q = p ** (1.0 / temperature)
    return q / q.sum(1, keepdim=True)


@torch.no_grad()
def eval_losses(model: torch.nn.Module, data: RunData, batch_size: int) -> Tensor:
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
def _accuracy(models: list[torch.nn.Module], data: RunData, batch_size: int) -> float:
    for m in models:
        m.eval()
    correct = 0
    for i in range(0, data.test_x.shape[0], batch_size):
        x = data.augmenter.normalize(data.test_x[i : i + batch_size])
        logits = sum(m(x) for m in models) / len(models)
        correct += int((logits.argmax(1) == data.test_y[i : i + batch_size]).sum())
    for m in models:
        m.train()
    return correct / data.test_y.numel()


def train_pseudo(cfg: TrainConfig, data: RunData, run_dir: Path, device: torch.device, bar) -> dict[str, Any]:
    """Co-train two networks with pseudo-clean meta sets; returns the run summary.

    ``data.clean_y`` and ``data.corrupted`` are read only by :func:`split_quality` (reporting).
    """
    from famus.train.loop import build_components  # the same model/optimizer/learner as a clean run

    opts = {**PSEUDO_DEFAULTS, **cfg.pseudo_options}
    unknown = set(opts) - set(PSEUDO_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown pseudo_options {sorted(unknown)}; valid: {', '.join(sorted(PSEUDO_DEFAULTS))}")
    nets = []
    for k in range(2):
        model, opt, loss_fn, learner = build_components(cfg, data, device, seed_offset=100 * k)
        if learner is not None and learner.method.name == "mlc":
            raise ValueError("--meta-set pseudo trains on soft MixMatch targets; use --method mwnet or l2r")
        nets.append((model, opt, learner))
    n = data.train_x.shape[0]
    batch = min(cfg.batch_size, n)
    half = max(batch // 2, 1)
    semi = SemiLoss(half)
    for _model, _opt, learner in nets:
        if learner is not None:
            learner.method.loss_fn = semi
    iters = n // batch
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    rng = np.random.default_rng(cfg.seed + 3)  # Beta draws for mixup
    metrics = MetricsWriter(run_dir, csv_too=cfg.metrics_format == "csv", tensorboard=cfg.tensorboard)
    best, elapsed, step, last = 0.0, 0.0, 0, 0.0
    dev = data.train_x.device
    try:
        for epoch in range(cfg.epochs):
            lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr}
            t0 = time.perf_counter()
            loss_sum, steps = 0.0, 0
            # each network's GMM split, from its own losses against the noisy labels
            probs = [gmm_clean_probability(eval_losses(m, data, cfg.eval_batch_size), seed=cfg.seed)
                     for m, _, _ in nets]
            for k in range(2):
                meta_idx, _ = split_by_probability(probs[k], opts["meta_threshold"], min_size=opts["min_meta"])
                record.update({f"{key}_net{k + 1}": v for key, v in split_quality(meta_idx, data.corrupted).items()})
            for key in ("split_precision", "split_recall", "split_size"):
                record[key] = (record[f"{key}_net1"] + record[f"{key}_net2"]) / 2  # reporting only
            if epoch < opts["warmup_epochs"]:
                for model, opt, _ in nets:
                    for g in opt.param_groups:
                        g["lr"] = lr
                    perm = torch.randperm(n, generator=gen).to(dev)
                    for it in range(iters):
                        idx = perm[it * batch : (it + 1) * batch]
                        loss = F.cross_entropy(model(data.augmenter(data.train_x[idx], gen)), data.train_y[idx])
                        opt.zero_grad(set_to_none=True)
                        loss.backward()
                        opt.step()
                        loss_sum += float(loss.detach()) if it % cfg.log_every == 0 else 0.0
                        steps += 1
                        bar.update(1)
                record["phase"] = "warmup"
            else:
                semi.lambda_u = opts["lambda_u"] * min(1.0, (epoch - opts["warmup_epochs"]) / opts["rampup_epochs"])
                for k, (model, opt, learner) in enumerate(nets):
                    other_model = nets[1 - k][0]
                    # the other network's split: labeled set and meta set of this one (co-divide)
                    labeled, unlabeled = split_by_probability(probs[1 - k], opts["p_threshold"], min_size=half)
                    meta_idx, _ = split_by_probability(probs[1 - k], opts["meta_threshold"], min_size=opts["min_meta"])
                    if unlabeled.numel() == 0:
                        unlabeled = labeled
                    labeled, unlabeled, meta_idx = labeled.to(dev), unlabeled.to(dev), meta_idx.to(dev)
                    for g in opt.param_groups:
                        g["lr"] = lr
                    for _ in range(iters):
                        li = labeled[torch.randint(labeled.numel(), (half,), generator=gen).to(dev)]
                        ui = unlabeled[torch.randint(unlabeled.numel(), (batch - half,), generator=gen).to(dev)]
                        x_l = data.augmenter(data.train_x[li], gen)
                        t_l = F.one_hot(data.train_y[li], data.num_classes).to(x_l.dtype)
                        with torch.no_grad():
                            model.eval()
                            other_model.eval()
                            views = [data.augmenter(data.train_x[ui], gen) for _ in range(2)]
                            guess = sum(F.softmax(m(v), 1) for v in views for m in (model, other_model)) / 4
                            model.train()
                            other_model.train()
                        t_u = sharpen(guess, opts["temperature"])
                        x = torch.cat([x_l, views[0]])
                        t = torch.cat([t_l, t_u])
                        lam = float(rng.beta(opts["alpha"], opts["alpha"]))
                        lam = max(lam, 1 - lam)  # keep each mixed example closer to its own half
                        perm = torch.randperm(batch, generator=gen).to(dev)
                        x = lam * x + (1 - lam) * x[perm]
                        t = lam * t + (1 - lam) * t[perm]
                        mi = meta_idx[torch.randint(meta_idx.numel(), (min(cfg.meta_batch_size or batch,
                                                                               meta_idx.numel()),),
                                                    generator=gen).to(dev)]
                        stats = learner.step(x, t, data.augmenter(data.train_x[mi], gen), data.train_y[mi])
                        if steps % cfg.log_every == 0:
                            loss_sum += float(stats.train_loss)
                            if not math.isfinite(float(stats.train_loss)):
                                from famus.train.loop import TrainingError

                                raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}; "
                                                    f"stopped. The last good checkpoint is kept in {cfg.out}")
                        steps += 1
                        bar.update(1)
                record["phase"] = "meta"
                record["lambda_u"] = semi.lambda_u
            epoch_time = time.perf_counter() - t0
            step += steps
            elapsed += epoch_time
            acc1 = _accuracy([nets[0][0]], data, cfg.eval_batch_size)
            acc2 = _accuracy([nets[1][0]], data, cfg.eval_batch_size)
            last = _accuracy([nets[0][0], nets[1][0]], data, cfg.eval_batch_size)
            best = max(best, last)
            logged = max(1, (steps + cfg.log_every - 1) // cfg.log_every)
            record.update(step=step, test_acc=last, best_test_acc=best, test_acc_net1=acc1, test_acc_net2=acc2,
                          train_loss=loss_sum / logged, time_per_iter_s=epoch_time / max(steps, 1),
                          wall_time_s=elapsed)
            save_checkpoint(run_dir / "checkpoint.pt", {
                "epoch": epoch + 1, "step": step, "best_test_acc": best, "config": cfg.to_dict(),
                "models": [m.state_dict() for m, _, _ in nets], "optimizers": [o.state_dict() for _, o, _ in nets],
                "learners": [lr_.state_dict() if lr_ else None for _, _, lr_ in nets]})
            metrics.write(record)
            bar.set_postfix(test_acc=f"{last:.4f}", best=f"{best:.4f}")
    finally:
        metrics.close()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    its = [r["time_per_iter_s"] for r in rows]
    return {"run_dir": str(run_dir), "best_test_acc": best, "last_test_acc": last,
            "time_per_iter_s": sum(its) / len(its) if its else math.nan, "epochs": len(rows)}
