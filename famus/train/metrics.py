"""Per-epoch metrics: ``metrics.jsonl`` always, ``metrics.csv`` optionally, TensorBoard when installed."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path
from typing import Any

from famus.jsonl import truncate_jsonl


class MetricsWriter:
    """Appends one record per epoch.

    Args:
        run_dir: the run folder.
        csv_too: also write ``metrics.csv`` (flat scalar columns).
        tensorboard: also log scalars to ``run_dir/tb`` when ``tensorboard`` is installed.
        keep_until: on resume, drop records with ``epoch > keep_until`` (an interrupted epoch).
    """

    def __init__(self, run_dir: Path, csv_too: bool = False, tensorboard: bool = False, keep_until: int | None = None):
        self.path = run_dir / "metrics.jsonl"
        self.csv_path = run_dir / "metrics.csv" if csv_too else None
        if keep_until is not None:
            self._truncate(keep_until)
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:
                warnings.warn("tensorboard is not installed; pip install tensorboard to log there", stacklevel=2)

    def _truncate(self, epoch: int) -> None:
        """Keep the records of epochs ``<= epoch`` (a line cut short by a kill is dropped), atomically."""
        rows = truncate_jsonl(self.path, "epoch", epoch)
        if self.csv_path is not None:
            self.csv_path.unlink(missing_ok=True)
            for r in rows:
                self._csv(r)

    def _csv(self, record: dict[str, Any]) -> None:
        flat = {k: v for k, v in record.items() if isinstance(v, (int, float, str)) or v is None}
        new = not self.csv_path.exists()
        with self.csv_path.open("a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=list(flat), extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(flat)

    def write(self, record: dict[str, Any]) -> None:
        with self.path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.csv_path is not None:
            self._csv(record)
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "epoch":
                    self.tb.add_scalar(k, v, record["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """All records of ``run_dir/metrics.jsonl`` (an empty list if there is none)."""
    p = Path(run_dir) / "metrics.jsonl"
    if not p.exists():
        return []
    return [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
