"""The tables of docs/results.md from the JSON files ``scripts/results.sh`` leaves (``famus compare --json``).

    python scripts/results_page.py runs/results > /tmp/tables.md

Prints markdown: a Table 1 counterpart (accuracy by noise setting), one table per setting with every
number, and the ablation. The reading around the tables in docs/results.md is written by hand.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

SETTINGS = [("sym20", "20% symmetric"), ("sym40", "40% symmetric"), ("sym60", "60% symmetric"), ("pair40", "40% pair")]
ROWS = ["erm", "l2r-exact", "l2r-fd", "l2r-famus", "mwnet-exact", "mwnet-fd", "mwnet-famus",
        "mlc-exact", "mlc-fd", "mlc-famus"]
ABLATION = [("famus-k2", "FaMUS, K = 2"), ("famus-no-lg", "FaMUS without L_g (lambda_g = 0)"),
            ("block-top", "fixed top layers (hidden4, fc): `block`"), ("random-s2", "2 random layers: `random`, s = 2"),
            ("famus-fd", "FaMUS over fd: `famus-fd`")]


def _ms(s: dict | None, scale: float = 100.0, digits: int = 2) -> str:
    if not s:
        return "-"
    return f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"


def _name(row: str) -> str:
    if row == "erm":
        return "ERM"
    method, engine = row.split("-", 1)
    label = {"l2r": "L2R", "mwnet": "MW-Net", "mlc": "MLC"}[method]
    return f"{label}, {engine}" + (" (default)" if engine == "fd" else "")


def _diverged(t: dict) -> str:
    return f" ({t['diverged']}/{t['runs']} diverged)" if t.get("diverged") else ""


def table1(results: dict[str, dict]) -> str:
    """Validation-chosen test accuracy, mean ± std over seeds, one column per noise setting."""
    have = [(k, label) for k, label in SETTINGS if k in results]
    lines = ["| method | " + " | ".join(label for _, label in have) + " |", "|---" * (len(have) + 1) + "|"]
    for row in ROWS:
        if not any(row in results[k]["table"] for k, _ in have):
            continue
        cells = []
        for k, _ in have:
            t = results[k]["table"].get(row)
            cells.append("-" if t is None else _ms(t["val_chosen_acc"]) + _diverged(t))
        lines.append(f"| {_name(row)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def setting_table(result: dict, rows: list[tuple[str, str]]) -> str:
    """Every number of one setting: accuracy (validation-chosen, last), weight AUROC and lift, onset, time."""
    late = result["late_from"]
    head = ["run", "val-chosen acc %", "last acc %", f"weight AUROC (steps >= {late})",
            f"clean-share lift (>= {late})", "onset step"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for key, label in rows:
        t = result["table"].get(key)
        if t is None:
            continue
        reweights = not key.startswith("mlc")  # MLC corrects the loss; its weights are uniform by design
        quality = [_ms(t["late_auroc"], 1, 3), _ms(t["late_lift"], 1, 3), _ms(t["onset"], 1, 0)] if reweights \
            else ["n/a (uniform)"] * 3
        lines.append("| " + " | ".join([label + _diverged(t), _ms(t["val_chosen_acc"]), _ms(t["last_acc"]), *quality])
                     + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    root = Path(argv[0] if argv else "runs/results")
    results = {k: json.loads((root / f"{k}.json").read_text()) for k, _ in SETTINGS if (root / f"{k}.json").exists()}
    print("### Accuracy (validation-chosen), mean ± std over seeds 1-3\n")
    print(table1(results) + "\n")
    for k, label in SETTINGS:
        if k in results:
            print(f"### {label}\n")
            print(setting_table(results[k], [(r, _name(r)) for r in ROWS]) + "\n")
    ablation = {"mwnet-famus": results["sym60"]["table"]["mwnet-famus"]} if "sym60" in results else {}
    rows = [("mwnet-exact", "exact"), ("mwnet-fd", "fd (default)"), ("mwnet-famus", "FaMUS (K = 4, L_g on)")]
    merged = {"late_from": results["sym60"]["late_from"] if "sym60" in results else 0, "table": dict(ablation)}
    if "sym60" in results:
        merged["table"].update({r: results["sym60"]["table"][r] for r, _ in rows[:2]})
    for name, label in ABLATION:
        path = root / "ablation" / f"{name}.json"
        if path.exists():
            t = next(iter(json.loads(path.read_text())["table"].values()))
            merged["table"][name] = t
            rows.append((name, label))
    print("### Ablation: MW-Net, 60% symmetric\n")
    print(setting_table(merged, rows) + "\n")
    low = root / "sym60-lr0.01.json"
    if low.exists():
        print("### lr 0.01: ERM, L2R and MW-Net, 60% symmetric\n")
        print(setting_table(json.loads(low.read_text()), [(r, _name(r)) for r in ROWS]) + "\n")
    timing = root / "timing.json"
    if timing.exists():
        print("### Time per iteration (famus bench, one thread, quiet machine)\n")
        print(timing_table(json.loads(timing.read_text())) + "\n")
    return 0


def timing_table(result: dict) -> str:
    """``scripts/results_timing.py``'s rows: iteration time, its multiple of ERM, speed-up over exact."""
    exact = {r["method"]: r["x_erm"] for r in result["rows"] if r["engine"] == "exact"}
    lines = ["| run | ms / iteration | x ERM | speed-up over exact |", "|---|---|---|---|"]
    for r in result["rows"]:
        speed = exact[r["method"]] / r["x_erm"]
        lines.append(f"| {r['run']} | {r['iteration_ms']:.1f} | {r['x_erm']:.2f} | {speed:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
