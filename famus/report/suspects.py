"""Likely label errors in the report: the clean-score histogram and the top suspects (thumbnails or rows).

From the run folder alone: ``example_scores.csv`` (every training example's clean score), the flagged
set of ``famus issues`` (:func:`famus.issues.flag_issues`, the same rule), and ``suspects.npz`` (the
lowest-scored examples with thumbnails, written at the end of training), so no dataset is needed.
"""

from __future__ import annotations

import base64
import io
from html import escape
from pathlib import Path
from typing import Any

import numpy as np

from famus.report.figure import Plot, legend, new_figure
from famus.report.runs import MAX_SCORES_BYTES, Run

SUSPECTS_SHOWN = 32
MAX_SUSPECTS_BYTES = 32 << 20  # suspects.npz larger than this is not read
SCORE_NAMES = {"meta_weight": "meta weight relative to uniform (moving average over visits)",
               "prob_given_label": "the final model's probability of the given label",
               "gmm_clean_probability": "the GMM's clean probability"}


def load_scores(run: Run) -> tuple[Any, np.ndarray | None, str | None]:
    """``(LabelIssues in file order, flagged (N,) or None, problem)`` of the run's ``example_scores.csv``."""
    from famus.issues import SCORES_FILE, flag_issues, read_scores

    path = run.path / SCORES_FILE
    if not path.is_file():
        return None, None, None
    if path.stat().st_size > MAX_SCORES_BYTES:
        return None, None, f"{SCORES_FILE} holds more than {MAX_SCORES_BYTES >> 20} MiB; not read"
    try:
        scores = read_scores(path)
    except (OSError, ValueError, KeyError) as e:
        return None, None, f"{SCORES_FILE} is unreadable ({type(e).__name__})"
    try:
        flagged, _info = flag_issues(scores.clean_score, scores.given_label)
    except ValueError:
        flagged = None
    return scores, flagged, None


def plot_scores(run: Run, scores, flagged: np.ndarray | None) -> Plot | None:
    """Histogram of the clean scores, the flagged set of ``famus issues`` stacked in red."""
    s = scores.clean_score
    ok = np.isfinite(s)
    if ok.sum() < 2:
        return None
    lo, hi = np.percentile(s[ok], [0.5, 99.5])
    if hi <= lo:
        lo, hi = s[ok].min() - 0.5, s[ok].max() + 0.5
    bins = np.linspace(lo, hi, 41)
    clipped = np.clip(s[ok], lo, hi)  # the few beyond the 0.5-99.5% range land in the end bins
    fig = new_figure(8, 3.8)
    ax = fig.subplots()
    bad = flagged[ok] if flagged is not None else np.zeros(ok.sum(), bool)
    ax.hist([clipped[~bad], clipped[bad]], bins=bins, stacked=True, color=["#4c72b0", "#d62728"],
            label=[f"kept ({int((~bad).sum())})", f"flagged by famus issues ({int(bad.sum())})"])
    source = run.summary.get("clean_score")
    ax.set(xlabel=f"clean score: {SCORE_NAMES.get(source, source or 'clean score')}", ylabel="training examples",
           title=f"Clean scores: {run.label}")
    ax.grid(alpha=0.3)
    legend(ax, loc="best")
    never = int((~ok).sum())
    return Plot(fig, f"Clean scores: {run.label}",
                "Every training example's clean score (low: the label looks wrong), 0.5-99.5% range; red: the set "
                "famus issues flags (a two-group mixture on the scores estimates each class's number of wrong "
                "labels, and that many of its lowest-scored examples are flagged)."
                + (f" {never} examples were never scored." if never else ""))


def load_suspects(run: Run) -> dict[str, np.ndarray] | None:
    """``suspects.npz`` as arrays (no pickle), or None when missing, too large or malformed."""
    path = run.path / "suspects.npz"
    try:
        if not path.is_file() or path.stat().st_size > MAX_SUSPECTS_BYTES:
            return None
        with np.load(path, allow_pickle=False) as z:
            out = {k: z[k] for k in ("index", "given", "predicted", "score", "path", "images") if k in z.files}
    except (OSError, ValueError, KeyError):
        return None
    n = out.get("index", np.zeros(0)).shape[0]
    if any(out.get(k) is None or out[k].shape[:1] != (n,) for k in ("given", "predicted", "score", "path")):
        return None
    img = out.get("images")
    if img is not None and not (img.dtype == np.uint8 and img.ndim == 4 and img.shape[0] == n
                                and img.shape[3] in (1, 3, 4)):
        out.pop("images")
    return out


def _png(img: np.ndarray) -> str:
    from PIL import Image

    arr = img[..., 0] if img.shape[2] == 1 else img
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _cls(run: Run, label: int) -> str:
    names = run.class_names
    return names[label] if names and 0 <= label < len(names) else str(label)


def suspects_html(run: Run, scores=None, flagged: np.ndarray | None = None) -> str:
    """The run's top suspects (escaped HTML): thumbnails with given and predicted class and score, or rows."""
    z = load_suspects(run)
    k = SUSPECTS_SHOWN
    head = (f"<h3>Likeliest label errors: {escape(run.label)}</h3><p>The lowest clean scores (see the histogram), "
            "lowest first. Check these files first; <code>famus issues RUN --export DIR</code> writes the flagged "
            "set as lists to relabel or to retrain without.</p>")
    if z is not None and "images" in z:
        cards = []
        for i in range(min(k, z["index"].shape[0])):
            g, p = int(z["given"][i]), int(z["predicted"][i])
            where = str(z["path"][i]) or f"index {int(z['index'][i])}"
            cards.append(f'<div class="card"><img src="{_png(z["images"][i])}" alt="example {int(z["index"][i])}" '
                         f'title="{escape(where)}"><div>given <b>{escape(_cls(run, g))}</b></div><div>predicted '
                         f'<b>{escape(_cls(run, p))}</b></div><div>score {float(z["score"][i]):.3g}</div>'
                         f'<div class="path">{escape(Path(where).name)}</div></div>')
        return head + '<div class="cards">' + "".join(cards) + "</div>"
    rows = _rows(z, scores, k)
    if not rows:
        return ""
    cells = "".join(f"<tr><td>{r + 1}</td><td>{idx}</td><td>{escape(where)}</td><td>{escape(_cls(run, g))}</td>"
                    f"<td>{escape(_cls(run, p))}</td><td>{s:.3g}</td></tr>" for r, (idx, where, g, p, s) in
                    enumerate(rows))
    return (head + "<table><thead><tr><th>rank</th><th>index</th><th>path</th><th>given</th><th>predicted</th>"
            f"<th>clean score</th></tr></thead><tbody>{cells}</tbody></table>")


def _rows(z: dict[str, np.ndarray] | None, scores, k: int) -> list[tuple[int, str, int, int, float]]:
    if z is not None:
        n = min(k, z["index"].shape[0])
        return [(int(z["index"][i]), str(z["path"][i]), int(z["given"][i]), int(z["predicted"][i]),
                 float(z["score"][i])) for i in range(n)]
    if scores is None:
        return []
    s = scores.clean_score
    order = np.argsort(np.where(np.isfinite(s), s, np.inf), kind="stable")[:k]
    return [(int(scores.index[i]), str(scores.path[i]), int(scores.given_label[i]), int(scores.predicted_label[i]),
             float(s[i])) for i in order if np.isfinite(s[i])]
