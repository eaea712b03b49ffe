"""Reading run folders for reports, tolerating missing, partial and hostile files.

Nothing here raises on bad run contents: every problem becomes a one-line message in
``Run.problems`` (e.g. ``"no metrics.jsonl (did the run finish an epoch?)"``), and the
plots and tables use whatever is usable. What is read is bounded: at most :data:`MAX_READ`
bytes of a JSONL file, :data:`MAX_LINE_PROBLEMS` messages about its lines (then one line
counting the rest), :data:`MAX_SCORES_BYTES` of ``example_scores.csv``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from famus.train.tracking import TRACKING_FILE
from famus.yamlload import safe_load

METRICS_FILE = "metrics.jsonl"
CONFIG_FILE = "config.yaml"
RUN_FILES = (CONFIG_FILE, METRICS_FILE, "summary.json", "example_scores.csv", "checkpoint.pt", "run.json")
MAX_READ = 64 << 20  # bytes of a JSONL file read
MAX_LINE_PROBLEMS = 5  # messages about bad lines of one file; the rest are counted in one more
MAX_SCORES_BYTES = 256 << 20  # example_scores.csv larger than this is not read
MAX_MESSAGE = 300  # characters of one problem message

# Keys every epoch record of a finished epoch has (famus.train.loop).
METRIC_KEYS = ("epoch", "step", "test_acc", "best_test_acc", "time_per_iter_s", "wall_time_s")


def num(record: dict[str, Any], key: str) -> float | None:
    """``record[key]`` as a finite float, or ``None`` when missing, not a number, NaN or inf."""
    v = record.get(key) if isinstance(record, dict) else None
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


@dataclass
class Run:
    """One run folder as read for a report.

    Attributes:
        path: the folder as given.
        name: display name: the folder name, or enough trailing path parts to be unique.
        exists: whether ``path`` is a folder.
        config: ``config.yaml`` as a dict (empty when missing or unreadable).
        metrics: usable ``metrics.jsonl`` records (dicts), in file order.
        tracking: usable ``tracking.jsonl`` records (dicts), in file order.
        problems: what is missing or partial, one line each.
    """

    path: Path
    name: str = ""
    exists: bool = False
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[dict[str, Any]] = field(default_factory=list)
    tracking: list[dict[str, Any]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)
    class_names: list[str] | None = None
    is_run: bool = False  # holds any of RUN_FILES: a famus run folder, not just any folder

    @property
    def method(self) -> str:
        m = self.config.get("method")
        return str(m) if m is not None else "?"

    @property
    def engine(self) -> str:
        """The meta-gradient engine, ``"-"`` for ERM (no meta gradient)."""
        if self.method == "erm":
            return "-"
        e = self.config.get("meta_grad")
        return str(e) if e is not None else "?"

    @property
    def tracking_expected(self) -> bool:
        """Whether the run tracked its meta gradient (``track_every`` > 0; unknown counts as yes)."""
        every = self.config.get("track_every", "unknown")
        return self.method != "erm" and (every == "unknown" or bool(every))

    @property
    def label(self) -> str:
        """Legend label: folder name plus method/engine, e.g. ``"fm-famus (mwnet/famus)"``."""
        what = self.method if self.method == "erm" else f"{self.method}/{self.engine}"
        if self.config.get("meta_set") == "pseudo":
            what += ", pseudo-clean"
        return f"{self.name} ({what})"


def read_jsonl(path: Path) -> tuple[list[dict[str, Any]], list[str]]:
    """The JSON-object lines of ``path`` and what was wrong with the file.

    Returns:
        ``(records, problems)``; a truncated last line (a run killed while writing) and
        malformed lines are skipped and reported, never raised.
    """
    name = path.name
    if not path.exists():
        return [], [f"no {name}"]
    if not path.is_file():
        return [], [f"{name} is not a file"]
    problems = []
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            data = f.read(MAX_READ)
    except OSError as e:
        return [], [f"cannot read {name}: {e.strerror or e}"]
    if size > MAX_READ:
        data = data[: data.rfind(b"\n") + 1]  # whole lines only
        problems.append(f"{name} holds {size / 2**20:.0f} MiB; read the first {MAX_READ >> 20} MiB only")
    text = data.decode("utf-8", errors="replace")
    numbered = [(i, line) for i, line in enumerate(text.splitlines(), 1) if line.strip()]
    if not numbered:
        return [], problems + [f"{name} is empty"]
    records, bad = [], 0
    last = numbered[-1][0]
    for i, line in numbered:
        try:
            rec = json.loads(line)
        except (json.JSONDecodeError, RecursionError):
            if i == last and not text.endswith("\n"):
                problems.append(f"{name}: the last line is truncated (interrupted while writing?); ignored it")
            else:
                bad += 1
                if bad <= MAX_LINE_PROBLEMS:
                    problems.append(f"{name}: line {i} is not valid JSON; skipped it")
            continue
        if not isinstance(rec, dict):
            bad += 1
            if bad <= MAX_LINE_PROBLEMS:
                problems.append(f"{name}: line {i} is not a JSON object; skipped it")
            continue
        records.append(rec)
    if bad > MAX_LINE_PROBLEMS:
        problems.append(f"{name}: and {bad - MAX_LINE_PROBLEMS} more lines that are not JSON objects; skipped them")
    if not records:
        problems.append(f"{name} has no usable records")
    return records, problems


def _missing_keys(records: list[dict[str, Any]], keys: tuple[str, ...]) -> list[str]:
    out = []
    for key in keys:
        bad = [r for r in records if num(r, key) is None]
        if bad:
            where = [str(r.get("epoch")) for r in bad if num(r, "epoch") is not None]
            at = f" (epoch {', '.join(where)})" if where and len(where) <= 5 else ""
            out.append(f"{METRICS_FILE}: {len(bad)} of {len(records)} records lack a number for {key!r}{at}")
    return out


def load_run(path: str | Path) -> Run:
    """Read ``config.yaml``, ``metrics.jsonl`` and ``tracking.jsonl`` of one run folder."""
    run = Run(Path(path))
    run.name = run.path.name or str(run.path)
    if not run.path.exists():
        run.problems.append("the folder does not exist")
        return run
    if not run.path.is_dir():
        run.problems.append("not a folder")
        return run
    run.exists = True
    run.is_run = any((run.path / f).exists() for f in RUN_FILES)

    cfg_path = run.path / CONFIG_FILE
    if not cfg_path.is_file():
        run.problems.append(f"no {CONFIG_FILE} (method and engine unknown)")
    else:
        try:
            cfg = safe_load(cfg_path.read_text())
        except (OSError, yaml.YAMLError) as e:
            run.problems.append(f"{CONFIG_FILE} is unreadable ({type(e).__name__}); method and engine unknown")
        else:
            if isinstance(cfg, dict):
                run.config = cfg
            else:
                run.problems.append(f"{CONFIG_FILE} is not a mapping; method and engine unknown")

    records, problems = read_jsonl(run.path / METRICS_FILE)
    if problems and problems[0] in (f"no {METRICS_FILE}", f"{METRICS_FILE} is empty"):
        problems[0] += " (did the run finish an epoch?)"
    run.problems += problems
    run.metrics = records
    if records:
        keys = METRIC_KEYS
        if all(num(r, "test_acc") is None for r in records) and any(num(r, "val_acc") is not None for r in records):
            keys = tuple(k for k in keys if k not in ("test_acc", "best_test_acc"))  # no test split: not missing
        run.problems += _missing_keys(records, keys)

    if run.method != "erm":  # ERM runs have no meta gradient to track
        records, problems = read_jsonl(run.path / TRACKING_FILE)
        if problems and problems[0] == f"no {TRACKING_FILE}":
            if not run.tracking_expected:  # --track-every was off: nothing is missing
                problems = []
            else:
                problems[0] += " (tracking was off: no meta-gradient, weight or per-step gate plots)"
        run.problems += problems
        run.tracking = records
    summary = _small_json(run.path / "summary.json")
    run.summary = summary if isinstance(summary, dict) else {}
    names = _small_json(run.path / "classes.json")
    if isinstance(names, list) and all(isinstance(n, str) for n in names):
        run.class_names = names
    run.problems = [p if len(p) <= MAX_MESSAGE else p[: MAX_MESSAGE - 3] + "..." for p in run.problems]
    return run


def _small_json(path: Path, limit: int = 8 << 20) -> Any:
    """A JSON file of at most ``limit`` bytes, or ``None`` (missing, too large, unreadable)."""
    try:
        if not path.is_file() or path.stat().st_size > limit:
            return None
        return json.loads(path.read_text(errors="replace"))
    except (OSError, ValueError, RecursionError):
        return None


def unique_names(runs: list[Run]) -> None:
    """Name each run by the shortest trailing part of its path that no other run shares."""
    parts = [r.path.resolve().parts for r in runs]
    depth = [1] * len(runs)
    while True:
        names = ["/".join(p[-d:]) for p, d in zip(parts, depth)]
        clash = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clash:
            break
        for i in clash:
            depth[i] += 1
    for r, n in zip(runs, names):
        r.name = n
