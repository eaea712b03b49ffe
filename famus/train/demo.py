"""``famus demo``: ERM vs MW-Net (exact) vs MW-Net+FaMUS on Fashion-MNIST with 40% symmetric noise.

All three runs share the seed, the noisy labels and the 1000-example clean meta set.
Sized to finish within 15 minutes on a 2-core CPU: a training subset and a small ResNet,
both named in the printed table. The meta-learning runs track the meta gradient against
exact every 50 steps (not counted as training time), and ``famus report`` renders all three.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from famus.report import make_report
from famus.train.checkpoint import atomic_write_text
from famus.train.config import TrainConfig
from famus.train.loop import train

FULL = dict(train_subset=16000, epochs=7, milestones=[5], batch_size=100, lr=0.05)
QUICK = dict(train_subset=2000, epochs=1, milestones=[], batch_size=50, lr=0.05)

RUNS = [("ERM", "erm", "exact"), ("MW-Net", "mwnet", "exact"), ("MW-Net+FaMUS", "mwnet", "famus")]


def demo_configs(out: str | Path, quick: bool = False, data_dir: str | None = None,
                 threads: int | None = None) -> list[tuple[str, TrainConfig]]:
    """The three run configs, identical but for method and engine."""
    size = QUICK if quick else FULL
    out = Path(out)
    cfgs = []
    for label, method, engine in RUNS:
        cfg = TrainConfig(dataset="fashion-mnist", data_dir=data_dir, noise="symmetric", noise_rate=0.4,
                          meta_per_class=100, model="small-resnet", method=method, meta_grad=engine,
                          weight_decay=5e-4, seed=1, threads=threads, progress=True,
                          track_every=0 if method == "erm" else (10 if quick else 50),
                          out=str(out / label.lower().replace("+", "-")), **size)
        cfgs.append((label, cfg))
    return cfgs


def format_table(rows: list[dict], note: str) -> str:
    head = "| run | test acc (best) | test acc (last) | time / iteration | speed-up over exact MW-Net | wall time |"
    lines = [head, "| --- | --- | --- | --- | --- | --- |"]
    exact = next((r["time_per_iter_s"] for r in rows if r["label"] == "MW-Net"), None)
    for r in rows:
        speed = f"{exact / r['time_per_iter_s']:.2f}x" if exact and r["label"] != "ERM" else "-"
        lines.append(f"| {r['label']} | {r['best_test_acc'] * 100:.2f}% | {r['last_test_acc'] * 100:.2f}% | "
                     f"{r['time_per_iter_s'] * 1000:.1f} ms | {speed} | {r['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n\n" + note + "\n"


def run_demo(out: str | Path = "runs/demo", quick: bool = False, data_dir: str | None = None,
             threads: int | None = None) -> int:
    """Run the three trainings one after another and print one table."""
    out = Path(out)
    cfgs = demo_configs(out, quick, data_dir, threads)
    for _label, cfg in cfgs:  # refuse before training anything, not after the first run
        if Path(cfg.out).exists() and any(Path(cfg.out).iterdir()):
            raise ValueError(f"{cfg.out!r} already holds a run; remove {str(out)!r} or pass another --out")
    rows = []
    for label, cfg in cfgs:
        t0 = time.perf_counter()
        summary = train(cfg)
        rows.append({"label": label, "method": cfg.method, "meta_grad": cfg.meta_grad,
                     "wall_s": time.perf_counter() - t0, **summary})
    c = cfgs[0][1]
    note = (f"Fashion-MNIST, {c.noise_rate:.0%} symmetric label noise, clean meta set of {c.meta_per_class * 10} "
            f"examples; training subset of {c.train_subset} examples (stratified, before the meta split), "
            f"model {c.model}, {c.epochs} epochs, batch {c.batch_size}, lr {c.lr} (x0.1 at epoch "
            f"{', '.join(map(str, c.milestones)) or '-'}), seed {c.seed}; same noisy labels for all runs. "
            f"Time per iteration is the mean wall time of a training iteration (data, all stages, optimizer steps).")
    table = format_table(rows, note)
    atomic_write_text(out / "demo.md", table)
    atomic_write_text(out / "demo.json", json.dumps(rows, indent=2) + "\n")
    report = make_report([cfg.out for _l, cfg in cfgs], out / "report")
    print("\n" + table)
    print(f"Plots: {report['index']} (accuracy vs time, stage times, meta-gradient fidelity, example weights, layers)")
    return 0
