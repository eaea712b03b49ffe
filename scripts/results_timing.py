"""The time column of docs/results.md: ``famus bench`` on the results page's model, on a quiet machine.

``famus compare`` runs two trainings side by side, so its times measure the machine's load as much as
the engine. This times every (method, engine) of the page in one process, interleaved with an ERM step
of the same model (one thread, as the page's runs), and prints a markdown table of iteration time as a
multiple of ERM and the speed-up over ``exact``:

    python scripts/results_timing.py --json runs/results/timing.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # this checkout's famus

from results_page import timing_table  # noqa: E402 (scripts/, beside this file)

from famus.bench import bench  # noqa: E402
from famus.models.tiny import mlp  # noqa: E402

HIDDEN = [256] * 5  # configs/results-fmnist-*.yaml
CALLS = [  # (label prefix, method, engines, options)
    ("MW-Net", "mwnet", ["exact", "fd", "famus", "famus-fd", "jvp"], {}),
    ("MW-Net", "mwnet", ["block"], {"layers": ["hidden4", "fc"]}),
    ("MW-Net", "mwnet", ["random"], {"s": 2}),
    ("MW-Net, FaMUS K = 2", "mwnet", ["famus"], {"k": 2}),
    ("MW-Net, FaMUS without L_g", "mwnet", ["famus"], {"lambda_g": 0.0}),
    ("L2R", "l2r", ["exact", "fd", "famus"], {}),
    ("MLC", "mlc", ["exact", "fd", "famus"], {}),
]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = []
    for label, method, engines, options in CALLS:
        r = bench(lambda: mlp(10, 1, hidden=HIDDEN), (1, 28, 28), 100, method, engines, repeats=args.repeats,
                  warmup=5, lr=0.05, engine_options={e: options for e in engines} if options else None)
        for spec, e in r["engines"].items():
            rows.append({"run": f"{label}, {spec}", "method": method, "engine": spec, "options": options,
                         "iteration_ms": e["iteration_s"] * 1000, "x_erm": e["ratio_to_erm"],
                         "erm_ms": r["erm_step_s"] * 1000, "cosine_to_exact": e["cosine_to_exact"]})
    result = {"threads": args.threads, "rows": rows}
    print(timing_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
