"""Per-class views of the chosen model: per-class accuracy and the confusion matrix, one figure per run.

From the epoch record of the model chosen on validation (``model_best.pt``; the last epoch without
validation data): its ``confusion`` matrix on the test split, or on the validation data when the run
has no test split (your own data), as ``famus.train.evaluation`` records it (up to 30 classes).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from famus.report.figure import Plot, new_figure
from famus.report.runs import Run, num
from famus.train.selection import chosen_from_records

MAX_ANNOTATED = 12  # classes up to which every cell of the matrix shows its count


def chosen_confusion(run: Run) -> tuple[np.ndarray, str, int] | None:
    """``(confusion (C, C) counts, split, epoch)`` of the chosen epoch: ``test`` when recorded, else ``val``."""
    chosen = chosen_from_records(run.metrics)["val_chosen_epoch"]
    rec = next((r for r in run.metrics if num(r, "epoch") == chosen), None)
    conf: Any = rec.get("confusion") if isinstance(rec, dict) else None
    if not isinstance(conf, dict):
        return None
    for split in ("test", "val"):
        m = conf.get(split)
        try:
            arr = np.array(m, dtype=float)
        except (TypeError, ValueError):
            continue
        if arr.ndim == 2 and arr.shape[0] == arr.shape[1] >= 2 and np.isfinite(arr).all() and arr.sum() > 0:
            return arr, split, int(chosen)
    return None


def _names(run: Run, c: int) -> list[str]:
    names = run.class_names if run.class_names and len(run.class_names) == c else [str(k) for k in range(c)]
    return [n if len(n) <= 14 else n[:13] + "…" for n in names]


def plot_classes(run: Run) -> Plot | None:
    """Per-class accuracy (left) and the row-normalized confusion matrix (right) of the chosen model."""
    got = chosen_confusion(run)
    if got is None:
        return None
    conf, split, epoch = got
    c = conf.shape[0]
    names = _names(run, c)
    rows = conf.sum(1)
    acc = np.divide(np.diag(conf), rows, out=np.full(c, np.nan), where=rows > 0)
    side = min(4.0 + 0.35 * c, 12.0)
    fig = new_figure(side + 5.5, max(4.0, side * 0.8))
    ax_acc, ax_conf = fig.subplots(1, 2, width_ratios=[1, 1.6])
    y = np.arange(c)
    ax_acc.barh(y, np.nan_to_num(acc) * 100, color="#4c72b0")
    for k in range(c):
        ax_acc.text(min(np.nan_to_num(acc[k]) * 100 + 1, 101), k, f"{acc[k]:.0%} of {int(rows[k])}"
                    if rows[k] else "no examples", va="center", fontsize="x-small")
    ax_acc.set_yticks(y, names, fontsize="small")
    ax_acc.invert_yaxis()
    ax_acc.set(xlim=(0, 125), xlabel="accuracy (%)", title="Per-class accuracy")
    ax_acc.set_xticks([0, 25, 50, 75, 100])
    ax_acc.grid(axis="x", alpha=0.3)
    share = np.divide(conf, rows[:, None], out=np.zeros_like(conf), where=rows[:, None] > 0)
    im = ax_conf.imshow(share * 100, cmap="Blues", vmin=0, vmax=100)
    if c <= MAX_ANNOTATED:
        for i in range(c):
            for j in range(c):
                if conf[i, j]:
                    ax_conf.text(j, i, f"{int(conf[i, j])}", ha="center", va="center", fontsize="x-small",
                                 color="white" if share[i, j] > 0.6 else "black")
    ax_conf.set_xticks(y, names, rotation=60, ha="right", fontsize="small")
    ax_conf.set_yticks(y, names, fontsize="small")
    ax_conf.set(xlabel="predicted class", ylabel="true class", title="Confusion matrix (% of each true class)")
    fig.colorbar(im, ax=ax_conf, shrink=0.8, label="% of the true class")
    where = "test split" if split == "test" else "validation data (the run has no test split)"
    fig.suptitle(f"{run.label}: the chosen model (epoch {epoch}) on the {where}")
    return Plot(fig, f"Per class: {run.label}",
                f"The model chosen on validation (epoch {epoch}) on the {where}: the share of each class it gets "
                "right, and where each true class's examples go (rows sum to 100%; counts in the cells for up to "
                f"{MAX_ANNOTATED} classes).")
