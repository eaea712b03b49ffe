"""The pseudo-clean split figure: drawn from the metrics, only for pseudo runs."""

import json

import numpy as np
import yaml

from famus.report import load_run, make_report
from famus.report.split import plot_split

from .conftest import write_run

PNG = b"\x89PNG\r\n\x1a\n"


def _pseudo_run(root, name="pseudo"):
    run = write_run(root, name, tracking=False)
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    for i, r in enumerate(recs):
        r.update(split_precision=0.6 + 0.1 * i, split_recall=0.9 - 0.05 * i,
                 split_precision_net1=0.6 + 0.1 * i, split_precision_net2=0.6 + 0.1 * i,
                 split_recall_net1=0.9 - 0.05 * i, split_recall_net2=0.9 - 0.05 * i)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    (run / "config.yaml").write_text(yaml.safe_dump({**cfg, "meta_set": "pseudo"}))
    return run, recs


def test_split_figure_plots_the_recorded_numbers(tmp_path):
    run, recs = _pseudo_run(tmp_path)
    clean = write_run(tmp_path, "clean", tracking=False, seed=1)
    plot = plot_split([load_run(run), load_run(clean)])
    precision, recall = plot.figure.axes[0].lines[0], plot.figure.axes[1].lines[0]
    assert np.allclose(precision.get_ydata(), [r["split_precision"] * 100 for r in recs])
    assert np.allclose(recall.get_ydata(), [r["split_recall"] * 100 for r in recs])
    assert "pseudo-clean" in precision.get_label()
    assert any("clean: no split_precision" in s for s in plot.left_out)


def test_report_draws_split_png_only_with_pseudo_runs(tmp_path):
    run, _ = _pseudo_run(tmp_path)
    clean = write_run(tmp_path, "clean", tracking=False, seed=1)
    res = make_report([run, clean], tmp_path / "rep", warn=None)
    assert (tmp_path / "rep" / "split.png").read_bytes().startswith(PNG)
    assert any(f.endswith("split.png") for f in res["figures"])
    make_report([clean], tmp_path / "rep2", warn=None)
    assert not (tmp_path / "rep2" / "split.png").exists()
