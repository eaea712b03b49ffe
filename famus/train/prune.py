"""``--method prune``: find the label issues, prune them, retrain ERM on the rest, in one command.

The recipe of confident learning (Northcutt, Jiang & Chuang, "Confident Learning: Estimating Uncertainty
in Dataset Labels", JAIR 2021; the cleanlab package), with options
(:class:`famus.train.methods.PruneOptions`):

1. **Rank.** ``ranker: confident`` (the default) or ``cleanlab``: out-of-fold predicted probabilities,
   cleanlab's recipe: ``folds`` K (cleanlab's default 5) stratified folds of the training set by the
   given labels (shuffled, seeded by the run's seed); fold k's model is an ERM run of the run's config
   (``fold_epochs``, default the run's epochs) on the other folds, in ``OUT/rank/fold<k>``, and its last
   epoch's model predicts fold k (eval mode, no augmentation). Then ``confident``: famus's confident
   learning (:func:`confident_issues`, the off-diagonal of the paper's confident joint); ``cleanlab``:
   ``cleanlab.filter.find_label_issues(labels, pred_probs)`` with cleanlab's defaults (its
   ``prune_by_noise_rate``; ``pip install cleanlab``, an optional dependency). ``ranker: famus``: a
   ``meta_method`` run (default MW-Net, the run's ``--meta-grad``; it needs the trusted set) on the
   whole training set, in ``OUT/rank/famus``; its clean scores (each example's meta weight relative to
   the uniform one, a running mean; :mod:`famus.train.scores`) below ``threshold`` are flagged.
2. **Prune.** ``pruned.csv`` lists the flagged examples (``example_scores.csv``'s columns); ``prune.pt``
   holds the ranking (weights-only loadable).
3. **Retrain.** ERM with the run's config on the training set minus the flagged examples (the trusted,
   validation and test sets unchanged), in ``OUT`` itself: its metrics, checkpoints, ``model_best.pt``
   and accuracies are the run's.

Every phase is the one training loop (:func:`famus.train.loop.setup`) on a subset of the training set.
The run's ``example_scores.csv`` is the ranking over the whole training set (out-of-fold probability of
the given label, or the meta weight); ``summary.json``'s ``prune`` holds the ranker, the flagged count,
their precision and recall against injected noise (reporting only) and the ranking's cost
(``rank_time_s``: its training time; ``rank_steps``). Cost: K folds of (K - 1)/K of the training set,
(K - 1) x ERM, plus the retrain on what is kept (``famus``: a meta run plus the retrain).

Resume: ``--resume`` continues the phase under way. A rank run resumes from its checkpoint (exactly, as
any run) and a finished one is reused; once ``prune.pt`` exists the ranking is fixed (a resume with more
epochs trains the retrain longer, not the ranking again) and the retrain resumes from ``OUT/checkpoint.pt``.
"""

from __future__ import annotations

import logging
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold

from famus.issues import write_scores
from famus.train.config import TrainConfig
from famus.train.data import RunData, describe_noise, prepare_data
from famus.train.loop import _check_distributed, check_names, setup
from famus.train.methods import TRAINING_METHODS, PruneOptions
from famus.train.metrics import read_metrics
from famus.train.resume import CONFIG_FILE, resume_checkpoint
from famus.train.run_folder import claim_out_dir, start_run_folder
from famus.train.scores import finish_scores, predict
from famus.train.step import make_precision
from famus.train.summary import write_summary
from famus.verified import load_verified, save_verified

log = logging.getLogger(__name__)

RANK_DIR, PRUNE_FILE, PRUNED_FILE = "rank", "prune.pt", "pruned.csv"


def confident_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """Confident learning's label issues: the off-diagonal of the confident joint (Northcutt et al. 2021, Eq. 1).

    Per class j the threshold ``t_j`` is the mean self-confidence ``p_j(x)`` of the examples labelled j.
    An example's likely true class is its most probable class among those whose probability reaches their
    threshold (``p_j(x) >= t_j``, with cleanlab's 1e-6 tolerance); it is an issue when that class exists and
    differs from the given label. As cleanlab does, an example whose given label is its most probable
    class is never flagged.

    Args:
        labels: ``(N,)`` int given labels in ``[0, C)``; probs: ``(N, C)`` out-of-fold predicted probabilities.

    Returns:
        ``(N,)`` bool, True for a label issue.
    """
    labels = np.asarray(labels, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    n, c = probs.shape
    counts = np.bincount(labels, minlength=c)
    self_conf = np.bincount(labels, weights=probs[np.arange(n), labels], minlength=c)
    thresholds = np.where(counts > 0, self_conf / np.maximum(counts, 1), np.inf)  # no examples: never confident
    confident = probs >= thresholds - 1e-6
    guess = np.where(confident, probs, -np.inf).argmax(1)
    return confident.any(1) & (guess != labels) & (probs.argmax(1) != labels)


def cleanlab_issues(labels: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """``cleanlab.filter.find_label_issues(labels, pred_probs)`` with cleanlab's defaults: ``(N,)`` bool."""
    from cleanlab.filter import find_label_issues

    return np.asarray(find_label_issues(np.asarray(labels), np.asarray(probs)), dtype=bool)


def fold_rows(labels: np.ndarray, folds: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """``[(training rows, held-out rows)] * folds``: stratified by the given labels, shuffled with ``seed``."""
    try:
        splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % 2**32)
        return [(tr, held) for tr, held in splitter.split(np.zeros(len(labels)), labels)]
    except ValueError as e:
        raise ValueError(f"method_options folds {folds}: {e}") from None


@torch.no_grad()
def probabilities(model: torch.nn.Module, data: RunData, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``(len(rows), C)`` float64 softmax probabilities of training rows ``rows``, eval mode, no augmentation."""
    was = model.training
    model.eval()
    idx = torch.as_tensor(rows, dtype=torch.int64, device=data.train_x.device)
    out = [F.softmax(model(data.augmenter.normalize(data.train_x[idx[i : i + batch_size]])).double(), 1).cpu()
           for i in range(0, idx.numel(), batch_size)]
    model.train(was)
    return torch.cat(out).numpy()


def _phase(cfg: TrainConfig, device: torch.device, data: RunData, name: str, rows: np.ndarray | None, **changes):
    """Run (or resume, or reuse) the rank run ``OUT/rank/<name>``: the loop on training ``rows``. Returns the
    run (its networks: the last epoch's) and its training time and steps."""
    out = Path(cfg.out) / RANK_DIR / name
    pcfg = replace(cfg, out=str(out), resume=out.exists(), **changes).validate()
    train_rows = None if rows is None else torch.as_tensor(rows, dtype=torch.int64)
    with ExitStack() as hold:
        run, ck = setup(pcfg, device, hold, data, train_rows)
        run.train(ck)
    last = read_metrics(out)[-1]
    return run, float(last["wall_time_s"]), int(last["step"])


def rank(cfg: TrainConfig, device: torch.device, data: RunData, opts: PruneOptions) -> dict[str, Any]:
    """Phase 1 (see the module): ``{"flagged" (N,) bool, "score" (N,) float32, "predicted" (N,) int64,
    "train_index" (N,), "ranker", "source", "rank_time_s", "rank_steps"}`` (tensors: ``prune.pt``)."""
    labels = data.train_y.cpu().numpy()
    epochs = opts.fold_epochs or cfg.epochs
    if opts.ranker == "famus":
        run, time_s, steps = _phase(cfg, device, data, "famus", None, method=opts.meta_method, method_options={},
                                    epochs=epochs)
        score = run.scores.score.cpu().float()
        predicted, _ = predict(run.nets[0].model, data.train_x, data.train_y, data.augmenter, cfg.eval_batch_size)
        flagged, source = (score < opts.threshold).numpy(), "meta_weight"  # never visited (NaN): kept
    else:
        probs = np.zeros((len(labels), data.num_classes))
        time_s, steps = 0.0, 0
        for k, (tr, held) in enumerate(fold_rows(labels, opts.folds, cfg.seed)):
            run, t, s = _phase(cfg, device, data, f"fold{k + 1}", tr, method="erm", method_options={}, epochs=epochs)
            probs[held] = probabilities(run.nets[0].model, data, held, cfg.eval_batch_size)
            time_s, steps = time_s + t, steps + s
        flagged = (confident_issues if opts.ranker == "confident" else cleanlab_issues)(labels, probs)
        score = torch.from_numpy(probs[np.arange(len(labels)), labels]).float()
        predicted, source = torch.from_numpy(probs.argmax(1)), "out_of_fold_prob_given_label"
    return {"flagged": torch.as_tensor(flagged, dtype=torch.bool), "score": score, "predicted": predicted.long(),
            "train_index": data.train_index.cpu(), "ranker": opts.ranker, "source": source,
            "rank_time_s": time_s, "rank_steps": steps}


def _write_pruned(run_dir: Path, data: RunData, ranking: dict[str, Any]) -> None:
    """``pruned.csv``: the flagged examples, in ``example_scores.csv``'s columns (lowest clean score first)."""
    rows = ranking["flagged"].nonzero().squeeze(1)
    rows = rows[torch.argsort(ranking["score"][rows], stable=True)]
    paths = [data.train_paths[i] for i in rows.tolist()] if data.train_paths is not None else None
    write_scores(run_dir / PRUNED_FILE, data.train_index.cpu()[rows].numpy(), paths, data.train_y.cpu()[rows].numpy(),
                 ranking["predicted"][rows].numpy(), ranking["score"][rows].numpy(), data.class_names)


def _saved_ranking(run_dir: Path, data: RunData) -> dict[str, Any] | None:
    """``prune.pt`` of an interrupted run (``None``: none yet); it must be of this run's training set."""
    path = run_dir / PRUNE_FILE
    if not path.exists():
        return None
    ranking = load_verified(path)
    if not torch.equal(ranking["train_index"], data.train_index.cpu()):
        raise ValueError(f"{path} ranks another training set than this run's; start a new run with another --out")
    return ranking


def train_prune(cfg: TrainConfig, device: torch.device) -> dict[str, Any]:
    """Rank, prune, retrain (see the module) for a validated ``cfg`` with ``method: prune``; returns the
    retrain's summary (:func:`famus.train.train`'s keys) with the ranking's clean scores and ``prune``."""
    opts = TRAINING_METHODS.get("prune").options_of(cfg)
    check_names(cfg)  # everything that can fail on bad input, before the first byte is written
    _check_distributed(cfg)
    # one process per run folder: the prune holds OUT's lock from its first check to the retrain's end
    with claim_out_dir(cfg) as run_dir:
        return _rank_prune_retrain(cfg, device, opts, run_dir)


def _rank_prune_retrain(cfg: TrainConfig, device: torch.device, opts: PruneOptions, run_dir: Path) -> dict[str, Any]:
    """:func:`train_prune` inside the locked run folder."""
    if cfg.resume:
        resume_checkpoint(cfg, run_dir)  # the settings may change only as a resume allows
    make_precision(cfg, device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    data = prepare_data(cfg, device)
    if opts.ranker != "famus":
        fold_rows(data.train_y.cpu().numpy(), opts.folds, cfg.seed)
    ranking = _saved_ranking(run_dir, data)
    noise_line = describe_noise(cfg, data)
    if noise_line:
        log.info(noise_line.removeprefix("famus: "))
    if not (run_dir / CONFIG_FILE).exists():
        start_run_folder(cfg, run_dir, data, device, resumed=False)
    if ranking is None:
        ranking = rank(cfg, device, data, opts)
        _write_pruned(run_dir, data, ranking)
        save_verified(run_dir / PRUNE_FILE, ranking)  # last: its presence means the ranking is complete
    kept = (~ranking["flagged"]).nonzero().squeeze(1)
    log.info(f"prune ({ranking['ranker']}) flagged {int(ranking['flagged'].sum())} of "
             f"{ranking['flagged'].numel()} training examples; retraining ERM on the other {kept.numel()}")
    with ExitStack() as hold:  # the folder holds the run's header; its lock is this prune's
        run, ck = setup(replace(cfg, resume=True), device, hold, data, kept, lock=False)
        summary = run.train(ck)
    summary.update(finish_scores(run_dir, data, ranking["predicted"], ranking["score"], ranking["source"]))
    summary["prune"] = _prune_record(ranking, data, opts)
    write_summary(run_dir, summary)
    return summary


def _prune_record(ranking: dict[str, Any], data: RunData, opts: PruneOptions) -> dict[str, Any]:
    """The summary's ``prune``: ranker, folds, flagged and kept counts, the ranking's cost, and (injected
    noise) the flagged set's precision and recall against the corrupted labels (reporting only)."""
    flagged = ranking["flagged"]
    out: dict[str, Any] = {"ranker": ranking["ranker"], "folds": opts.folds if ranking["ranker"] != "famus" else None,
                           "flagged": int(flagged.sum()), "kept": int((~flagged).sum()),
                           "rank_time_s": float(ranking["rank_time_s"]), "rank_steps": int(ranking["rank_steps"])}
    if data.noise_known:
        corrupted = data.corrupted.cpu()
        hit = int((flagged & corrupted).sum())
        out.update(flagged_precision=hit / max(int(flagged.sum()), 1), flagged_recall=hit / int(corrupted.sum()))
    return out
