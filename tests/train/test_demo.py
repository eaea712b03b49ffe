"""`famus demo --quick`: three runs on the same data, one table, a report."""

import json
import os

import pytest

from famus.cli import main

FMNIST = "/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz"


@pytest.mark.skipif(not os.path.exists(FMNIST), reason="needs Debian's dataset-fashion-mnist")
@pytest.mark.slow
def test_quick_demo(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--threads", "1"]) == 0
    printed = capsys.readouterr().out
    for label in ("| ERM |", "| MW-Net |", "| MW-Net+FaMUS |", "speed-up over exact"):
        assert label in printed
    rows = json.loads((out / "demo.json").read_text())
    assert [r["label"] for r in rows] == ["ERM", "MW-Net", "MW-Net+FaMUS"]
    labels = [(out / d / "noisy_labels.pt").read_bytes() for d in ("erm", "mw-net", "mw-net-famus")]
    assert labels[0] == labels[1] == labels[2]  # same seed, same noisy labels
    assert (out / "report" / "index.html").stat().st_size > 1000
    assert main(["demo", "--quick", "--out", str(out)]) != 0  # refuses to overwrite
