"""The runs' summary table: raw values (``summary.json``) and deterministic Markdown (``summary.md``).

Columns and where each number comes from (``metrics.jsonl``):

* epochs: the last record's ``epoch`` (the number of records when absent);
* chosen test acc: the test accuracy of the epoch chosen on validation (the best ``val_acc``,
  ties: the later epoch; the last epoch when the run had no validation data, marked ``(last)``);
* last test acc: ``test_acc`` of the last record that has one;
* best test acc (paper): the largest ``best_test_acc`` / ``test_acc`` of any record (the last
  record's ``best_test_acc`` for an ordinary run): the paper's metric, chosen on the test labels;
* time/iteration: mean of the records' ``time_per_iter_s`` (what ``famus.train.train`` returns);
* wall time: the last record's ``wall_time_s`` (training time, evaluation excluded);
* chosen val acc: the validation accuracy of the chosen epoch (your own data often has no test split).

Formatting: accuracies as percentages with 2 decimals, time per iteration in ms with 2
decimals, wall time in seconds with 2 decimals; ``n/a`` where the metrics lack the number.
"""

from __future__ import annotations

from typing import Any

from famus.report.runs import Run, num
from famus.train.selection import NO_VALIDATION, chosen_from_records

COLUMNS = ("run", "method", "engine", "epochs", "chosen test acc", "last test acc", "best test acc (paper)",
           "time/iteration", "wall time", "chosen val acc")


def summarize(run: Run) -> dict[str, Any]:
    """Raw summary values of one run (``None`` where unknown)."""
    recs = run.metrics
    accs = [v for r in recs for v in (num(r, "best_test_acc"), num(r, "test_acc")) if v is not None]
    lasts = [v for v in (num(r, "test_acc") for r in recs) if v is not None]
    its = [v for v in (num(r, "time_per_iter_s") for r in recs) if v is not None]
    walls = [v for v in (num(r, "wall_time_s") for r in recs) if v is not None]
    epoch = num(recs[-1], "epoch") if recs else None
    shares = [v for v in (num(r, "clean_weight_share") for r in recs) if v is not None]
    steps = [s.get("step") for s in run.tracking if isinstance(s.get("step"), int)]
    chosen = chosen_from_records(recs)
    chosen_rec = next((r for r in recs if num(r, "epoch") == chosen["val_chosen_epoch"]), {})
    return {
        "run": run.name,
        "path": str(run.path),
        "label": run.label,
        "method": run.method,
        "engine": run.engine,
        "epochs": int(epoch) if epoch is not None else len(recs),
        "val_chosen_acc": num(chosen, "val_chosen_acc"),
        "chosen_val_acc": num(chosen_rec, "val_acc"),
        "val_chosen_epoch": chosen["val_chosen_epoch"],
        "selection": chosen["selection"],
        "best_test_acc": max(accs) if accs else None,
        "last_test_acc": lasts[-1] if lasts else None,
        "time_per_iter_s": sum(its) / len(its) if its else None,
        "last_time_per_iter_s": its[-1] if its else None,
        "wall_time_s": walls[-1] if walls else None,
        "last_clean_weight_share": shares[-1] if shares else None,
        "tracked_steps": len(steps),
        "problems": list(run.problems),
    }


def pct(v: float | None) -> str:
    """``0.88301`` -> ``"88.30%"``."""
    return "n/a" if v is None else f"{v * 100:.2f}%"


def ms(v: float | None) -> str:
    """Seconds -> ``"21.63 ms"``."""
    return "n/a" if v is None else f"{v * 1000:.2f} ms"


def secs(v: float | None) -> str:
    """Seconds -> ``"0.87 s"``."""
    return "n/a" if v is None else f"{v:.2f} s"


def table_cells(row: dict[str, Any]) -> list[str]:
    """The formatted cells of one summary row, in :data:`COLUMNS` order."""
    return [
        row["run"],
        row["method"],
        row["engine"],
        str(row["epochs"]),
        pct(row["val_chosen_acc"]) + (" (last)" if row["val_chosen_acc"] is not None
                                      and row["selection"] == NO_VALIDATION else ""),
        pct(row["last_test_acc"]),
        pct(row["best_test_acc"]),
        ms(row["time_per_iter_s"]),
        secs(row["wall_time_s"]),
        pct(row.get("chosen_val_acc")),
    ]


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown(rows: list[dict[str, Any]], problems: dict[str, list[str]], figures: list[str]) -> str:
    """``summary.md``: the table, what is missing, and the figure files.

    Args:
        rows: :func:`summarize` rows, one per run folder that exists.
        problems: run name (or ``"report"``) -> messages.
        figures: PNG file names written beside ``summary.md``.
    """
    lines = ["# famus report", "", "| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    lines += ["| " + " | ".join(_md(c) for c in table_cells(r)) + " |" for r in rows]
    lines += ["", "Test accuracy of the model chosen on validation data (`(last)`: no validation data, the last "
              "epoch), of the last epoch, and the best over epochs (the paper's metric: chosen on the test labels); "
              "mean time per iteration and wall time as in each run's `metrics.jsonl` (time per iteration: mean over "
              "epochs; wall time: training time); the validation accuracy of the chosen epoch. n/a: not recorded "
              "(e.g. no test split)."]
    if any(problems.values()):
        lines += ["", "## Missing or partial data", ""]
        for name, msgs in problems.items():
            lines += [f"- `{_md(name)}`: {_md(m)}" for m in msgs]
    if figures:
        lines += ["", "## Figures", ""] + [f"- [{f}]({f})" for f in figures]
    return "\n".join(lines) + "\n"
