"""make_report / famus report: every figure, the HTML page, the summary numbers, and broken runs."""

import argparse
import base64
import json
from pathlib import Path

import pytest

from famus.report import ReportError, add_arguments, load_run, make_report, run_cli
from famus.report.plots import choose_steps, plot_accuracy, plot_weights, to_png

from .conftest import write_run

PNG = b"\x89PNG\r\n\x1a\n"


def _metrics(run, skip_bad=False):
    lines = [ln for ln in (Path(run) / "metrics.jsonl").read_text().splitlines() if ln.strip()]
    return [json.loads(ln) for ln in lines if not skip_bad or ln.startswith("{")]


def _table(md):
    """summary.md's table as {run: {column: cell}}."""
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    return {cells[0]: dict(zip(head, cells)) for cells in
            ([c.strip() for c in ln.strip("|").split("|")] for ln in lines[2:])}


def _check_figures(result, out):
    html = (out / "index.html").read_text()
    assert result["figures"], "no figures"
    for f in result["figures"]:
        data = Path(f).read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, f
        assert "data:image/png;base64," + base64.b64encode(data).decode() in html, f"{f} not embedded"
    assert "src=\"http" not in html and "<link" not in html  # self-contained
    return html


def _check_numbers(out, runs):
    table = _table((out / "summary.md").read_text())
    raw = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    for run in runs:
        recs = _metrics(run)
        name = Path(run).name
        best = max(r["best_test_acc"] for r in recs)
        assert best == recs[-1]["best_test_acc"]
        mean_it = sum(r["time_per_iter_s"] for r in recs) / len(recs)
        row = table[name]
        assert row["best test acc (paper)"] == f"{best * 100:.2f}%"
        assert row["last test acc"] == f"{recs[-1]['test_acc'] * 100:.2f}%"
        if any(r.get("val_acc") is not None for r in recs):  # the best validation accuracy (ties: the later)
            best_val = max(r["val_acc"] for r in recs)
            chosen = [r for r in recs if r["val_acc"] == best_val][-1]
            assert row["chosen test acc"] == f"{chosen['test_acc'] * 100:.2f}%"
        else:  # no validation data: the chosen model is the last epoch's, and the table says so
            assert row["chosen test acc"] == f"{recs[-1]['test_acc'] * 100:.2f}% (last)"
        assert row["time/iteration"] == f"{mean_it * 1000:.2f} ms"
        assert row["wall time"] == f"{recs[-1]['wall_time_s']:.2f} s"
        assert row["epochs"] == str(recs[-1]["epoch"])
        assert raw[name]["best_test_acc"] == best and raw[name]["last_test_acc"] == recs[-1]["test_acc"]
        assert raw[name]["time_per_iter_s"] == pytest.approx(mean_it, rel=1e-15)
        assert raw[name]["wall_time_s"] == recs[-1]["wall_time_s"]


def test_fake_runs_full_report(fake_runs, tmp_path, capsys):
    out = tmp_path / "report"
    result = make_report(fake_runs, out)
    names = [Path(f).name for f in result["figures"]]
    assert names == ["accuracy.png", "losses.png", "classes_01_erm.png", "classes_02_mw-exact.png",
                     "classes_03_mw-famus.png", "health_02_mw-exact.png", "health_03_mw-famus.png", "scores_01_erm.png",
                     "scores_02_mw-exact.png", "scores_03_mw-famus.png", "v_curves.png", "weight_quality.png",
                     "stage_time.png", "meta_gradient_mwnet.png", "weights_02_mw-exact.png",
                     "weights_03_mw-famus.png", "layers.png"]
    html = _check_figures(result, out)
    _check_numbers(out, fake_runs)
    assert result["problems"] == {} and result["skipped"] == []
    assert "Missing or partial data" not in html and capsys.readouterr().err == ""
    for name in ("erm", "mw-exact", "mw-famus"):
        assert name in html
    # deterministic: the same inputs give the same bytes
    assert to_png(plot_accuracy([load_run(r) for r in fake_runs]).figure) == (out / "accuracy.png").read_bytes()


def test_real_run_report(real_run, fake_runs, tmp_path, capsys):
    out = tmp_path / "report"
    result = make_report([real_run, fake_runs[0]], out)
    names = sorted(Path(f).name for f in result["figures"])
    assert names == ["accuracy.png", "classes_01_mw-famus-digits.png", "classes_02_erm.png",
                     "health_01_mw-famus-digits.png", "layers.png", "losses.png", "meta_gradient_mwnet.png",
                     "scores_01_mw-famus-digits.png", "scores_02_erm.png", "stage_time.png", "v_curves.png",
                     "weight_quality.png", "weights_01_mw-famus-digits.png"]
    _check_figures(result, out)
    _check_numbers(out, [real_run, fake_runs[0]])
    assert result["problems"] == {}, result["problems"]
    recs = [json.loads(x) for x in (real_run / "tracking.jsonl").read_text().splitlines()]
    assert [r["step"] for r in recs] == [1, 2, 4, 6]
    assert all(0 < r["meta_grad"]["cosine"] <= 1 + 1e-9 for r in recs)
    assert all(set(r["gates"]) == {"hidden0.0", "fc"} for r in recs)


def test_weight_steps_map_to_nearest_tracked(fake_runs, tmp_path):
    assert choose_steps([1, 10, 20, 30], None) == [(1, None), (20, None), (30, None)]
    assert choose_steps([1, 10, 20, 30], [10, 14, 16, 100]) == [(10, None), (20, 16), (30, 100)]
    assert choose_steps([5], None) == [(5, None)]
    assert choose_steps([], [3]) == []
    plot = plot_weights(load_run(fake_runs[2]), [12, 1])
    titles = [ax.get_title() for ax in plot.figure.axes]
    assert titles[0].startswith("step 10 (nearest to 12), epoch 2") and titles[1].startswith("step 1, epoch 1")
    assert to_png(plot.figure).startswith(PNG)


def _report(runs, tmp_path, capsys):
    out = tmp_path / "report"
    result = make_report(runs, out)
    err = capsys.readouterr().err
    md = (out / "summary.md").read_text()
    html = (out / "index.html").read_text()
    for f in result["figures"]:
        assert Path(f).read_bytes().startswith(PNG)
    return result, err, md, html


BROKEN = {
    "no-metrics": (lambda run: (run / "metrics.jsonl").unlink(), "no metrics.jsonl (did the run finish an epoch?)"),
    "empty-metrics": (lambda run: (run / "metrics.jsonl").write_text(""),
                      "metrics.jsonl is empty (did the run finish an epoch?)"),
    "truncated": (lambda run: (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text()
                                                                  + '{"epoch": 4, "test_a'),
                  "metrics.jsonl: the last line is truncated"),
    "bad-line": (lambda run: (run / "metrics.jsonl").write_text("oops\n" + (run / "metrics.jsonl").read_text()),
                 "metrics.jsonl: line 1 is not valid JSON"),
    "missing-keys": (lambda run: (run / "metrics.jsonl").write_text(
        "".join(json.dumps({k: v for k, v in r.items() if k not in ("wall_time_s", "stage_time_s")}) + "\n"
                for r in _metrics(run))), "3 of 3 records lack a number for 'wall_time_s'"),
    "no-tracking": (lambda run: (run / "tracking.jsonl").unlink(), "no tracking.jsonl"),
    "truncated-tracking": (lambda run: (run / "tracking.jsonl").write_text(
        (run / "tracking.jsonl").read_text()[:-40]), "tracking.jsonl: the last line is truncated"),
    "no-config": (lambda run: (run / "config.yaml").unlink(), "no config.yaml"),
    "bad-config": (lambda run: (run / "config.yaml").write_text("method: [unclosed"), "config.yaml is unreadable"),
}


def test_partial_runs_are_reported_not_fatal(tmp_path, capsys):
    """One report over a good run and one run broken in each way of BROKEN (one report keeps the test fast)."""
    root = tmp_path / "runs"
    good = write_run(root, "good", seed=9)
    tracked = ("missing-keys", "no-tracking", "truncated-tracking")  # the others skip tracking: fewer figures
    runs = {case: write_run(root, case, seed=i, tracking=case in tracked) for i, case in enumerate(BROKEN)}
    for case, run in runs.items():
        BROKEN[case][0](run)
    result, err, md, html = _report([good, *runs.values()], tmp_path, capsys)
    assert "good" not in result["problems"] and "report" not in result["problems"]  # no figure crashed
    for case, (_break, message) in BROKEN.items():
        assert any(message in m for m in result["problems"][case]), (case, result["problems"].get(case))
        assert any(line.startswith(f"famus report: {runs[case]}: ") and message in line for line in err.splitlines())
        assert any(line.startswith(f"- `{case}`: ") and message in line for line in md.splitlines())
        assert message.replace("'", "&#x27;") in html
    names = {Path(f).name for f in result["figures"]}
    assert {"accuracy.png", "stage_time.png", "meta_gradient_mwnet.png", "layers.png", "weights_01_good.png"} <= names
    # only the affected parts are skipped
    assert "weights_07_no-tracking.png" not in names and "weights_06_missing-keys.png" in names
    for case in ("no-metrics", "empty-metrics"):
        assert f"| {case} | mwnet | famus | 0 | n/a | n/a | n/a | n/a |" in md
    assert "| missing-keys | mwnet | famus | 3 |" in md and md.count("| n/a |") >= 3  # wall time unknown
    assert "missing-keys: no wall_time_s/test_acc or val_acc numbers" in html
    assert "| no-config | ? | ? |" in md and "| truncated | mwnet | famus | 3 |" in md
    table = _table(md)
    recs = _metrics(runs["bad-line"], skip_bad=True)
    assert table["bad-line"]["best test acc (paper)"] == f"{recs[-1]['best_test_acc'] * 100:.2f}%"


def test_only_broken_runs_still_write_a_report(tmp_path, capsys):
    root = tmp_path / "runs"
    a = write_run(root, "a", metrics=False, tracking=False, extras=False)
    b = write_run(root, "b", extras=False)
    (b / "metrics.jsonl").write_text("")
    (b / "tracking.jsonl").write_text("\n")
    result, err, md, html = _report([a, b], tmp_path, capsys)
    assert result["figures"] == []
    assert "no metrics.jsonl" in err and "metrics.jsonl is empty" in err and "tracking.jsonl is empty" in err
    assert "not drawn: test accuracy" in err and "not drawn" in html
    assert "| a | mwnet | famus | 0 | n/a | n/a | n/a | n/a |" in md


def test_missing_run_dir_among_valid_ones(fake_runs, tmp_path, capsys):
    ghost = tmp_path / "runs" / "ghost"
    result, err, md, html = _report([fake_runs[0], ghost], tmp_path, capsys)
    assert result["problems"]["ghost"] == ["the folder does not exist"]
    assert f"{ghost}: the folder does not exist" in err
    assert "ghost" in md and "ghost" in html and len(result["runs"]) == 1
    assert {Path(f).name for f in result["figures"]} == {"accuracy.png", "losses.png", "classes_01_erm.png",
                                                         "scores_01_erm.png", "stage_time.png"}


def test_no_valid_run_dir_is_an_error(tmp_path, capsys):
    with pytest.raises(ReportError, match="no run folder found"):
        make_report([tmp_path / "nope"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_cli(parser.parse_args([str(tmp_path / "nope"), "--out", str(tmp_path / "out")])) == 2
    assert "famus report: error: no run folder found" in capsys.readouterr().err


def test_cli(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    run = str(write_run(tmp_path, "erm", "erm"))
    out = str(tmp_path / "cli")
    assert run_cli(parser.parse_args([run, "--out", out, "--weight-steps", "1", "30"])) == 0
    assert "index.html" in capsys.readouterr().out and (tmp_path / "cli" / "index.html").exists()
    ghost = str(tmp_path / "ghost")
    assert run_cli(parser.parse_args([run, ghost, "--out", out])) == 0  # one valid folder is enough
    assert run_cli(parser.parse_args([run, ghost, "--out", out, "--strict"])) == 1
    assert run_cli(parser.parse_args([run, "--out", run + "/metrics.jsonl"])) == 2  # --out is a file


def test_nothing_is_written_when_rendering_fails(fake_runs, tmp_path, monkeypatch):
    import famus.report.report as rep

    def boom(*a, **k):
        raise RuntimeError("page failed")

    monkeypatch.setattr(rep, "page", boom)
    with pytest.raises(RuntimeError):
        make_report(fake_runs[:1], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_same_folder_names_get_unique_labels(tmp_path):
    a = write_run(tmp_path / "x", "run", "erm")
    b = write_run(tmp_path / "y", "run", "erm")
    result = make_report([a, b], tmp_path / "out", warn=None)
    assert [r["run"] for r in result["runs"]] == ["x/run", "y/run"]


@pytest.mark.slow
def test_public_names_resolve_and_training_needs_no_matplotlib():
    import subprocess
    import sys

    import famus.report

    for name in famus.report.__all__:
        assert getattr(famus.report, name) is not None
    code = ("import sys; import famus.report; from famus.train import train; from famus.train.tracking import Tracker; "
            "print('matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_gate_fractions_from_metrics_or_tracking(tmp_path):
    from famus.report.plots import gate_fractions

    run = write_run(tmp_path, "famus", epochs=2, iters=10)
    fr, source = gate_fractions(load_run(run))
    assert source.startswith("every training step")
    # metrics gate_rate weighted by each epoch's iterations; tracking adds the layer order
    assert fr == {"conv": (0.1 * 10 + 0.2 * 10, 20.0), "hidden": (10.0, 20.0), "fc": (20.0, 20.0)}
    recs = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "gate_rate"}) + "\n"
                                               for r in recs))
    fr, source = gate_fractions(load_run(run))
    assert source.startswith("tracked steps") and fr == {"conv": (2.0, 4.0), "hidden": (4.0, 4.0), "fc": (4.0, 4.0)}
    assert gate_fractions(load_run(write_run(tmp_path, "exact", engine="exact"))) is None


def test_garbage_metrics_is_bounded(tmp_path, capsys):
    """A 10 MB garbage metrics.jsonl (issue 25): a few warning lines and a small page, not one per line."""
    import random

    run = write_run(tmp_path / "runs", "garbage", extras=False)
    rng = random.Random(0)
    line = bytes(rng.randrange(32, 127) for _ in range(35)) + b"\n"
    (run / "metrics.jsonl").write_bytes(line * (10_000_000 // len(line)))
    result, err, md, html = _report([run], tmp_path, capsys)
    msgs = result["problems"]["garbage"]
    assert len(msgs) <= 10 and any("more lines that are not JSON objects" in m for m in msgs)
    assert len(err.splitlines()) <= 21 and len(html) < 1_000_000 and len(md) < 20_000


def test_warnings_are_capped(tmp_path, capsys):
    runs = [write_run(tmp_path / "runs", f"r{i}", metrics=False, tracking=False, extras=False) for i in range(30)]
    result, err, md, html = _report(runs, tmp_path, capsys)
    lines = err.splitlines()
    assert len(lines) == 21 and lines[-1].startswith("famus report: and ") and "more (all in" in lines[-1]
    assert md.count("no metrics.jsonl") == 30  # summary.md keeps every one


def test_no_argument_is_a_run_exits_2_and_writes_nothing(tmp_path, capsys):
    notarun = tmp_path / "notarun"
    notarun.mkdir()
    (notarun / "photo.png").write_bytes(b"x")
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run_cli(parser.parse_args([str(notarun), "--out", str(tmp_path / "out")])) == 2
    err = capsys.readouterr().err
    assert "no run folder found" in err and "not a famus run folder" in err and not (tmp_path / "out").exists()
    good = write_run(tmp_path / "runs", "good", extras=False)
    assert run_cli(parser.parse_args([str(notarun), str(good), "--out", str(tmp_path / "out")])) == 0


def test_real_data_report_page(tmp_path, capsys):
    """A run without injected noise and without a test split: validation curves, the validation confusion matrix,
    the health section and suspect thumbnails, escaped."""
    run = write_run(tmp_path / "runs", "mine", extras=True)
    rows = _metrics(run)
    for r in rows:
        r.pop("test_acc")
        r["confusion"].pop("test")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, err, md, html = _report([run], tmp_path, capsys)
    names = [Path(f).name for f in result["figures"]]
    want = {"accuracy.png", "losses.png", "classes_01_mine.png", "health_01_mine.png", "scores_01_mine.png"}
    assert want <= set(names)
    assert "validation data (the run has no test split)" in html
    assert "Health check of the weighting" in html and "flat" in html and "raised at 1 of 3 epochs" in html
    assert html.count('<div class="card"><img src="data:image/png;base64,') == 8
    assert "&lt;cat&gt;" in html and "<cat>" not in html  # class names escaped


def test_feature_data_suspects_are_rows(tmp_path, capsys):
    import numpy as np

    run = write_run(tmp_path / "runs", "features", extras=True)
    with np.load(run / "suspects.npz") as z:
        arrays = {k: z[k] for k in z.files if k != "images"}  # feature data: no thumbnails
    arrays["path"] = np.array([""] * len(arrays["index"]))
    np.savez(run / "suspects.npz", **arrays)
    result, err, md, html = _report([run], tmp_path, capsys)
    assert '<div class="card">' not in html and "<th>clean score</th>" in html
    assert html.count("</td></tr>") >= 8 and "&lt;cat&gt;" in html
    (run / "suspects.npz").write_bytes(b"not a zip")  # damaged: the rows come from example_scores.csv
    result, err, md, html = _report([run], tmp_path, capsys)
    assert "<th>clean score</th>" in html and "report" not in result["problems"]
