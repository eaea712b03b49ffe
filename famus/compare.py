"""``famus compare``: learning quality and speed of engines and methods, over seeds.

Each (method, engine, seed) is an ordinary ``famus train`` run of one config, in its own folder
``OUT/<method>-<engine>/seed<S>``, plus one ERM run per seed (``OUT/erm/seed<S>``) for the speed
ratio and the accuracy baseline. Runs go to subprocesses (``jobs`` at a time, ``threads`` torch
threads each); a finished run is skipped and an interrupted one resumed, so a compare can be
rerun to continue it. Every run of a seed sees identical data and noisy labels.

Per (method, engine), mean and standard deviation over seeds of:

* ``auroc@S`` and ``lift@S``: weight AUROC and clean-share lift of the log window ending at
  the first logged step ``>= S`` (``steps``);
* ``late_lift`` / ``late_auroc``: mean over the windows at or after step ``late_from``;
* ``onset``: the first logged step whose lift exceeds 0.1 (``None``: never);
* ``last_acc``, ``val_chosen_acc`` (the test accuracy of the epoch chosen on validation data; the last
  epoch's without validation data) and ``best_test_acc`` (the paper's best-on-test, labelled as such);
* ``time_per_iter_s`` and ``x_erm``, its ratio to the same seed's ERM run.

>>> result = compare("configs/quality-fmnist.yaml", ["exact", "famus"], [1, 2, 3], "runs/quality")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from famus.meta.engines import ENGINES
from famus.meta.learner import LAGGED_SUFFIX
from famus.meta.methods import METHODS
from famus.train.config import load_config
from famus.train.metrics import read_metrics
from famus.train.quality import lift_onset
from famus.train.selection import chosen_from_records

_log = logging.getLogger(__name__)

DEFAULT_STEPS = (150, 300, 450)
# files a famus run writes: an interrupted run folder without a checkpoint holds only these, and
# compare may clear it to start over
RUN_FILES = {"config.yaml", "run.json", "noisy_labels.pt", "split.pt", "metrics.jsonl", "metrics.csv",
             "tracking.jsonl", "model_best.pt", "classes.json", "example_scores.csv", "summary.json", "diverged.txt"}
RUN_FILES.add(".famus.lock")  # the lock file a killed run leaves (famus.train.lock): it locks nothing then
# a run that stopped because its loss became NaN or inf is a result (the method diverged in this
# setting), not a failure to rerun: compare marks its folder with this file and counts it apart
DIVERGED = "diverged.txt"
DIVERGED_MESSAGE = "became NaN or inf"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a compare."""

    method: str
    engine: str | None  # None for ERM
    seed: int

    @property
    def name(self) -> str:
        return "erm" if self.method == "erm" else f"{self.method}-{self.engine}"

    def folder(self, out: Path) -> Path:
        return out / self.name / f"seed{self.seed}"


def plan(methods: list[str], engines: list[str], seeds: list[int], erm: bool = True) -> list[RunSpec]:
    """The runs, ERM first (its time is every ratio's denominator); unknown names are errors."""
    for m in methods:
        if m != "erm":
            METHODS.get(m)
    for e in engines:
        ENGINES.get(e.removesuffix(LAGGED_SUFFIX))
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 1,2,3")
    runs = [RunSpec("erm", None, s) for s in seeds] if erm or "erm" in methods else []
    runs += [RunSpec(m, e, s) for m in methods if m != "erm" for e in engines for s in seeds]
    return runs


def is_finished(run_dir: Path, epochs: int) -> bool:
    """Whether ``run_dir`` holds a complete run of ``epochs`` epochs, or one that diverged."""
    if (run_dir / DIVERGED).exists():
        return True
    rows = read_metrics(run_dir)
    return bool(rows) and rows[-1].get("epoch") == epochs and (run_dir / "checkpoint.pt").exists()


def _command(config: Path, spec: RunSpec, run_dir: Path, threads: int, extra: list[str], resume: bool) -> list[str]:
    cmd = [sys.executable, "-m", "famus", "train", "--config", str(config), "--method", spec.method,
           "--seed", str(spec.seed), "--out", str(run_dir), "--threads", str(threads), "--no-progress"]
    if spec.engine is not None:
        cmd += ["--meta-grad", spec.engine]
    for item in extra:
        cmd += ["--set", item]
    return cmd + (["--resume"] if resume else [])


def _prepare(run_dir: Path) -> bool:
    """Whether to resume ``run_dir``; clears an interrupted folder that has no checkpoint yet."""
    if (run_dir / "checkpoint.pt").exists():
        return True
    if run_dir.exists():
        unknown = {p.name for p in run_dir.iterdir()} - RUN_FILES
        if unknown:
            raise ValueError(f"{str(run_dir)!r} holds files famus did not write ({', '.join(sorted(unknown))}); "
                             "move them or choose another --out")
        shutil.rmtree(run_dir)
    return False


def run_all(config: Path, runs: list[RunSpec], out: Path, epochs: int, jobs: int = 1, threads: int = 1,
            extra: list[str] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Train every unfinished run, ``jobs`` subprocesses at a time; a failed run is an error.

    ``log``: where the one line per started, skipped and finished run goes (default: this module's logger, info).
    """
    log = log or _log.info
    todo = [r for r in runs if not is_finished(r.folder(out), epochs)]
    for r in runs:
        if r not in todo:
            log(f"skip {r.name} seed {r.seed}: finished")
    logs = out / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    active: list[tuple[RunSpec, subprocess.Popen, float]] = []
    failed: list[str] = []
    while todo or active:
        while todo and len(active) < jobs:
            spec = todo.pop(0)
            run_dir = spec.folder(out)
            resume = _prepare(run_dir)
            cmd = _command(config, spec, run_dir, threads, extra or [], resume)
            log(f"{'resume' if resume else 'start'} {spec.name} seed {spec.seed}")
            with (logs / f"{spec.name}-seed{spec.seed}.log").open("a") as f:
                active.append((spec, subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT), time.time()))
        time.sleep(0.5)
        for item in list(active):
            spec, proc, t0 = item
            if proc.poll() is None:
                continue
            active.remove(item)
            log_file = logs / f"{spec.name}-seed{spec.seed}.log"
            status = "done" if proc.returncode == 0 else _diverged(proc.returncode, log_file, spec.folder(out))
            log(f"{status}: {spec.name} seed {spec.seed} in {time.time() - t0:.0f} s")
            if status.startswith("FAILED"):
                failed.append(f"{spec.name} seed {spec.seed} (log: {logs / f'{spec.name}-seed{spec.seed}.log'})")
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")


def _diverged(returncode: int, log_file: Path, run_dir: Path) -> str:
    """``"diverged"`` (and the folder marked) when the run stopped on a NaN/inf loss, else ``"FAILED ..."``."""
    lines = [x for x in log_file.read_text(errors="replace").splitlines() if DIVERGED_MESSAGE in x]
    if not lines:
        return f"FAILED (exit {returncode})"
    (run_dir / DIVERGED).write_text(lines[-1] + "\n")
    return "diverged"


def _window_at(windows: list[dict[str, Any]], step: int) -> dict[str, Any] | None:
    return next((w for w in windows if w["step"] >= step), None)


def run_metrics(run_dir: Path, steps: tuple[int, ...] = DEFAULT_STEPS, late_from: int = 300) -> dict[str, Any]:
    """One run's numbers (see the module docstring) from its ``metrics.jsonl``."""
    rows = read_metrics(run_dir)
    if (run_dir / DIVERGED).exists():  # its accuracies are those of the last good epoch: not comparable
        its = [r["time_per_iter_s"] for r in rows]
        return {"diverged": True, "time_per_iter_s": statistics.fmean(its) if its else None}
    if not rows:
        raise ValueError(f"{str(run_dir)!r} has no metrics.jsonl records")
    windows = [w for r in rows for w in r.get("quality_steps", [])]
    tests = [r["test_acc"] for r in rows if r.get("test_acc") is not None]
    out: dict[str, Any] = {
        "last_acc": rows[-1].get("test_acc"),
        "val_chosen_acc": chosen_from_records(rows)["val_chosen_acc"],
        "best_test_acc": max(tests) if tests else None,
        "time_per_iter_s": statistics.fmean(r["time_per_iter_s"] for r in rows),
    }
    if windows:
        for s in steps:
            w = _window_at(windows, s)
            out[f"auroc@{s}"] = None if w is None else w["weight_auroc"]
            out[f"lift@{s}"] = None if w is None else w["clean_lift"]
        late = [w for w in windows if w["step"] >= late_from]
        for key, field in (("late_lift", "clean_lift"), ("late_auroc", "weight_auroc")):
            vals = [w[field] for w in late if w[field] is not None]
            out[key] = statistics.fmean(vals) if vals else None
        out["onset"] = lift_onset(windows)
        out["v_curve"] = rows[-1].get("v_curve")
    return out


def _stats(values: list[Any]) -> dict[str, float | None] | None:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return {"mean": statistics.fmean(vals), "std": sd, "n": len(vals), "missing": len(values) - len(vals)}


def summarize(runs: list[RunSpec], out: Path, steps: tuple[int, ...] = DEFAULT_STEPS,
              late_from: int = 300) -> dict[str, Any]:
    """Per-run numbers and, per (method, engine), mean and std over seeds."""
    per_run: dict[str, dict[int, dict[str, Any]]] = {}
    for r in runs:
        per_run.setdefault(r.name, {})[r.seed] = run_metrics(r.folder(out), steps, late_from)
    erm = per_run.get("erm", {})
    for seeds in per_run.values():
        for seed, m in seeds.items():
            base = erm.get(seed, {}).get("time_per_iter_s")
            m["x_erm"] = m["time_per_iter_s"] / base if base and m["time_per_iter_s"] else None
    keys = ["last_acc", "val_chosen_acc", "best_test_acc", "time_per_iter_s", "x_erm", *(f"auroc@{s}" for s in steps),
            *(f"lift@{s}" for s in steps), "late_auroc", "late_lift", "onset"]
    table = {}
    for name, seeds in per_run.items():
        ok = [m for m in seeds.values() if not m.get("diverged")]
        table[name] = {k: _stats([m.get(k) for m in ok]) for k in keys}
        table[name]["diverged"] = len(seeds) - len(ok)
        table[name]["runs"] = len(seeds)
    return {"steps": list(steps), "late_from": late_from, "runs": per_run, "table": table}


def _fmt(s: dict[str, float | None] | None, scale: float = 1.0, digits: int = 3) -> str:
    if s is None:
        return "-"
    text = f"{s['mean'] * scale:.{digits}f} ± {s['std'] * scale:.{digits}f}"
    return text + (f" ({s['missing']} never)" if s["missing"] else "")


def format_table(result: dict[str, Any]) -> str:
    """A markdown table: one row per (method, engine), mean ± std over seeds, then per-seed lifts."""
    steps, late = result["steps"], result["late_from"]
    head = (["run", "last acc %", "val-chosen %", "best-on-test %", "s/iter", "x ERM"] + [f"AUROC@{s}" for s in steps]
            + [f"lift@{s}" for s in steps] + [f"lift >= {late}", "onset step"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, t in result["table"].items():
        label = name + (f" ({t['diverged']} of {t['runs']} diverged)" if t.get("diverged") else "")
        cells = [label, _fmt(t["last_acc"], 100, 2), _fmt(t["val_chosen_acc"], 100, 2),
                 _fmt(t["best_test_acc"], 100, 2), _fmt(t["time_per_iter_s"]), _fmt(t["x_erm"], 1, 2)]
        cells += [_fmt(t[f"auroc@{s}"]) for s in steps] + [_fmt(t[f"lift@{s}"]) for s in steps]
        cells += [_fmt(t["late_lift"]), _fmt(t["onset"], 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Per seed (lift@{steps[0]} / lift >= {late} / last acc):"]
    for name, seeds in result["runs"].items():
        if any(m.get("diverged") for m in seeds.values()):
            parts = [f"seed {s}: diverged" if m.get("diverged") else f"seed {s}: acc {_pct(m['last_acc'])}"
                     for s, m in seeds.items()]
        elif name == "erm":
            parts = [f"seed {s}: acc {_pct(m['last_acc'])}" for s, m in seeds.items()]
        else:
            parts = [f"seed {s}: {_num(m.get(f'lift@{steps[0]}'))} / {_num(m.get('late_lift'))} / "
                     f"{_pct(m['last_acc'])}" for s, m in seeds.items()]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def compare(config: str | Path, engines: list[str], seeds: list[int], out: str | Path, methods: list[str] | None = None,
            jobs: int = 1, threads: int = 1, steps: tuple[int, ...] = DEFAULT_STEPS, late_from: int = 300,
            extra: list[str] | None = None, erm: bool = True,
            log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) every (method, engine, seed) of ``config`` and summarize; see the module docstring.

    Args:
        extra: ``KEY=VALUE`` config overrides passed to every run (``famus train --set``).
    """
    config = Path(config)
    cfg = load_config(config).validate()
    if jobs < 1 or threads < 1:
        raise ValueError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    runs = plan(methods or [cfg.method], engines, seeds, erm)
    out = Path(out)
    run_all(config, runs, out, cfg.epochs, jobs, threads, extra, log)
    return summarize(runs, out, tuple(steps), late_from)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``famus compare`` flags to ``parser``."""
    parser.add_argument("--config", required=True, help="YAML config of every run (e.g. configs/quality-fmnist.yaml)")
    parser.add_argument("--engines", required=True, help="comma-separated engine names (optionally +lagged)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: the config's)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--out", required=True, help="folder of the runs (OUT/<method>-<engine>/seed<S>)")
    parser.add_argument("--jobs", type=int, default=1, help="runs side by side (2 on a 2-core machine, --threads 1)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per run")
    parser.add_argument("--steps", default=",".join(map(str, DEFAULT_STEPS)), help="steps for AUROC@ and lift@")
    parser.add_argument("--late-from", type=int, default=300, help="late lift: mean over logged steps >= this")
    parser.add_argument("--no-erm", action="store_true", help="no ERM runs (then no x ERM column)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override for every run")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result as JSON")
    return parser


def run_cli(args: argparse.Namespace) -> int:
    """Run :func:`compare` from parsed arguments; print the table and write ``--json``."""
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    try:
        result = compare(args.config, engines, _ints(args.seeds, "--seeds"), args.out, methods, args.jobs,
                         args.threads, tuple(_ints(args.steps, "--steps")), args.late_from, args.set, not args.no_erm)
    except RuntimeError as e:  # a training run failed: its log says why
        print(f"famus compare: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
