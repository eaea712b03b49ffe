"""A run's summary: what ``famus.train.train`` returns and ``summary.json`` holds.

Three accuracies, labelled by how they were chosen:

* ``val_chosen_acc``: the test accuracy of the epoch chosen on validation data (``model_best.pt``;
  the last epoch when there is no validation data, ``selection`` says which);
* ``last_test_acc``: the last epoch's;
* ``best_test_acc``: the paper's "best test accuracy", the maximum over epochs, i.e. chosen on the
  test labels (kept for comparison with published tables).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from famus.atomic import atomic_write_text
from famus.issues import SUMMARY_FILE
from famus.train.data import RunData
from famus.train.metrics import read_metrics
from famus.train.selection import ModelSelection


def run_summary(run_dir: Path, selection: ModelSelection, data: RunData) -> dict[str, Any]:
    """The summary of a finished run from its ``metrics.jsonl`` and its model selection."""
    rows = read_metrics(run_dir)
    its = [r["time_per_iter_s"] for r in rows]
    tests = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "val_chosen_acc": selection.test_acc,
        "val_chosen_epoch": selection.epoch,
        "selection": selection.rule,
        "val_source": data.val_source,
        "last_test_acc": rows[-1].get("test_acc") if rows else None,
        "best_test_acc": max(tests) if tests else None,
        "time_per_iter_s": sum(its) / len(its) if its else math.nan,
        "epochs": len(rows),
    }
    if rows and "group_acc" in rows[-1]:
        summary.update(group_acc=rows[-1]["group_acc"], group_rule=rows[-1]["group_rule"])
    return summary


def write_summary(run_dir: Path, summary: dict[str, Any]) -> None:
    """``summary.json`` in the run folder (atomically)."""
    atomic_write_text(Path(run_dir) / SUMMARY_FILE, json.dumps(summary, indent=2) + "\n")
