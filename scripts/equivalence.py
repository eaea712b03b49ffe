"""Same seeds, same metrics? A before/after check for refactors of the training loop and the engines.

Trains a grid of tiny digits runs (clean and pseudo meta-set modes; ERM, L2R, MW-Net and MLC; the
``exact``, ``fd`` and ``famus`` engines) in one thread and writes every per-epoch metric that does
not measure time to a JSON file. Run it on two commits and compare the files:

    python scripts/equivalence.py --out /tmp/before.json          # on the old commit
    python scripts/equivalence.py --out /tmp/after.json           # on the new one
    python scripts/equivalence.py --compare /tmp/before.json /tmp/after.json

Equal means bitwise equal floats (the runs are deterministic on one CPU thread).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's famus, not an installed one

TIME_KEYS = ("time", "wall", "_s")  # keys that measure time (differ run to run)

COMMON = dict(dataset="digits", model="mlp", epochs=3, batch_size=64, lr=0.05, noise="symmetric",
              noise_rate=0.5, progress=False, seed=2, threads=1, log_every=5)
CLEAN = dict(meta_per_class=10, val_per_class=5)
PSEUDO = dict(meta_set="pseudo", meta_per_class=0, pseudo_options={"warmup_epochs": 1, "rampup_epochs": 1})
ENGINES = ("exact", "fd", "famus")


def grid() -> list[tuple[str, dict]]:
    """(name, config) of every run: ERM once per mode, each meta method with each engine."""
    runs = [("clean-erm", dict(COMMON, **CLEAN, method="erm"))]
    for method in ("l2r", "mwnet", "mlc"):
        for engine in ENGINES:
            runs.append((f"clean-{method}-{engine}", dict(COMMON, **CLEAN, method=method, meta_grad=engine)))
    for method in ("mwnet", "l2r"):
        for engine in ENGINES:
            runs.append((f"pseudo-{method}-{engine}", dict(COMMON, **PSEUDO, method=method, meta_grad=engine)))
    return runs


def _timeless(row: dict) -> dict:
    return {k: v for k, v in row.items() if not any(t in k for t in TIME_KEYS)}


def run_all(out: Path, only: str | None) -> None:
    from famus.train import train
    from famus.train.metrics import read_metrics

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in grid():
            if only and only not in name:
                continue
            run_dir = Path(tmp) / name
            try:
                train(dict(cfg, out=str(run_dir)))
                rows = read_metrics(run_dir)
                results[name] = [_timeless(r) for r in rows]
            except Exception as e:  # a run the commit refuses is part of its behaviour
                results[name] = {"error": f"{type(e).__name__}: {e}"}
            print(name, "error" if isinstance(results[name], dict) else f"{len(results[name])} rows", flush=True)
    out.write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")


def _added_keys(xa, xb) -> set[str] | None:
    """The keys only ``xb``'s rows have, when every key both have is equal; else ``None``."""
    if not (isinstance(xa, list) and isinstance(xb, list)) or len(xa) != len(xb):
        return None
    added: set[str] = set()
    for p, q in zip(xa, xb):
        if set(p) - set(q) or any(p[k] != q[k] for k in p):
            return None
        added |= set(q) - set(p)
    return added


def compare(a: Path, b: Path) -> int:
    ra, rb = json.loads(a.read_text()), json.loads(b.read_text())
    bad = 0
    for name in sorted(set(ra) | set(rb)):
        if ra.get(name) == rb.get(name):
            print(f"{name}: identical")
            continue
        added = _added_keys(ra.get(name), rb.get(name))
        if added is not None:
            print(f"{name}: identical values; new keys {sorted(added)}")
            continue
        bad += 1
        print(f"{name}: DIFFERENT")
        xa, xb = ra.get(name), rb.get(name)
        if isinstance(xa, list) and isinstance(xb, list):
            for i, (p, q) in enumerate(zip(xa, xb)):
                for k in sorted(set(p) | set(q)):
                    if p.get(k) != q.get(k):
                        print(f"  row {i} {k}: {p.get(k)!r} -> {q.get(k)!r}")
        else:
            print(f"  {xa!r:.300} -> {xb!r:.300}")
    print(f"{len(set(ra) | set(rb)) - bad} with identical values, {bad} different")
    return 1 if bad else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, help="write the grid's metrics here")
    p.add_argument("--only", default=None, help="only runs whose name contains this")
    p.add_argument("--compare", nargs=2, type=Path, metavar=("BEFORE", "AFTER"))
    args = p.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not args.out:
        p.error("--out or --compare")
    run_all(args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
