"""Likely mislabeled examples: ``example_scores.csv`` of a run, :func:`label_issues` and ``famus issues``.

Every run writes ``example_scores.csv``, one row per training example: ``index`` (in the dataset's
training split), ``path`` (the example's file relative to the data root, where there is one),
``given_label`` (the label it was trained on) and ``given_class``, ``predicted_label``/``predicted_class``
(the final model's prediction), and ``clean_score`` (low: the label looks wrong; see
:mod:`famus.train.scores` for where it comes from). An empty ``clean_score`` marks an example never visited.

:func:`label_issues` reads it into a :class:`LabelIssues` (sorted, likeliest error first) with a
**flagged set** chosen from the scores (:func:`flag_issues`) and warnings when the run's model has not
learned enough for the ranking to mean anything (:func:`learning_warnings`).

>>> issues = label_issues("runs/my-run")        # doctest: +SKIP
>>> issues["path"][issues.flagged]              # absolute paths of the flagged examples  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from famus.atomic import atomic_write_text

SCORES_FILE = "example_scores.csv"
SUMMARY_FILE = "summary.json"
COLUMNS = ("index", "path", "given_label", "given_class", "predicted_label", "predicted_class", "clean_score")
ARRAYS = ("index", "path", "given_label", "predicted_label", "clean_score", "flagged")
RULE = ("a two-component Gaussian mixture on the log clean scores estimates each example's chance of a wrong "
        "label; in each given class, as many of its lowest-scored examples as the sum of its chances are flagged "
        "(cleanlab's prune by noise rate, with the mixture in place of the confident joint)")
FLOOR = 1e-3  # scores below this share of the median are taken at it (log of 0: L2R's zero weights)


@dataclass
class LabelIssues:
    """A run's training examples sorted from the likeliest label error to the least likely (lowest clean score
    first; never-visited examples, NaN, last).

    Arrays of length N (or ``n`` after :meth:`top` / :meth:`flagged_only`), in that order; ``issues["path"]``
    is the same as ``issues.path`` (the arrays of :data:`ARRAYS`, by name).

    Attributes:
        index: int64, the example's position in the dataset's training split.
        path: str, the example's file, absolute where the run knows its data root ("" where there is none).
        given_label, predicted_label: int64, the label trained on and the final model's prediction.
        clean_score: float64 (NaN: never visited).
        flagged: bool, in the flagged set (:func:`flag_issues`); the flagged examples come first.
        class_names: index -> class name, when known.
        estimated_noise_rate: the share of examples the mixture puts on the low-score side (None: not fitted).
        warnings: why the ranking may mean little (:func:`learning_warnings`); empty when none applies.
    """

    index: np.ndarray
    path: np.ndarray
    given_label: np.ndarray
    predicted_label: np.ndarray
    clean_score: np.ndarray
    flagged: np.ndarray | None = None
    class_names: list[str] | None = None
    estimated_noise_rate: float | None = None
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.flagged is None:
            self.flagged = np.zeros(self.index.size, dtype=bool)

    def __len__(self) -> int:
        return int(self.index.size)

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in ARRAYS:
            raise KeyError(f"{key!r}; LabelIssues holds the arrays {', '.join(ARRAYS)}")
        return getattr(self, key)

    def keys(self) -> tuple[str, ...]:
        return ARRAYS

    def _take(self, rows: np.ndarray | slice) -> LabelIssues:
        parts = {f.name: getattr(self, f.name) for f in fields(self)}
        return LabelIssues(**{k: (v[rows] if k in ARRAYS else v) for k, v in parts.items()})

    def top(self, n: int) -> LabelIssues:
        """The ``n`` likeliest label errors."""
        return self._take(slice(0, n))

    def flagged_only(self) -> LabelIssues:
        """The flagged examples."""
        return self._take(self.flagged)

    def class_of(self, label: int) -> str:
        """The class name of ``label`` (its number as text when unknown)."""
        return _name(label, self.class_names) or str(label)

    def to_dict(self) -> dict[str, Any]:
        """Plain lists (JSON-ready): the arrays of :data:`ARRAYS` (NaN scores as None), ``class_names``,
        ``estimated_noise_rate`` and ``warnings``."""
        out: dict[str, Any] = {k: getattr(self, k).tolist() for k in ARRAYS}
        out["clean_score"] = [None if np.isnan(s) else float(s) for s in self.clean_score]
        out.update(class_names=self.class_names, estimated_noise_rate=self.estimated_noise_rate,
                   warnings=list(self.warnings))
        return out


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


def flag_issues(score: np.ndarray, given: np.ndarray, seed: int = 0) -> tuple[np.ndarray, dict[str, Any]]:
    """The flagged set: :data:`RULE`.

    In log space the low scores of wrong labels (meta weights near 0, probabilities of the given label near 0)
    form their own group; the scores' scale does not matter (meta weights, probabilities).

    Args:
        score: ``(N,)`` clean scores (NaN: never visited, never flagged); given: ``(N,)`` given labels.

    Returns:
        ``(flagged (N,) bool, info)``; ``info``: ``estimated_noise_rate``, ``separation`` (Ashman's D of the
        two components: above 2 they are well apart), ``per_class`` (flagged per given class).
    """
    from sklearn.mixture import GaussianMixture

    score, given = np.asarray(score, dtype=np.float64), np.asarray(given)
    flagged = np.zeros(score.size, dtype=bool)
    ok = np.flatnonzero(np.isfinite(score))
    info: dict[str, Any] = {"estimated_noise_rate": None, "separation": None, "per_class": {}}
    if ok.size < 4 or np.ptp(score[ok]) == 0:
        return flagged, info
    med = np.median(score[ok])
    floor = FLOOR * med if med > 0 else max(np.abs(score[ok]).max() * FLOOR, 1e-12)
    x = np.log(np.maximum(score[ok], floor))
    x = ((x - x.min()) / max(np.ptp(x), 1e-12)).reshape(-1, 1)
    gmm = GaussianMixture(n_components=2, max_iter=200, reg_covar=5e-4, random_state=seed).fit(x)
    means, var = gmm.means_.reshape(-1), gmm.covariances_.reshape(-1)
    low = int(np.argmin(means))
    p_bad = gmm.predict_proba(x)[:, low]
    info["estimated_noise_rate"] = round(float(p_bad.mean()), 6)
    info["separation"] = round(float(np.sqrt(2) * abs(means[0] - means[1]) / np.sqrt(var.sum())), 4)
    for k in np.unique(given[ok]):
        rows = ok[given[ok] == k]
        n_k = int(round(float(p_bad[given[ok] == k].sum())))
        if n_k:
            flagged[rows[np.argsort(score[rows], kind="stable")[:n_k]]] = True
            info["per_class"][int(k)] = n_k
    return flagged, info


# when the ranking means little: thresholds measured in docs/health-check.md
CHANCE_MARGIN = 0.25  # accuracy below chance + this share of the way to 1 is "near chance"
MIN_SEPARATION = 2.0  # Ashman's D of the score mixture
MIN_SPREAD = 0.05  # interquartile range of the scores over their median
MIN_META_UPDATES = 50  # meta updates before a meta weighting is judged (famus.train.health.MIN_META_STEPS)


def learning_warnings(run_dir: Path, score: np.ndarray, info: dict[str, Any], num_classes: int | None) -> list[str]:
    """Why the ranking may mean little: accuracy near chance, scores nearly constant or in one group, a
    meta weighting whose health check failed. One line each; empty when nothing applies."""
    out = []
    summary = _json(run_dir / SUMMARY_FILE) or {}
    rows = _metrics(run_dir)
    c = num_classes or 0
    last = rows[-1] if rows else {}
    for key, what in (("val_acc", "validation"), ("test_acc", "test")):
        acc = last.get(key)
        if c >= 2 and isinstance(acc, (int, float)):
            chance = 1.0 / c
            if acc < chance + CHANCE_MARGIN * (1 - chance):
                out.append(f"the model's {what} accuracy is {acc:.1%}, near chance ({chance:.1%} for {c} classes): "
                           f"train longer (it ran {len(rows)} epochs) before trusting the ranking")
            break
    s = score[np.isfinite(score)]
    if s.size:
        q25, q50, q75 = np.percentile(s, [25, 50, 75])
        if q75 - q25 < MIN_SPREAD * max(abs(q50), 1e-12):
            out.append(f"the clean scores are nearly constant (interquartile range {q75 - q25:.3g} around {q50:.3g})")
    sep = info.get("separation")
    if sep is not None and sep < MIN_SEPARATION:
        out.append(f"the clean scores do not split into two groups (separation {sep:.2f} < {MIN_SEPARATION}): the "
                   "flagged set is a guess")
    meta = sum(r["meta_steps"] for r in rows if isinstance(r.get("meta_steps"), int))
    if summary.get("clean_score") == "meta_weight" and rows and meta < MIN_META_UPDATES:
        out.append(f"the meta-learner made only {meta} meta updates in {len(rows)} epochs: its weights (the clean "
                   f"scores) are barely trained (train for at least {MIN_META_UPDATES})")
    if summary.get("clean_score") == "meta_weight" and isinstance(last.get("health"), dict):
        from famus.train.health import recheck
        from famus.yamlload import safe_load

        try:
            cfg = safe_load((run_dir / "config.yaml").read_text())
        except (OSError, ValueError):
            cfg = None
        cfg = cfg if isinstance(cfg, dict) else {}
        balanced = cfg.get("imbalance", 1) in (1, 1.0, None) and cfg.get("loss", "ce") in ("ce", None)
        flags = recheck(rows, str(cfg.get("method", "")), balanced, min_steps=0)[-1]  # the final state, however short
        out += [f"the meta weighting's health check at the last epoch: {f}" for f in flags]
    return out


def _json(path: Path) -> Any:
    try:
        return json.loads(path.read_text()) if path.is_file() else None
    except (OSError, ValueError):
        return None


def _metrics(run_dir: Path, limit: int = 64 << 20) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.stat().st_size > limit:
        return []
    rows = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if isinstance(rec, dict):
            rows.append(rec)
    return rows


def read_scores(path: str | os.PathLike[str]) -> LabelIssues:
    """Read an ``example_scores.csv``, in file (training-set) order; paths as written (relative)."""
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


def _absolute(paths: np.ndarray, run_dir: Path, summary: dict[str, Any]) -> np.ndarray:
    """Paths joined to the run's data root (``summary.json`` ``data_root``; older runs: ``config.yaml``'s
    ``data_dir`` from the current folder)."""
    if not paths.size or not any(paths):
        return paths
    root = summary.get("data_root")
    if not isinstance(root, str):
        from famus.train.scores import data_root

        root = data_root(run_dir)
    if root is None:
        return paths
    return np.array([str(Path(root) / p) if p else "" for p in paths.tolist()], dtype=str)


def label_issues(run_dir: str | os.PathLike[str]) -> LabelIssues:
    """The run's training examples, flagged ones first, each group by clean score, lowest first.

    Args:
        run_dir: a run folder (``famus train --out``) holding ``example_scores.csv``.

    Returns:
        A :class:`LabelIssues`: arrays ``index``, ``path`` (absolute), ``given_label``, ``predicted_label``,
        ``clean_score`` and ``flagged``, plus ``class_names``, ``estimated_noise_rate`` and ``warnings``.
    """
    run_dir = Path(run_dir)
    raw = read_scores(run_dir / SCORES_FILE)
    names = _json(run_dir / "classes.json")
    names = names if isinstance(names, list) else None
    summary = _json(run_dir / SUMMARY_FILE) or {}
    flagged, info = flag_issues(raw.clean_score, raw.given_label)
    top = max(raw.given_label.max(initial=0), raw.predicted_label.max(initial=0))
    num_classes = len(names) if names else int(top) + 1
    warns = learning_warnings(run_dir, raw.clean_score, info, num_classes)
    order = np.lexsort((raw.clean_score, ~flagged))  # flagged first, then by score (NaN last)
    issues = LabelIssues(raw.index, _absolute(raw.path, run_dir, summary), raw.given_label, raw.predicted_label,
                         raw.clean_score, flagged, names, info["estimated_noise_rate"], warns)
    return issues._take(order)


def format_issues(issues: LabelIssues, detection: dict[str, Any] | None = None, source: str | None = None) -> str:
    """A plain-text table of ``issues`` (already cut to the rows to show), with the run's detection quality."""
    head = ["rank", "index", "given", "predicted", "clean_score", "flagged"] + (["path"] if any(issues.path) else [])
    rows = []
    for k in range(len(issues)):
        cells = [str(k + 1), str(int(issues.index[k])), issues.class_of(int(issues.given_label[k])),
                 issues.class_of(int(issues.predicted_label[k])), f"{issues.clean_score[k]:.4g}",
                 "yes" if issues.flagged[k] else "no"]
        rows.append(cells + ([str(issues.path[k])] if len(head) > 6 else []))
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


def _label_token(issues: LabelIssues, label: int) -> str:
    """A list file's label: the class name when it has no whitespace (the label is a line's last token)."""
    name = _name(label, issues.class_names)
    return name if name and not any(ch.isspace() for ch in name) else str(label)


def export(issues: LabelIssues, out: str | os.PathLike[str]) -> dict[str, str]:
    """Write ``issues.csv`` (every example: rank, flagged, index, path, given and predicted class, score),
    ``kept.txt`` (``path label`` lines of the examples not flagged: a list file to retrain on) and
    ``flagged.txt`` (``path label`` lines of the flagged ones, with their given labels, to relabel) into ``out``.

    Examples without a file (arrays datasets) are written as ``index label`` lines. With files, an empty
    ``test.txt`` is added when there is none, so ``--dataset listfile --data-dir out --set
    dataset_options.train_list=kept.txt`` trains on the kept examples as they are. Returns name -> path.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["rank", "flagged", "index", "path", "given_label", "given_class", "predicted_label",
                "predicted_class", "clean_score"])
    for k in range(len(issues)):
        g, p, s = int(issues.given_label[k]), int(issues.predicted_label[k]), float(issues.clean_score[k])
        w.writerow([k + 1, int(issues.flagged[k]), int(issues.index[k]), issues.path[k], g,
                    _name(g, issues.class_names), p, _name(p, issues.class_names), "" if np.isnan(s) else f"{s:.6g}"])
    has_paths = bool(len(issues)) and all(issues.path)
    what = "path label" if has_paths else "index label (no files: an arrays dataset)"

    def listing(rows: np.ndarray, head: str) -> str:
        lines = [f"# {head}; {what}"]
        for k in np.flatnonzero(rows):
            where = issues.path[k] if has_paths else str(int(issues.index[k]))
            lines.append(f"{where} {_label_token(issues, int(issues.given_label[k]))}")
        return "\n".join(lines) + "\n"

    files = {"issues.csv": buf.getvalue(),
             "kept.txt": listing(~issues.flagged, "examples not flagged (retrain on them: --dataset listfile)"),
             "flagged.txt": listing(issues.flagged, "flagged examples with their given labels (relabel them)")}
    if has_paths and not (out / "test.txt").exists():  # --dataset listfile reads a test list: none yet
        files["test.txt"] = "# the test list of --dataset listfile: add 'path label' lines, or keep it empty\n"
    for name, text in files.items():
        atomic_write_text(out / name, text)
    return {name: str(out / name) for name in files}


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``famus issues`` flags."""
    parser.add_argument("run", help="a run folder (famus train --out)")
    parser.add_argument("--top", type=int, default=20, help="how many examples to print (flagged first, lowest "
                        "clean score first)")
    parser.add_argument("--export", metavar="DIR", default=None,
                        help="write DIR/issues.csv, DIR/kept.txt and DIR/flagged.txt ('path label' lists)")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Print the run's ``--top`` likeliest label errors, the flagged set's size and any warnings."""
    if args.top < 1:
        raise ValueError(f"--top must be >= 1, got {args.top}")
    issues = label_issues(args.run)
    summary = _json(Path(args.run) / SUMMARY_FILE) or {}
    print(format_issues(issues.top(args.top), summary.get("label_issues"), summary.get("clean_score")))
    n, k = len(issues), int(issues.flagged.sum())
    rate = issues.estimated_noise_rate
    print(f"flagged {k} of {n} examples" + (f" (estimated noise rate {rate:.1%})" if rate is not None else "")
          + f"; rule: {RULE}")
    for w in issues.warnings:
        print(f"famus issues: warning: {w}", file=sys.stderr)
    if args.export:
        written = export(issues, args.export)
        print("wrote " + ", ".join(written.values()))
    return 0
