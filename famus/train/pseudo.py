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

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from famus.data.pseudo_clean import gmm_clean_probability, split_by_probability, split_quality
from famus.train.checkpoint import CHECKPOINT, CheckpointSchedule, CorruptFileError, save_checkpoint
from famus.train.config import TrainConfig
from famus.train.data import RunData
from famus.train.metrics import MetricsWriter
from famus.train.scores import finish_scores, score_source
from famus.train.selection import ModelSelection
from famus.train.semi import SemiLoss, mix_batch, prior_penalty
from famus.train.summary import run_summary

PSEUDO_DEFAULTS = dict(warmup_epochs=1, p_threshold=0.5, meta_threshold=0.5, alpha=4.0, lambda_u=25.0,
                       rampup_epochs=16, temperature=0.5, min_meta=10, refine=True, prior_penalty=True,
                       semi=True)


def pseudo_options(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` over :data:`PSEUDO_DEFAULTS`, checked: an unknown key or a bad value is a ``ValueError``."""
    unknown = set(options) - set(PSEUDO_DEFAULTS)
    if unknown:
        raise ValueError(f"unknown pseudo_options {sorted(unknown)}; valid: {', '.join(sorted(PSEUDO_DEFAULTS))}")
    opts = {**PSEUDO_DEFAULTS, **options}
    for key in ("p_threshold", "meta_threshold"):
        if not 0.0 <= float(opts[key]) <= 1.0:
            raise ValueError(f"pseudo_options {key} must be in [0, 1], got {opts[key]}")
    for key in ("alpha", "temperature"):
        if not float(opts[key]) > 0:
            raise ValueError(f"pseudo_options {key} must be > 0, got {opts[key]}")
    for key in ("warmup_epochs", "rampup_epochs", "lambda_u"):
        if float(opts[key]) < 0:
            raise ValueError(f"pseudo_options {key} must be >= 0, got {opts[key]}")
    if int(opts["min_meta"]) < 1:
        raise ValueError(f"pseudo_options min_meta must be >= 1, got {opts['min_meta']}")
    return opts


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
def _accuracies(models: list[torch.nn.Module], data: RunData, batch_size: int, split: str = "test") -> list:
    """Accuracy of each model on the ``test`` (or ``val``) split, then of their ensemble (mean logits); one
    pass per model. ``None`` for each when the split is empty."""
    xs, ys = (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)
    if ys is None or ys.numel() == 0:
        return [None] * (len(models) + 1)
    for m in models:
        m.eval()
    correct = torch.zeros(len(models) + 1, dtype=torch.long)
    for i in range(0, xs.shape[0], batch_size):
        x = data.augmenter.normalize(xs[i : i + batch_size])
        y = ys[i : i + batch_size]
        logits = [m(x) for m in models]
        logits.append(sum(logits) / len(models))
        correct += torch.stack([(z.argmax(1) == y).sum().cpu() for z in logits])
    for m in models:
        m.train()
    return (correct.double() / ys.numel()).tolist()


@torch.no_grad()
def _final_scores(nets, data: RunData, batch_size: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(predicted (N,), clean score (N,))``: the ensemble's (mean logits) prediction and the mean of the two
    networks' GMM clean probabilities, from the final models' losses against the given labels."""
    probs = [torch.as_tensor(gmm_clean_probability(eval_losses(m, data, batch_size), seed=seed)).float()
             for m, _, _ in nets]
    for m, _, _ in nets:
        m.eval()
    predicted = []
    for i in range(0, data.train_x.shape[0], batch_size):
        x = data.augmenter.normalize(data.train_x[i : i + batch_size])
        predicted.append(sum(m(x) for m, _, _ in nets).argmax(1).cpu())
    for m, _, _ in nets:
        m.train()
    return torch.cat(predicted), sum(probs) / len(probs)


def _set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for g in opt.param_groups:
        g["lr"] = lr


@dataclass
class PseudoPosition:
    """How far a pseudo-mode epoch got (a mid-epoch checkpoint's ``position``): the epoch's GMM
    splits and split-quality record, which network trains (``k``), its finished iterations, its
    batch order (shuffled passes) and the summed logged losses."""

    probs: list[torch.Tensor]
    record: dict[str, Any]
    k: int = 0
    it: int = 0
    perm: torch.Tensor | None = None
    loss_sums: list[float] = field(default_factory=lambda: [0.0, 0.0])  # per network
    time_s: float = 0.0  # training time of the epoch so far

    def next_network(self, k: int) -> None:
        """Start network ``k``'s pass (keeps the position if it is already there)."""
        if k != self.k:
            self.k, self.it, self.perm = k, 0, None

    def state_dict(self) -> dict[str, Any]:
        return {"probs": [p.cpu() for p in self.probs], "record": dict(self.record), "k": self.k, "iteration": self.it,
                "perm": None if self.perm is None else self.perm.cpu(), "loss_sums": list(self.loss_sums),
                "time_s": self.time_s}

    @classmethod
    def from_state(cls, state: dict[str, Any], device: torch.device | str) -> PseudoPosition:
        perm = state["perm"]
        return cls([p.cpu() for p in state["probs"]], dict(state["record"]), int(state["k"]), int(state["iteration"]),
                   None if perm is None else perm.to(device), [float(v) for v in state["loss_sums"]],
                   float(state["time_s"]))


# after each step: hook(position, loss) (mid-epoch checkpoints)
StepHook = Callable[[PseudoPosition, torch.Tensor], None]


def _shuffled_batches(data: RunData, gen, iters: int, batch: int, pos: PseudoPosition):
    """Yield ``(iteration, x augmented, noisy labels)`` for the rest of one shuffled pass over the training
    set, from ``pos.it``; the batch order is drawn at the first batch and kept in ``pos.perm``."""
    if pos.perm is None:
        pos.perm = torch.randperm(data.train_x.shape[0], generator=gen).to(data.train_x.device)
    for it in range(pos.it, iters):
        idx = pos.perm[it * batch : (it + 1) * batch]
        yield it, data.augmenter(data.train_x[idx], gen), data.train_y[idx]


def _after_step(pos: PseudoPosition, it: int, loss: torch.Tensor, log_every: int, bar, hook: StepHook | None) -> None:
    """Log every ``log_every``-th loss into ``pos``, advance it, and call the hook."""
    if it % log_every == 0:
        pos.loss_sums[pos.k] += float(loss.detach())
    pos.it = it + 1
    bar.update(1)
    if hook is not None:
        hook(pos, loss)


def _warmup_epoch(model, opt, data: RunData, gen, iters: int, batch: int, log_every: int, bar, pos: PseudoPosition,
                  hook: StepHook | None = None) -> None:
    """One epoch (or its rest) of cross-entropy on the noisy labels; logged losses go to ``pos.loss_sums``."""
    for it, x, y in _shuffled_batches(data, gen, iters, batch, pos):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        _after_step(pos, it, loss, log_every, bar, hook)


def _mixmatch_batches(nets, k: int, prob_other: torch.Tensor, half: int, opts: dict, data: RunData, gen, rng,
                      iters: int, batch: int, start: int = 0):
    """Yield ``(iteration, mixed x, soft targets)`` for MixMatch batches ``start..iters-1`` of network
    ``k``: ``half`` labeled examples from the other network's split, the rest unlabeled (see
    :func:`famus.train.semi.mix_batch`)."""
    model, other, dev = nets[k][0], nets[1 - k][0], data.train_x.device
    labeled, unlabeled = split_by_probability(prob_other, opts["p_threshold"], min_size=half)
    if unlabeled.numel() == 0:
        unlabeled = labeled
    labeled, unlabeled = labeled.to(dev), unlabeled.to(dev)
    w_all = prob_other.to(device=dev, dtype=torch.float32)  # clean probabilities: label-refinement weights
    for it in range(start, iters):
        li = labeled[torch.randint(labeled.numel(), (half,), generator=gen).to(dev)]
        ui = unlabeled[torch.randint(unlabeled.numel(), (batch - half,), generator=gen).to(dev)]
        lv = (data.augmenter(data.train_x[li], gen), data.augmenter(data.train_x[li], gen))
        uv = (data.augmenter(data.train_x[ui], gen), data.augmenter(data.train_x[ui], gen))
        mb = mix_batch(model, other, lv, data.train_y[li], w_all[li], uv, data.num_classes,
                       opts["temperature"], opts["alpha"], rng, gen, refine=opts["refine"])
        yield it, mb.x, mb.t


def _semi_epoch(nets, k: int, prob_other: torch.Tensor, semi: SemiLoss, opts: dict, cfg: TrainConfig,
                data: RunData, gen, rng, iters: int, batch: int, epoch: int, bar, pos: PseudoPosition,
                hook: StepHook | None = None) -> None:
    """One epoch (or its rest) of network ``k`` on the split of the other network; logged losses go to
    ``pos.loss_sums``."""
    from famus.train.loop import TrainingError

    model, opt, learner = nets[k]
    dev = data.train_x.device
    # the other network's split: meta set (and, with MixMatch batches, labeled set) of this one (co-divide)
    meta_idx, _ = split_by_probability(prob_other, opts["meta_threshold"], min_size=opts["min_meta"])
    meta_idx = meta_idx.to(dev)
    meta_bs = min(cfg.meta_batch_size or batch, meta_idx.numel())
    if opts["semi"]:
        batches = _mixmatch_batches(nets, k, prob_other, semi.n_labeled, opts, data, gen, rng, iters, batch, pos.it)
    else:  # Algorithm 2 as written: every training example with its noisy label, plain CE
        batches = _shuffled_batches(data, gen, iters, batch, pos)
    for it, x, t in batches:
        if learner is None:  # plain DivideMix: Lx + lambda_u * Lu (+ prior penalty); or CE on all examples
            logits = model(x)
            if not opts["semi"]:
                loss = F.cross_entropy(logits, t)
            else:
                loss = semi.mean(logits, t)
                if opts["prior_penalty"]:
                    loss = loss + prior_penalty(logits)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        else:
            mi = meta_idx[torch.randint(meta_idx.numel(), (meta_bs,), generator=gen).to(dev)]
            loss = learner.step(x, t, data.augmenter(data.train_x[mi], gen), data.train_y[mi]).train_loss
        if it % cfg.log_every == 0 and not math.isfinite(float(loss.detach())):
            raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}; stopped. "
                                f"The last good checkpoint is kept in {cfg.out}")
        _after_step(pos, it, loss, cfg.log_every, bar, hook)


def _split_position(nets, data: RunData, cfg: TrainConfig, opts: dict[str, Any]) -> PseudoPosition:
    """An epoch's start: each network's GMM split from its own losses against the noisy labels, and its
    quality (reporting only)."""
    probs = [gmm_clean_probability(eval_losses(m, data, cfg.eval_batch_size), seed=cfg.seed) for m, _, _ in nets]
    record: dict[str, Any] = {}
    for k in range(2):
        meta_idx, _ = split_by_probability(probs[k], opts["meta_threshold"], min_size=opts["min_meta"])
        record.update({f"{key}_net{k + 1}": v for key, v in split_quality(meta_idx, data.corrupted).items()})
    for key in ("split_precision", "split_recall", "split_size"):
        record[key] = (record[f"{key}_net1"] + record[f"{key}_net2"]) / 2  # reporting only
    return PseudoPosition(probs, record)


def _restore(ck: dict[str, Any], path: Path, nets, gen, rng, data: RunData, iters: int):
    """Load ``ck`` into the networks and random streams; returns ``(epoch, step, best, elapsed, last, position)``.

    Raises:
        CorruptFileError: the checkpoint does not fit the run (missing keys, wrong shapes).
    """
    try:
        for (model, opt, learner), ms, os_, ls in zip(nets, ck["models"], ck["optimizers"], ck["learners"],
                                                       strict=True):
            model.load_state_dict(ms)
            opt.load_state_dict(os_)
            if learner is not None:
                learner.load_state_dict(ls)
        gen.set_state(ck["generator"])
        rng.bit_generator.state = ck["numpy_rng"]
        torch.random.set_rng_state(ck["torch_rng"])
        position = None
        if ck.get("position") is not None:
            position = PseudoPosition.from_state(ck["position"], data.train_x.device)
            n = data.train_x.shape[0]
            if [p.shape for p in position.probs] != [(n,), (n,)] or position.k not in (0, 1) or not (
                    0 <= position.it <= iters) or (position.perm is not None and position.perm.shape != (n,)):
                raise ValueError("its mid-epoch position does not fit the training set")
        best, last = ck["best_test_acc"], ck.get("last_test_acc")
        return (int(ck["epoch"]), int(ck["step"]), None if best is None else float(best), float(ck["elapsed_s"]),
                None if last is None else float(last), position)
    except (AttributeError, IndexError, KeyError, RuntimeError, TypeError, ValueError) as e:
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise CorruptFileError(f"{path} does not fit this run ({type(e).__name__}: {first})") from None


def train_pseudo(cfg: TrainConfig, data: RunData, run_dir: Path, device: torch.device, bar,
                 ck: dict[str, Any] | None = None) -> dict[str, Any]:
    """Co-train two networks with pseudo-clean meta sets; returns the run summary.

    ``data.clean_y`` and ``data.corrupted`` are read only by :func:`split_quality` (reporting).
    With a checkpoint ``ck`` (``--resume``, checked by :func:`famus.train.resume.resume_checkpoint`)
    the run continues from it, mid-epoch too, as if never interrupted. Checkpoints: each epoch's
    end, and every ``checkpoint_every`` steps (both networks' steps count) or after 10 minutes.
    """
    from famus.train.loop import TrainingError, build_components, start_run_folder  # the same parts as a clean run

    opts = pseudo_options(cfg.pseudo_options)
    nets = []
    for k in range(2):
        model, opt, _loss_fn, learner = build_components(cfg, data, device, seed_offset=100 * k)
        nets.append((model, opt, learner))
    n = data.train_x.shape[0]
    batch = min(cfg.batch_size, n)
    semi = SemiLoss(max(batch // 2, 1))
    for _model, _opt, learner in nets:
        if learner is not None and opts["semi"]:
            learner.method.loss_fn = semi
            learner.method.regularizer = prior_penalty if opts["prior_penalty"] else None
    iters = n // batch
    gen = torch.Generator().manual_seed(cfg.seed + 1)  # batches, augmentation, mixing permutations
    rng = np.random.default_rng(cfg.seed + 3)  # Beta draws for mixup
    start_epoch, step, best, elapsed, last, position = 0, 0, None, 0.0, 0.0, None
    selection = ModelSelection(data.has_val)  # on the ensemble's validation accuracy; never on test labels
    if ck is not None:
        start_epoch, step, best, elapsed, last, position = _restore(ck, run_dir / CHECKPOINT, nets, gen, rng, data,
                                                                    iters)
        step -= position.k * iters + position.it if position is not None else 0  # steps before this epoch
        selection.load_state_dict(ck.get("selection"))
        bar.n = bar.initial = int(ck["step"])  # the progress bar resumes where the run stopped
        bar.refresh()
    start_run_folder(cfg, run_dir, data, device, ck is not None, int(ck["step"]) if ck is not None else 0)
    metrics = MetricsWriter(run_dir, csv_too=cfg.metrics_format == "csv", tensorboard=cfg.tensorboard,
                            keep_until=start_epoch if cfg.resume else None)
    schedule = CheckpointSchedule(cfg.checkpoint_every)

    def save(epoch_done: int, steps_done: int, pos: PseudoPosition | None = None) -> None:
        save_checkpoint(run_dir / CHECKPOINT, {
            "epoch": epoch_done, "step": steps_done, "position": pos.state_dict() if pos is not None else None,
            "best_test_acc": best, "last_test_acc": last, "elapsed_s": elapsed,
            "config": cfg.to_dict(), "models": [m.state_dict() for m, _, _ in nets],
            "optimizers": [o.state_dict() for _, o, _ in nets],
            "learners": [lr_.state_dict() if lr_ else None for _, _, lr_ in nets],
            "generator": gen.get_state(), "numpy_rng": rng.bit_generator.state,
            "torch_rng": torch.random.get_rng_state(), "selection": selection.state_dict()})
        schedule.written()

    def hook(pos: PseudoPosition, loss: torch.Tensor) -> None:
        done = step + pos.k * iters + pos.it
        if (pos.k, pos.it) == (1, iters) or not schedule.due(done):
            return  # the epoch's end has its own checkpoint
        if not math.isfinite(float(loss.detach())):
            raise TrainingError(f"the training loss became NaN or inf at epoch {epoch + 1}; stopped. "
                                f"The last good checkpoint is kept in {cfg.out}")
        nonlocal t0
        t_save = time.perf_counter()
        pos.time_s = t_save - t0
        save(epoch, done, pos)
        t0 += time.perf_counter() - t_save  # saving is not training time

    try:
        for epoch in range(start_epoch, cfg.epochs):
            lr = cfg.lr * cfg.gamma ** sum(epoch >= m for m in cfg.milestones)
            t0 = time.perf_counter()
            pos = position if position is not None and epoch == start_epoch else _split_position(nets, data, cfg, opts)
            t0 -= pos.time_s
            for _, opt, _ in nets:
                _set_lr(opt, lr)
            record: dict[str, Any] = {"epoch": epoch + 1, "lr": lr, **pos.record}
            if epoch < opts["warmup_epochs"]:
                for k in range(pos.k, 2):
                    pos.next_network(k)
                    _warmup_epoch(nets[k][0], nets[k][1], data, gen, iters, batch, cfg.log_every, bar, pos, hook)
                record["phase"] = "warmup"
            else:
                ramp = (epoch - opts["warmup_epochs"]) / max(opts["rampup_epochs"], 1)
                semi.lambda_u = opts["lambda_u"] * min(1.0, ramp)
                for k in range(pos.k, 2):
                    pos.next_network(k)
                    _semi_epoch(nets, k, pos.probs[1 - k], semi, opts, cfg, data, gen, rng, iters, batch, epoch, bar,
                                pos, hook)
                record.update(phase="meta" if nets[0][2] is not None else "semi")
                if opts["semi"]:
                    record["lambda_u"] = semi.lambda_u
            steps = 2 * iters
            epoch_time = time.perf_counter() - t0
            step += steps
            elapsed += epoch_time
            acc1, acc2, last = _accuracies([nets[0][0], nets[1][0]], data, cfg.eval_batch_size)
            val = _accuracies([nets[0][0], nets[1][0]], data, cfg.eval_batch_size, "val")[-1]
            best = last if best is None else best if last is None else max(best, last)
            selection.update(epoch + 1, val, last)
            logged = max(1, 2 * ((iters + cfg.log_every - 1) // cfg.log_every))
            record.update(step=step, test_acc=last, val_acc=val, **selection.record(), best_test_acc=best,
                          test_acc_net1=acc1, test_acc_net2=acc2, train_loss=sum(pos.loss_sums) / logged,
                          time_per_iter_s=epoch_time / max(steps, 1), wall_time_s=elapsed)
            metrics.write(record)  # before the checkpoint: a kill between the two redoes the epoch and its record
            save(epoch + 1, step)
            bar.set_postfix({k: f"{v:.4f}" for k, v in (("test_acc", last), ("val_acc", val)) if v is not None})
    finally:
        metrics.close()
    summary = run_summary(run_dir, selection, data)
    predicted, score = _final_scores(nets, data, cfg.eval_batch_size, cfg.seed)
    summary.update(finish_scores(run_dir, data, predicted, score, score_source(cfg.method, "pseudo")))
    return summary
