"""The cost column of docs/versus.md: each row's whole training time as a multiple of ERM's, on a quiet machine.

``famus compare`` runs two trainings side by side, so its times measure the machine's load as much as the
method. This trains every row of ``configs/versus/rows.yaml`` on one config, one run at a time, one thread,
``--repeats`` rounds with the rows interleaved (each round in another order), and reports the median training
time of each row (``wall_time_s`` of its last epoch: every step, evaluation excluded; for ``prune`` its
ranking's folds too) and its ratio to ERM's:

    python scripts/versus_timing.py --config configs/versus/mlp-sym60.yaml --repeats 2 --json runs/versus/timing.json
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # this checkout's famus

from famus.compare import _train_time, read_rows, write_row_configs  # noqa: E402
from famus.train.metrics import read_metrics  # noqa: E402


def time_row(config: Path, out: Path, threads: int) -> float:
    """One training of ``config`` into ``out``; its training time in seconds."""
    cmd = [sys.executable, "-m", "famus", "train", "--config", str(config), "--out", str(out), "--threads",
           str(threads), "--no-progress", "--quiet"]
    subprocess.run(cmd, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    return _train_time(out, read_metrics(out))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", type=Path, default=ROOT / "configs/versus/mlp-sym60.yaml")
    p.add_argument("--rows", type=Path, default=ROOT / "configs/versus/rows.yaml")
    p.add_argument("--only", default=None, help="comma-separated row names (default: every row)")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    rows = read_rows(args.rows)
    if args.only:
        rows = {k: v for k, v in rows.items() if k in args.only.split(",")}
    if "erm" not in rows:
        raise SystemExit("the rows need an 'erm' row (the denominator)")
    times: dict[str, list[float]] = {name: [] for name in rows}
    order = list(rows)
    with tempfile.TemporaryDirectory() as tmp:
        write_row_configs(args.config, {k: {**v, "seed": args.seed} for k, v in rows.items()}, Path(tmp) / "rows")
        for r in range(args.repeats):
            random.Random(r).shuffle(order)  # interleaved, another order each round: slow drifts hit all rows
            for name in order:
                t = time_row(Path(tmp) / "rows" / f"{name}.yaml", Path(tmp) / f"{name}-{r}", args.threads)
                times[name].append(t)
                print(f"round {r + 1}: {name} {t:.1f} s", file=sys.stderr)
    erm = statistics.median(times["erm"])
    result = {"config": str(args.config.relative_to(ROOT) if args.config.is_absolute() else args.config),
              "threads": args.threads, "repeats": args.repeats, "seed": args.seed, "erm_s": erm,
              "rows": {name: {"train_s": statistics.median(ts), "train_s_all": ts,
                              "x_erm": statistics.median(ts) / erm} for name, ts in times.items()}}
    for name, row in result["rows"].items():
        print(f"| {name} | {row['train_s']:.1f} s | {row['x_erm']:.2f}x |")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
