"""``famus issues`` against cleanlab's ``find_label_issues`` on the same noisy labels.

    pip install cleanlab   # optional (the ``cleanlab`` extra); famus never needs it
    python3 scripts/issues_vs_cleanlab.py --config configs/quality-fmnist.yaml --runs runs/exact runs/fd \\
        --folds 3 --threads 1 --json issues.json

For every famus run: AUROC and precision at N (N = the number of corrupted labels) and at 100 of its
``example_scores.csv`` against its ``noisy_labels.pt``, and the precision and recall of its flagged set
(``famus issues``, :func:`famus.label_issues`). For cleanlab: out-of-fold predicted
probabilities of the config's model trained by ERM on the same noisy labels (``--folds`` stratified
folds; the config's epochs, batch size, learning rate schedule, momentum, weight decay and
augmentation), then ``cleanlab.filter.find_label_issues`` (its own set: size, precision, recall) and
``cleanlab.rank.get_label_quality_scores`` (self-confidence: AUROC and precision at N and 100).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import StratifiedKFold

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from famus.issues import detection_quality, label_issues, read_scores  # noqa: E402
from famus.models import build_model  # noqa: E402
from famus.train.config import load_config  # noqa: E402
from famus.train.data import RunData, prepare_data  # noqa: E402
from famus.train.nets import make_optimizer  # noqa: E402
from famus.train.step import erm_step, lr_at  # noqa: E402


def famus_row(run: Path, common: np.ndarray | None = None) -> dict:
    """Detection quality of a run's clean scores against its injected noise, on the examples whose dataset
    index is in ``common`` (all of them when None)."""
    scores = read_scores(run / "example_scores.csv")
    noisy = torch.load(run / "noisy_labels.pt", weights_only=False)["corrupted"].numpy()
    keep = np.isin(scores.index, common) if common is not None else np.ones(len(noisy), bool)
    summary = json.loads((run / "summary.json").read_text())
    issues = label_issues(run)  # famus issues' flagged set (sorted: map back by dataset index)
    pos = {int(i): k for k, i in enumerate(scores.index)}
    flagged = np.zeros(len(noisy), bool)
    flagged[[pos[int(i)] for i in issues.index[issues.flagged]]] = True
    flagged, bad = flagged[keep], noisy[keep]
    return {"run": str(run), "clean_score": summary.get("clean_score"),
            **detection_quality(scores.clean_score[keep], bad),
            "flagged": int(flagged.sum()), "precision_flagged": float(bad[flagged].mean()) if flagged.any() else None,
            "recall_flagged": float(flagged[bad].mean()) if bad.any() else None,
            "estimated_noise_rate": issues.estimated_noise_rate, "warnings": issues.warnings,
            "val_chosen_acc": summary.get("val_chosen_acc"), "last_test_acc": summary.get("last_test_acc")}


def train_fold(cfg, data: RunData, train_idx: np.ndarray, seed: int) -> torch.nn.Module:
    """ERM on ``train_idx`` with the config's model and optimisation (what ``famus train --method erm`` does)."""
    torch.manual_seed(seed)
    model = build_model(cfg.model, num_classes=data.num_classes, in_channels=data.in_channels, **cfg.model_options)
    opt = make_optimizer(cfg, model.parameters())
    gen = torch.Generator().manual_seed(seed + 1)
    idx_all = torch.from_numpy(train_idx)
    iters, step = len(train_idx) // cfg.batch_size, 0
    model.train()
    for epoch in range(cfg.epochs):
        perm = idx_all[torch.randperm(len(idx_all), generator=gen)]
        for it in range(iters):
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, epoch, step, iters)
            idx = perm[it * cfg.batch_size : (it + 1) * cfg.batch_size]
            erm_step(model, opt, data.augmenter(data.train_x[idx], gen), data.train_y[idx])
            step += 1
    return model


@torch.no_grad()
def probabilities(model: torch.nn.Module, data: RunData, idx: np.ndarray, batch: int = 1000) -> np.ndarray:
    """``(len(idx), C)`` softmax probabilities, eval mode, no augmentation."""
    model.eval()
    out = [F.softmax(model(data.augmenter.normalize(data.train_x[torch.from_numpy(idx[i : i + batch])])), 1)
           for i in range(0, len(idx), batch)]
    return torch.cat(out).numpy()


def cleanlab_rows(cfg, data: RunData, folds: int) -> list[dict]:
    """cleanlab on out-of-fold probabilities: its own issue set, and its self-confidence ranking."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores

    labels = data.train_y.numpy()
    noisy = data.corrupted.numpy()
    pred_probs = np.zeros((len(labels), data.num_classes), dtype=np.float64)
    t0 = time.perf_counter()
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=cfg.seed)
    for k, (tr, held) in enumerate(splitter.split(np.zeros(len(labels)), labels)):
        model = train_fold(cfg, data, tr, cfg.seed + 10 * k)
        pred_probs[held] = probabilities(model, data, held)
        print(f"fold {k + 1}/{folds} done in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
    found = find_label_issues(labels, pred_probs)  # default: prune_by_noise_rate
    quality = get_label_quality_scores(labels, pred_probs, method="self_confidence")
    rows = [{"run": f"cleanlab find_label_issues ({folds}-fold ERM, out of fold)",
             "flagged": int(found.sum()), "precision_flagged": float(noisy[found].mean()) if found.any() else None,
             "recall_flagged": float(found[noisy].mean()), **detection_quality(quality, noisy),
             "oof_accuracy_vs_given": float((pred_probs.argmax(1) == labels).mean()),
             "train_time_s": time.perf_counter() - t0}]
    return rows


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True)
    p.add_argument("--runs", nargs="*", default=[], help="famus run folders trained with --config")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=None, help="override the config's epochs (as the runs were trained)")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    p.add_argument("--no-cleanlab", action="store_true")
    p.add_argument("--common-with", default=None, help="score every run on this run's training examples only "
                   "(e.g. a pseudo-mode run on the same labels via --noise file, which also trains on the meta set)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config).validate()
    if args.epochs is not None:
        cfg = replace(cfg, epochs=args.epochs)
    common = None
    if args.common_with:
        common = torch.load(Path(args.common_with) / "split.pt", weights_only=False)["train_index"].numpy()
    rows = [famus_row(Path(r), common) for r in args.runs]
    if not args.no_cleanlab:
        data = prepare_data(cfg)
        for r in args.runs:  # the same noisy labels as every run (on the examples they share)
            saved = torch.load(Path(r) / "noisy_labels.pt", weights_only=False)["labels"]
            index = torch.load(Path(r) / "split.pt", weights_only=False)["train_index"]
            mine = dict(zip(data.train_index.tolist(), data.train_y.tolist()))
            assert all(mine.get(i, y) == y for i, y in zip(index.tolist(), saved.tolist())), f"{r}: other labels"
        rows += cleanlab_rows(cfg, data, args.folds)
    for r in rows:
        print(json.dumps(r))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
