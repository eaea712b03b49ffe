"""Likely mislabeled examples: ``example_scores.csv`` of a run, :func:`label_issues` and ``famus issues``.

Every run writes ``example_scores.csv``, one row per training example: ``index`` (in the dataset's
training split), ``path`` (the example's file, where there is one), ``given_label`` (the label it was
trained on) and ``given_class``, ``predicted_label``/``predicted_class`` (the final model's
prediction), and ``clean_score`` (low: the label looks wrong; see :mod:`famus.train.scores` for
where it comes from). An empty ``clean_score`` marks an example never visited.

>>> issues = label_issues("runs/my-run")        # doctest: +SKIP
>>> issues.index[:10], issues.clean_score[:10]  # the ten likeliest label errors  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from famus.atomic import atomic_write_text

SCORES_FILE = "example_scores.csv"
SUMMARY_FILE = "summary.json"
COLUMNS = ("index", "path", "given_label", "given_class", "predicted_label", "predicted_class", "clean_score")


@dataclass
class LabelIssues:
    """Training examples sorted from the likeliest label error to the least likely (lowest clean score first;
    never-visited examples, NaN, last). Arrays of length N (or ``n`` after :meth:`top`)."""

    index: np.ndarray  # int64: position in the dataset's training split
    path: np.ndarray  # str: the example's file ("" where there is none)
    given_label: np.ndarray  # int64
    predicted_label: np.ndarray  # int64
    clean_score: np.ndarray  # float64
    class_names: list[str] | None = None

    def __len__(self) -> int:
        return int(self.index.size)

    def top(self, n: int) -> LabelIssues:
        """The ``n`` likeliest label errors."""
        return LabelIssues(self.index[:n], self.path[:n], self.given_label[:n], self.predicted_label[:n],
                           self.clean_score[:n], self.class_names)


def _name(label: int, class_names: list[str] | None) -> str:
    return class_names[label] if class_names and 0 <= label < len(class_names) else ""


def write_scores(path: str | os.PathLike[str], index: np.ndarray, paths: list[str] | None, given: np.ndarray,
                 predicted: np.ndarray, score: np.ndarray, class_names: list[str] | None = None) -> None:
    """Write ``example_scores.csv`` atomically; all arrays ``(N,)``, in training-set order."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for i in range(len(index)):  # one row per example: plain text output
        s = float(score[i])
        w.writerow([int(index[i]), paths[i] if paths else "", int(given[i]), _name(int(given[i]), class_names),
                    int(predicted[i]), _name(int(predicted[i]), class_names), "" if np.isnan(s) else f"{s:.6g}"])
    atomic_write_text(Path(path), buf.getvalue())


def detection_quality(score: np.ndarray, noisy: np.ndarray) -> dict[str, Any]:
    """How well a low clean score finds the known corrupted labels.

    Args:
        score: ``(N,)`` clean scores (NaN: not scored, left out).
        noisy: ``(N,)`` bool, True where the label was corrupted.

    Returns:
        ``auroc`` (probability that a corrupted example scores lower than a clean one; None when one kind is
        absent), ``precision_at_n`` (share of corrupted labels among the ``n_noisy`` lowest scores, ``n_noisy`` =
        the number of corrupted labels), ``precision_at_100``, ``n_noisy`` and ``scored``.
    """
    from sklearn.metrics import roc_auc_score

    ok = np.isfinite(score)
    s, m = np.asarray(score, dtype=np.float64)[ok], np.asarray(noisy, dtype=bool)[ok]
    n_noisy = int(m.sum())
    order = np.argsort(s, kind="stable")
    both = 0 < n_noisy < m.size
    return {"auroc": float(roc_auc_score(m, -s)) if both else None,
            "precision_at_n": float(m[order[:n_noisy]].mean()) if n_noisy else None,
            "precision_at_100": float(m[order[:100]].mean()) if m.size else None,
            "n_noisy": n_noisy, "scored": int(m.size)}


def read_scores(path: str | os.PathLike[str]) -> LabelIssues:
    """Read an ``example_scores.csv``, in file (training-set) order."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; it is written at the end of a run (famus train)")
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    if rows and set(COLUMNS) - set(rows[0]):
        raise ValueError(f"{path} lacks columns {sorted(set(COLUMNS) - set(rows[0]))}; is it an example_scores.csv?")
    return LabelIssues(
        index=np.array([int(r["index"]) for r in rows], dtype=np.int64),
        path=np.array([r["path"] for r in rows], dtype=str),
        given_label=np.array([int(r["given_label"]) for r in rows], dtype=np.int64),
        predicted_label=np.array([int(r["predicted_label"]) for r in rows], dtype=np.int64),
        clean_score=np.array([float(r["clean_score"]) if r["clean_score"] else np.nan for r in rows]),
    )


def label_issues(run_dir: str | os.PathLike[str]) -> LabelIssues:
    """The run's training examples sorted by clean score, lowest (likeliest label error) first.

    Args:
        run_dir: a run folder (``famus train --out``) holding ``example_scores.csv``.
    """
    run_dir = Path(run_dir)
    issues = read_scores(run_dir / SCORES_FILE)
    classes = run_dir / "classes.json"
    names = json.loads(classes.read_text()) if classes.is_file() else None
    order = np.argsort(issues.clean_score, kind="stable")  # NaN (never visited) sorts last
    return LabelIssues(issues.index[order], issues.path[order], issues.given_label[order],
                       issues.predicted_label[order], issues.clean_score[order], names)


def format_issues(issues: LabelIssues, detection: dict[str, Any] | None = None, source: str | None = None) -> str:
    """A plain-text table of ``issues`` (already cut to the rows to show), with the run's detection quality."""
    names = issues.class_names
    head = ["rank", "index", "given", "predicted", "clean_score"] + (["path"] if any(issues.path) else [])
    rows = []
    for k in range(len(issues)):
        given, pred = int(issues.given_label[k]), int(issues.predicted_label[k])
        cells = [str(k + 1), str(int(issues.index[k])), _name(given, names) or str(given),
                 _name(pred, names) or str(pred), f"{issues.clean_score[k]:.4g}"]
        rows.append(cells + ([str(issues.path[k])] if len(head) > 5 else []))
    widths = [max(len(head[j]), *(len(r[j]) for r in rows)) for j in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if source:
        lines.append(f"clean score: {source}")
    if detection and detection.get("auroc") is not None:
        lines.append(f"against the injected noise ({detection['n_noisy']} corrupted labels): AUROC "
                     f"{detection['auroc']:.4f}, precision@{detection['n_noisy']} {detection['precision_at_n']:.4f}, "
                     f"precision@100 {detection['precision_at_100']:.4f}")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``famus issues`` flags."""
    parser.add_argument("run", help="a run folder (famus train --out)")
    parser.add_argument("--top", type=int, default=20, help="how many suspects to print (lowest clean score first)")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Print the run's ``--top`` likeliest label errors."""
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    issues = label_issues(args.run)
    summary_path = Path(args.run) / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    print(format_issues(issues.top(args.top), summary.get("label_issues"), summary.get("clean_score")))
    return 0
