"""``famus compare``: learning quality, accuracy and speed of methods and engines, over seeds.

Each row of the table is an ordinary ``famus train`` run of one config per seed, in its own folder
``OUT/<row>/seed<S>``:

* ``methods`` x ``engines``: a meta method runs once per engine (row ``<method>-<engine>``); a method
  that takes no engine (``erm``, ``coteaching``, ``prune``) once (row ``<method>``);
* ``rows``: named rows, each the config with its own overrides, e.g. a YAML file (``--rows FILE``)::

      gce: {method: erm, loss: gce}
      mwnet-gce: {method: mwnet, loss: gce}
      mwnet-pseudo: {method: mwnet, meta_set: pseudo}
      dividemix: {method: erm, meta_set: pseudo}
      prune-cleanlab: {method: prune, method_options: {ranker: cleanlab}}

  (a row's keys are config keys whose values replace the config's, ``method_options`` as a whole; the
  row's config is written to ``OUT/rows/<row>.yaml``, which its runs train with; ``--set`` still applies
  to every run);
* one ERM run per seed (row ``erm``; ``erm=False`` / ``--no-erm``: none) for the speed ratio and the
  accuracy baseline.

Every run's config is built and checked before any run starts. Runs go to subprocesses (``jobs`` at a
time, ``threads`` torch threads each); a finished run is skipped and an interrupted one resumed, so a
compare can be rerun to continue it. Every run of a seed sees identical data and noisy labels (rows
that change the data, e.g. ``meta_set: pseudo``'s training set, excepted).

Per row, mean and standard deviation over seeds of:

* ``auroc@S`` and ``lift@S``: weight AUROC and clean-share lift of the log window ending at
  the first logged step ``>= S`` (``steps``);
* ``late_lift`` / ``late_auroc``: mean over the windows at or after step ``late_from``;
* ``onset``: the first logged step whose lift exceeds 0.1 (``None``: never);
* ``last_acc``, ``val_chosen_acc`` (the test accuracy of the epoch chosen on validation data; the last
  epoch's without validation data) and ``best_test_acc`` (the paper's best-on-test, labelled as such);
* ``time_per_iter_s`` and ``x_erm``, its ratio to the same seed's ERM run (an iteration is one step of
  one network: pseudo mode counts each network's steps, co-teaching one step of both networks);
* ``train_time_s`` (the run's training time; for ``prune``, with its ranking's) and ``time_x_erm``, its
  ratio to the same seed's ERM run's (runs side by side share the machine: measure cost quietly).

>>> result = compare("configs/quality-fmnist.yaml", ["exact", "famus"], [1, 2, 3], "runs/quality")  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from famus.atomic import atomic_write_text
from famus.meta.engines import ENGINES
from famus.meta.learner import LAGGED_SUFFIX
from famus.train.config import TrainConfig, load_config, yaml_error
from famus.train.methods import TRAINING_METHODS
from famus.train.metrics import read_metrics
from famus.train.prune import PRUNE_FILE, PRUNED_FILE, RANK_DIR
from famus.train.quality import lift_onset
from famus.train.selection import chosen_from_records
from famus.yamlload import safe_load

_log = logging.getLogger(__name__)

DEFAULT_STEPS = (150, 300, 450)
# files a famus run writes: an interrupted run folder without a checkpoint holds only these, and
# compare may clear it to start over
RUN_FILES = {"config.yaml", "run.json", "noisy_labels.pt", "split.pt", "metrics.jsonl", "metrics.csv",
             "tracking.jsonl", "model_best.pt", "classes.json", "example_scores.csv", "summary.json", "diverged.txt",
             PRUNE_FILE, PRUNED_FILE}
RUN_FILES.add(".famus.lock")  # the lock file a killed run leaves (famus.train.lock): it locks nothing then
SIDECAR = ".sha256"  # a .pt file's checksum (famus.verified)
ROW_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
ROWS_DIR = "rows"  # OUT/rows/<row>.yaml: each named row's config
# a run that stopped because its loss became NaN or inf is a result (the method diverged in this
# setting), not a failure to rerun: compare marks its folder with this file and counts it apart
DIVERGED = "diverged.txt"
DIVERGED_MESSAGE = "became NaN or inf"


@dataclass(frozen=True)
class RunSpec:
    """One training run of a compare: ``method`` with ``engine`` (``None``: the config's, or none for a
    method that takes none), and a named row's config ``overrides``."""

    method: str
    engine: str | None
    seed: int
    row: str | None = None  # a named row (its folder); None: <method>-<engine> or <method>
    overrides: dict[str, Any] = field(default_factory=dict, hash=False)

    @property
    def name(self) -> str:
        if self.row is not None:
            return self.row
        return self.method if self.engine is None else f"{self.method}-{self.engine}"

    def folder(self, out: Path) -> Path:
        return out / self.name / f"seed{self.seed}"


def plan(methods: list[str], engines: list[str], seeds: list[int], erm: bool = True,
         rows: dict[str, dict[str, Any]] | None = None, default_method: str = "mwnet") -> list[RunSpec]:
    """The runs, ERM first (its time is every ratio's denominator); unknown names are errors.

    A meta method runs once per engine, any other method once; ``rows`` (see :func:`read_rows`) add one
    run per seed each (``default_method``: a row's method when it sets none).
    """
    for m in methods:
        TRAINING_METHODS.get(m)
    for e in engines:
        ENGINES.get(e.removesuffix(LAGGED_SUFFIX))
    if not seeds:
        raise ValueError("--seeds needs at least one seed, e.g. --seeds 1,2,3")
    runs = [RunSpec("erm", None, s) for s in seeds] if erm or "erm" in methods else []
    for m in methods:
        if m == "erm":
            continue
        meta = TRAINING_METHODS.get(m).meta
        runs += [RunSpec(m, e if meta else None, s) for e in (engines if meta else [None]) for s in seeds]
    for name, over in (rows or {}).items():
        method = over.get("method", default_method)
        TRAINING_METHODS.get(method)
        runs += [RunSpec(method, None, s, name, over) for s in seeds]
    names = [r.name for r in runs if r.row is not None]
    clash = sorted({r.name for r in runs if r.row is None} & set(names))
    if clash:
        raise ValueError(f"row {clash[0]!r} has the name of another run of the compare; rename the row")
    return runs


def read_rows(path: str | Path) -> dict[str, dict[str, Any]]:
    """A rows file: a YAML mapping of row names (folder names: letters, digits, ``_.+-``) to mappings of
    config overrides. Bad files are one-line ``ValueError`` s."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"rows file {str(p)!r} not found")
    try:
        data = safe_load(p.read_text())
    except yaml.YAMLError as e:
        raise ValueError(f"rows file {str(p)!r} is not valid YAML: {yaml_error(e)}") from None
    if not isinstance(data, dict) or not data:
        raise ValueError(f"rows file {str(p)!r} must map row names to config overrides, e.g. 'gce: {{loss: gce}}'")
    for name, over in data.items():
        if not isinstance(name, str) or not ROW_NAME.fullmatch(name) or name in ("logs", ROWS_DIR):
            raise ValueError(f"rows file {str(p)!r}: row name {name!r} must be a folder name (letters, digits, "
                             f"_.+-; not logs or {ROWS_DIR})")
        if not isinstance(over, dict) or not all(isinstance(k, str) for k in over):
            raise ValueError(f"rows file {str(p)!r}: row {name!r} must map config keys to values, got {over!r}")
    return {name: {k.replace("-", "_"): v for k, v in over.items()} for name, over in data.items()}


def write_row_configs(config: Path, rows: dict[str, dict[str, Any]], folder: Path) -> None:
    """``folder/<row>.yaml``: ``config``'s keys, each row's overrides replacing them."""
    raw = safe_load(config.read_text()) or {}
    base = {k.replace("-", "_"): v for k, v in raw.items() if k != "base"}
    folder.mkdir(parents=True, exist_ok=True)
    for name, over in rows.items():
        atomic_write_text(folder / f"{name}.yaml", f"# famus compare row {name!r}: {config} with {json.dumps(over)}\n"
                          + yaml.safe_dump({**base, **over}, sort_keys=False))


def spec_config(config: Path, spec: RunSpec, rows_dir: Path) -> Path:
    """The config file ``spec`` trains with: its row's, or the compare's."""
    return rows_dir / f"{spec.row}.yaml" if spec.row is not None else config


def run_config(config: Path, spec: RunSpec, extra: list[str] | None = None) -> TrainConfig:
    """The checked config ``famus train`` builds for ``spec`` from ``config`` (the same command line, parsed
    the same way)."""
    from famus.cli import build_parser, config_from_args
    from famus.train.loop import check_names

    args = build_parser().parse_args(_command(config, spec, Path("."), 1, extra or [], False)[3:])
    cfg = config_from_args(args).validate()
    check_names(cfg)
    return cfg


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
    """Whether to resume ``run_dir``; clears an interrupted folder that has no checkpoint yet (a prune run
    that ranked, or began to, resumes)."""
    if (run_dir / "checkpoint.pt").exists() or (run_dir / RANK_DIR).exists():
        return True
    if run_dir.exists():
        unknown = {p.name for p in run_dir.iterdir() if p.name.removesuffix(SIDECAR) not in RUN_FILES}
        if unknown:
            raise ValueError(f"{str(run_dir)!r} holds files famus did not write ({', '.join(sorted(unknown))}); "
                             "move them or choose another --out")
        shutil.rmtree(run_dir)
    return False


def run_all(config: Path, runs: list[RunSpec], out: Path, epochs: int | dict[str, int], jobs: int = 1,
            threads: int = 1, extra: list[str] | None = None, log: Callable[[str], None] | None = None) -> None:
    """Train every unfinished run, ``jobs`` subprocesses at a time; a failed run is an error. ``epochs``: of
    every run, or per row name.

    ``log``: where the one line per started, skipped and finished run goes (default: this module's logger, info).
    """
    log = log or _log.info
    todo = [r for r in runs if not is_finished(r.folder(out), epochs if isinstance(epochs, int) else epochs[r.name])]
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
            cmd = _command(spec_config(config, spec, out / ROWS_DIR), spec, run_dir, threads, extra or [], resume)
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
        "train_time_s": _train_time(run_dir, rows),
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


def _train_time(run_dir: Path, rows: list[dict[str, Any]]) -> float | None:
    """The run's training time (``wall_time_s`` of its last epoch), plus a prune run's ranking time."""
    wall = rows[-1].get("wall_time_s")
    if wall is None:
        return None
    summary = run_dir / "summary.json"
    prune = json.loads(summary.read_text()).get("prune") if summary.exists() else None
    return float(wall) + (float(prune["rank_time_s"]) if isinstance(prune, dict) else 0.0)


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
            for key, ratio in (("time_per_iter_s", "x_erm"), ("train_time_s", "time_x_erm")):
                base = erm.get(seed, {}).get(key)
                m[ratio] = m[key] / base if base and m.get(key) else None
    keys = ["last_acc", "val_chosen_acc", "best_test_acc", "time_per_iter_s", "x_erm", "train_time_s", "time_x_erm",
            *(f"auroc@{s}" for s in steps), *(f"lift@{s}" for s in steps), "late_auroc", "late_lift", "onset"]
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
    head = (["run", "last acc %", "val-chosen %", "best-on-test %", "s/iter", "x ERM", "train s", "time x ERM"]
            + [f"AUROC@{s}" for s in steps] + [f"lift@{s}" for s in steps] + [f"lift >= {late}", "onset step"])
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, t in result["table"].items():
        label = name + (f" ({t['diverged']} of {t['runs']} diverged)" if t.get("diverged") else "")
        cells = [label, _fmt(t["last_acc"], 100, 2), _fmt(t["val_chosen_acc"], 100, 2),
                 _fmt(t["best_test_acc"], 100, 2), _fmt(t["time_per_iter_s"]), _fmt(t["x_erm"], 1, 2),
                 _fmt(t["train_time_s"], 1, 1), _fmt(t["time_x_erm"], 1, 2)]
        cells += [_fmt(t[f"auroc@{s}"]) for s in steps] + [_fmt(t[f"lift@{s}"]) for s in steps]
        cells += [_fmt(t["late_lift"]), _fmt(t["onset"], 1, 0)]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", f"Per seed (lift@{steps[0]} / lift >= {late} / last acc):"]
    for name, seeds in result["runs"].items():
        if any(m.get("diverged") for m in seeds.values()):
            parts = [f"seed {s}: diverged" if m.get("diverged") else f"seed {s}: acc {_pct(m['last_acc'])}"
                     for s, m in seeds.items()]
        elif not any(m.get("late_lift") is not None or m.get(f"lift@{steps[0]}") is not None for m in seeds.values()):
            parts = [f"seed {s}: acc {_pct(m['last_acc'])}" for s, m in seeds.items()]  # no weights to lift
        else:
            parts = [f"seed {s}: {_num(m.get(f'lift@{steps[0]}'))} / {_num(m.get('late_lift'))} / "
                     f"{_pct(m['last_acc'])}" for s, m in seeds.items()]
        lines.append(f"- {name}: " + "; ".join(parts))
    return "\n".join(lines)


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def _num(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"


def compare(config: str | Path, engines: list[str] | None, seeds: list[int], out: str | Path,
            methods: list[str] | None = None, jobs: int = 1, threads: int = 1, steps: tuple[int, ...] = DEFAULT_STEPS,
            late_from: int = 300, extra: list[str] | None = None, erm: bool = True,
            rows: dict[str, dict[str, Any]] | None = None, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Run (or continue) every run of ``config`` (see the module docstring) and summarize.

    Args:
        engines: the meta methods' engines (``None``: the config's ``meta_grad``).
        methods: ``None``: the config's method, unless ``rows`` are given (then only they, and ERM).
        extra: ``KEY=VALUE`` config overrides passed to every run (``famus train --set``).
        rows: named rows of config overrides (:func:`read_rows`).
    """
    config = Path(config)
    cfg = load_config(config).validate()
    if jobs < 1 or threads < 1:
        raise ValueError(f"--jobs and --threads must be >= 1, got {jobs} and {threads}")
    methods = methods if methods is not None else ([] if rows else [cfg.method])
    runs = plan(methods, engines or [cfg.meta_grad], seeds, erm, rows, cfg.method)
    out = Path(out)
    # every run's config, checked before anything is written (a bad row fails the compare, not its run)
    with tempfile.TemporaryDirectory() as tmp:
        write_row_configs(config, rows or {}, Path(tmp))
        epochs = {r.name: run_config(spec_config(config, r, Path(tmp)), r, extra).epochs for r in runs}
    if rows:
        write_row_configs(config, rows, out / ROWS_DIR)
    run_all(config, runs, out, epochs, jobs, threads, extra, log)
    return summarize(runs, out, tuple(steps), late_from)


def _ints(text: str, flag: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise ValueError(f"{flag} must be comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add the ``famus compare`` flags to ``parser``."""
    parser.add_argument("--config", required=True, help="YAML config of every run (e.g. configs/quality-fmnist.yaml)")
    parser.add_argument("--engines", default=None, help="comma-separated engines (optionally +lagged) of the meta "
                        "methods (default: the config's meta_grad)")
    parser.add_argument("--methods", default=None, help="comma-separated methods (default: the config's, unless "
                        "--rows); a meta method runs once per engine, erm, coteaching and prune once")
    parser.add_argument("--rows", default=None, metavar="FILE", help="YAML file of named rows, each the config "
                        "with its own overrides, e.g. 'gce: {method: erm, loss: gce}' (folder OUT/<row>)")
    parser.add_argument("--seeds", default="1,2,3", help="comma-separated seeds")
    parser.add_argument("--out", required=True, help="folder of the runs (OUT/<row>/seed<S>; a row: <method>-<engine>, "
                        "<method> or a --rows name)")
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
    engines = [e.strip() for e in args.engines.split(",") if e.strip()] if args.engines else None
    methods = [m.strip() for m in args.methods.split(",") if m.strip()] if args.methods else None
    rows = read_rows(args.rows) if args.rows else None
    try:
        result = compare(args.config, engines, _ints(args.seeds, "--seeds"), args.out, methods, args.jobs,
                         args.threads, tuple(_ints(args.steps, "--steps")), args.late_from, args.set, not args.no_erm,
                         rows)
    except RuntimeError as e:  # a training run failed: its log says why
        print(f"famus compare: error: {e}", file=sys.stderr)
        return 1
    print(format_table(result))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0
