"""docs/versus.md's tables, from the ``famus compare`` JSON files of ``scripts/versus.sh`` and the quiet timing.

    python scripts/versus_page.py runs/versus > runs/versus/tables.md

Reads ``OUT/<column>.json`` (one compare per column, rows of configs/versus/rows.yaml; ``OUT/<column>-extra.json``
adds rows) and
``OUT/timing.json`` (scripts/versus_timing.py); prints markdown: the validation-chosen accuracy of every row
in every column with the cost and whether it needs a trusted set, the last-epoch accuracy, and per column the
weight quality of the meta methods.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

COLUMNS = [  # (file stem, heading)
    ("mlp-sym40", "40% sym."),
    ("mlp-sym60", "60% sym."),
    ("mlp-pair40", "40% pair"),
    ("mlp-inst40", "40% instance"),
    ("conv-inst40", "40% instance, conv"),
]
ROWS = [  # (row, label, needs a trusted set)
    ("erm", "ERM", False),
    ("gce", "GCE (q 0.7)", False),
    ("sce", "SCE (alpha 0.1, beta 1)", False),
    ("coteaching", "Co-teaching", False),
    ("prune-cleanlab", "Prune and retrain (cleanlab, 5 folds)", False),
    ("dividemix", "DivideMix", False),
    ("mwnet-pseudo", "MW-Net, pseudo-clean meta set (the paper's recipe)", False),
    ("mwnet", "MW-Net, default recipe", True),
    ("mwnet-every1", "MW-Net, every step", True),
    ("mwnet-gce", "MW-Net over GCE, default recipe", True),
    ("mwnet-sce", "MW-Net over SCE, default recipe", True),
    ("mwnet-sce-every1", "MW-Net over SCE, every step", True),
    ("mlc", "MLC, default recipe", True),
    ("mlc-every1", "MLC, every step", True),
    ("l2r", "L2R (every step)", True),
]


def _load(out: Path) -> tuple[dict[str, dict], dict | None]:
    files = {stem: out / f"{stem}.json" for stem, _ in COLUMNS}
    cols = {stem: json.loads(f.read_text()) for stem, f in files.items() if f.exists()}
    for stem, data in cols.items():  # OUT/<column>-extra.json: more rows of the same column (rows-extra.yaml)
        extra = out / f"{stem}-extra.json"
        if extra.exists():
            data["table"].update(json.loads(extra.read_text())["table"])
    timing = out / "timing.json"
    return cols, json.loads(timing.read_text()) if timing.exists() else None


def _cell(t: dict | None, key: str, bold: bool = False) -> str:
    if t is None:
        return "-"
    s = t.get(key)
    diverged = t.get("diverged", 0)
    if s is None:
        return f"- ({diverged}/{t.get('runs')} diverged)" if diverged else "-"
    text = f"{s['mean'] * 100:.2f} ± {s['std'] * 100:.2f}"
    text = f"**{text}**" if bold else text
    return text + (f" ({diverged}/{t['runs']} diverged)" if diverged else "")


def _best(cols: dict[str, dict], key: str, rows: list[str]) -> dict[str, str | None]:
    """Per column, the row (among ``rows``) with the highest mean of ``key``."""
    out = {}
    for stem, data in cols.items():
        means = {r: data["table"][r][key]["mean"] for r in rows if r in data["table"] and data["table"][r].get(key)}
        out[stem] = max(means, key=means.get) if means else None
    return out


def accuracy_table(cols: dict[str, dict], timing: dict | None, key: str) -> str:
    """Rows x columns of ``key`` (``val_chosen_acc`` or ``last_acc``), the best of each group in bold."""
    present = [(s, h) for s, h in COLUMNS if s in cols]
    head = ["method", "trusted set", "cost (x ERM)"] + [h for _, h in present]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    best = {trusted: _best(cols, key, [r for r, _, t in ROWS if t == trusted]) for trusted in (False, True)}
    for row, label, trusted in ROWS:
        if not any(row in cols[s]["table"] for s, _ in present):
            continue
        cost = timing["rows"].get(row) if timing else None
        cells = [label, "yes" if trusted else "no", f"{cost['x_erm']:.2f}" if cost else "-"]
        cells += [_cell(cols[s]["table"].get(row), key, best[trusted][s] == row) for s, _ in present]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def quality_table(cols: dict[str, dict]) -> str:
    """Per column, the meta methods' weight AUROC (late windows) and onset step."""
    present = [(s, h) for s, h in COLUMNS if s in cols]
    head = ["method"] + [h for _, h in present]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row, label, _ in ROWS:
        cells, any_value = [label], False
        for s, _ in present:
            t = cols[s]["table"].get(row) or {}
            a, o = t.get("late_auroc"), t.get("onset")
            if a is None:
                cells.append("-")
                continue
            any_value = True
            if a["mean"] == 0.5 and a["std"] == 0:  # MLC: uniform weights (it corrects labels instead)
                cells.append("n/a (uniform weights)")
                continue
            onset = f", onset {o['mean']:.0f}" if o else ""
            cells.append(f"{a['mean']:.3f} ± {a['std']:.3f}{onset}")
        if any_value:
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    out = Path((argv or sys.argv[1:])[0])
    cols, timing = _load(out)
    if not cols:
        print(f"no compare JSON in {out}", file=sys.stderr)
        return 2
    print("### Validation-chosen test accuracy (%), mean ± std over seeds 1-3\n")
    print(accuracy_table(cols, timing, "val_chosen_acc"))
    print("\n### Last-epoch test accuracy (%), mean ± std over seeds 1-3\n")
    print(accuracy_table(cols, timing, "last_acc"))
    print("\n### Weight AUROC of the meta methods (mean over the second half's log windows) and onset step\n")
    print(quality_table(cols))
    if timing:
        n = timing["repeats"]
        rounds = "each row timed once" if n == 1 else f"median of {n} interleaved rounds"
        print(f"\nCost: training time as a multiple of ERM's on `{timing['config']}` (one thread, one run at a "
              f"time, {rounds}; ERM {timing['erm_s']:.1f} s).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
