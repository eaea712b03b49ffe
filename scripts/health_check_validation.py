"""The label-free health check against the true weight AUROC, from run folders with injected noise.

    python3 scripts/health_check_validation.py RUN [RUN ...] [--md out.md] [--json out.json]
    python3 scripts/health_check_validation.py runs/results --glob   # every run folder below

For every epoch record with a probe (``health`` in ``metrics.jsonl``, runs with validation data): the
probe's AUCs (random and plausible wrong labels, their maximum: the verdict's AUC), the true weight
AUROC on the same training sample at the same moment (``sample_auroc``), the warnings the current
rule (:func:`famus.train.health.assess`, recomputed from the logged numbers) gives, and whether they
are right. The truth: the weighting works when the true AUROC is at least ``--good`` (0.6), is
inverted when at most ``1 - good``, else it does not separate. A warning is right when the truth is
not "works"; no warning is right when it is. Also the label-free estimate of the noise fraction,
``p = (probe_vs_train - 0.5) / (AUC - 0.5)``, against the realised rate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from famus.report.runs import load_run  # noqa: E402
from famus.train.health import probe_auc, recheck  # noqa: E402


def truth_of(auroc: float, good: float) -> str:
    return "works" if auroc >= good else "inverted" if auroc <= 1 - good else "none"


def run_rows(path: Path, good: float) -> list[dict]:
    """One row per epoch of ``path`` with a probe and a true AUROC."""
    run = load_run(path)
    info = {}
    try:
        info = json.loads((path / "run.json").read_text())
    except (OSError, ValueError):
        pass
    cfg = run.config
    balanced = float(cfg.get("imbalance", 1) or 1) == 1 and cfg.get("loss", "ce") == "ce"
    rows = []
    for r, flags in zip(run.metrics, recheck(run.metrics, run.method, balanced)):
        h = r.get("health")
        if not isinstance(h, dict) or h.get("sample_auroc") is None or probe_auc(h) is None:
            continue
        a, t = probe_auc(h), h["sample_auroc"]
        vs = h.get("probe_vs_train")
        rows.append({
            "run": str(path), "method": run.method, "noise": f"{cfg.get('noise')} {cfg.get('noise_rate')}",
            "epoch": r.get("epoch"), "true_auroc": t, "weight_auroc": r.get("weight_auroc"),
            "probe_random": h.get("probe_flip_auc"), "probe_plausible": h.get("probe_hard_auc"), "probe": a,
            "probe_vs_train": vs, "probe_se": h.get("probe_se"),
            "p_estimate": (vs - 0.5) / (a - 0.5) if vs is not None and abs(a - 0.5) > 0.05 else None,
            "p_realised": info.get("realised_noise_rate"), "test_acc": r.get("test_acc"),
            "flags": flags, "truth": truth_of(t, good),
        })
    return rows


def right(row: dict) -> bool:
    """A warning is right when the weighting does not work; none is right when it does."""
    warned = bool(row["flags"])
    return warned != (row["truth"] == "works")


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    warned = [r for r in rows if r["flags"]]
    bad = [r for r in rows if r["truth"] != "works"]
    err = np.array([r["probe"] - r["true_auroc"] for r in rows]) if rows else np.zeros(0)
    out = {"epochs": n, "runs": len({r["run"] for r in rows}), "right": sum(right(r) for r in rows),
           "warned": len(warned), "warned_right": sum(r["truth"] != "works" for r in warned),
           "truly_bad": len(bad), "bad_warned": sum(bool(r["flags"]) for r in bad),
           "probe_minus_truth_mean": float(err.mean()) if n else None,
           "probe_abs_error_median": float(np.median(np.abs(err))) if n else None}
    for kind in ("probe_random", "probe_plausible"):
        e = [abs(r[kind] - r["true_auroc"]) for r in rows if r[kind] is not None]
        out[f"{kind}_abs_error_median"] = float(np.median(e)) if e else None
    return out


def markdown(rows: list[dict], summary: dict) -> str:
    lines = ["| run | noise | epoch | true AUROC | probe random | probe plausible | verdict AUC "
             "| p estimate (realised) | warnings | right |", "|" + " --- |" * 10]
    for r in rows:
        p = "-" if r["p_estimate"] is None else f"{r['p_estimate']:.2f}"
        p += f" ({r['p_realised']:.2f})" if r["p_realised"] is not None else ""
        fl = "; ".join(f.split(":")[0] for f in r["flags"]) or "-"
        lines.append(f"| {r['run']} | {r['noise']} | {r['epoch']} | {r['true_auroc']:.3f} | "
                     f"{_f(r['probe_random'])} | {_f(r['probe_plausible'])} | {r['probe']:.3f} | {p} | {fl} | "
                     f"{'yes' if right(r) else 'NO'} |")
    s = summary
    lines += ["", f"{s['right']} of {s['epochs']} epoch verdicts right ({s['runs']} runs); warnings raised at "
              f"{s['warned']} epochs, {s['warned_right']} of them where the weighting did not work; "
              f"{s['bad_warned']} of the {s['truly_bad']} epochs where it did not work were warned about. Verdict AUC "
              f"minus true AUROC: mean {s['probe_minus_truth_mean']:+.3f}, median absolute "
              f"{s['probe_abs_error_median']:.3f} (random probe alone {_f(s['probe_random_abs_error_median'])}, "
              f"plausible alone {_f(s['probe_plausible_abs_error_median'])})."]
    return "\n".join(lines) + "\n"


def _f(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run folders (or, with --glob, folders to search)")
    p.add_argument("--glob", action="store_true", help="every folder below the given ones holding metrics.jsonl")
    p.add_argument("--good", type=float, default=0.6, help="true AUROC from which the weighting works")
    p.add_argument("--last", action="store_true", help="the last epoch of each run only")
    p.add_argument("--md", default=None)
    p.add_argument("--json", default=None)
    args = p.parse_args()
    folders = [Path(r) for r in args.runs]
    if args.glob:
        folders = sorted({m.parent for f in folders for m in f.rglob("metrics.jsonl")})
    rows = []
    for f in folders:
        got = run_rows(f, args.good)
        rows += got[-1:] if args.last else got
    if not rows:
        print("no epoch with a probe and a true AUROC (runs need injected noise and validation data)", file=sys.stderr)
        return 1
    summary = summarize(rows)
    md = markdown(rows, summary)
    print(md)
    if args.md:
        Path(args.md).write_text(md)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
