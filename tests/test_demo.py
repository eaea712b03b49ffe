"""`famus demo --quick`: four runs, one table, a report; the full demo's setting."""

import json
import os
from pathlib import Path

import pytest
import yaml

from famus.cli import main
from famus.demo import NO_TRUSTED, RUNS, SETTING, TRUSTED
from famus.train.config import load_config

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"
CONFIG = Path(__file__).resolve().parents[1] / "configs" / "versus" / "mlp-sym60.yaml"
ROWS = Path(__file__).resolve().parents[1] / "configs" / "versus" / "rows.yaml"


def test_demo_setting_is_the_versus_page_config():
    """The demo runs the setting docs/versus.md measures over seeds (so its seed-noise line applies), with famus
    train's defaults (the default recipe) and the page's row of the recipe without a trusted set."""
    cfg = load_config(CONFIG)
    for key, value in SETTING.items():
        assert getattr(cfg, key) == value, key
    assert cfg.meta_warmup is None and cfg.meta_every is None and cfg.meta_dense is None
    assert cfg.method_options == {} and cfg.engine_options == {} and cfg.meta_grad is None
    rows = yaml.safe_load(ROWS.read_text())
    assert NO_TRUSTED[1] in rows.values()
    from famus.train.methods import RECOMMENDED

    assert {k: NO_TRUSTED[1][k] for k in ("method", "loss")} == RECOMMENDED["no trusted set"]
    assert TRUSTED[1] == RECOMMENDED["trusted"]


@pytest.mark.skipif(not os.path.exists(FMNIST), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.slow
def test_quick_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for label, *_ in RUNS:
        assert f"| {label} |" in printed
    for text in ("speed-up over exact", "weight AUROC", "famus issues", "Wall time of the demo", "Seed noise"):
        assert text in printed
    rows = json.loads((out / "demo.json").read_text())
    assert [r["label"] for r in rows] == [label for label, *_ in RUNS]
    assert rows[0]["weight_auroc"] is None and all(0 <= r["weight_auroc"] <= 1 for r in rows[1:3])
    labels = [(out / folder / "noisy_labels.pt").read_bytes() for _, folder, keys in RUNS
              if keys.get("meta_per_class") != 0]
    assert len(labels) == 4 and all(x == labels[0] for x in labels)  # with a trusted set: the same noisy labels
    assert (out / "report" / "index.html").stat().st_size > 1000
    assert main(["demo", "--quick", "--out", str(out)]) != 0  # refuses to overwrite
