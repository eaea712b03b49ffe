"""`famus compare`: runs every (engine, seed), skips finished runs, summarizes, fails clearly."""

import json

import pytest
import yaml

from famus.cli import main
from famus.compare import compare, format_table, plan, read_rows, run_config, spec_config, write_row_configs
from famus.registry import UnknownNameError

CONFIG = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, method="mwnet", lr=0.05,
              epochs=1, log_every=5, noise="symmetric", noise_rate=0.4)


@pytest.fixture
def config(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    return path


@pytest.mark.slow
def test_compare_runs_summarizes_and_skips_finished(tmp_path, config):
    out = tmp_path / "cmp"
    logs: list[str] = []
    result = compare(config, ["exact", "famus"], [1, 2], out, steps=(5, 10), late_from=10, log=logs.append)
    assert sorted(result["table"]) == ["erm", "mwnet-exact", "mwnet-famus"]
    for name in ("mwnet-exact", "mwnet-famus"):
        t = result["table"][name]
        assert t["last_acc"]["n"] == 2 and 0.0 <= t["auroc@5"]["mean"] <= 1.0
        assert t["x_erm"]["mean"] > 0
        for seed in (1, 2):
            run = result["runs"][name][seed]
            rows = [json.loads(x) for x in (out / name / f"seed{seed}" / "metrics.jsonl").read_text().splitlines()]
            assert run["last_acc"] == rows[-1]["test_acc"]
            assert run["lift@5"] == rows[0]["quality_steps"][0]["clean_lift"]
    assert result["table"]["erm"]["auroc@5"] is None  # ERM has no weights
    assert sum(line.startswith("start") for line in logs) == 6
    stamp = (out / "mwnet-exact" / "seed1" / "metrics.jsonl").stat().st_mtime_ns
    logs.clear()
    again = compare(config, ["exact", "famus"], [1, 2], out, steps=(5, 10), late_from=10, log=logs.append)
    assert sum(line.startswith("skip") for line in logs) == 6 and not any(line.startswith("start") for line in logs)
    assert (out / "mwnet-exact" / "seed1" / "metrics.jsonl").stat().st_mtime_ns == stamp
    assert again["table"] == result["table"]
    assert "mwnet-famus" in format_table(again)


def test_compare_bad_input_fails_before_writing(tmp_path, config, capsys):
    out = tmp_path / "cmp"
    with pytest.raises(UnknownNameError, match="exact"):
        plan(["mwnet"], ["exakt"], [1])
    assert main(["compare", "--config", str(config), "--engines", "exakt", "--out", str(out)]) == 2
    assert "exakt" in capsys.readouterr().err
    assert main(["compare", "--config", str(config), "--engines", "exact", "--seeds", "1,x", "--out", str(out)]) == 2
    assert main(["compare", "--config", str(tmp_path / "missing.yaml"), "--engines", "exact", "--out", str(out)]) == 2
    assert main(["compare", "--config", str(config), "--engines", "exact", "--methods", "mwnett",
                 "--out", str(out)]) == 2
    # a bad value for every run: every run's config is checked before the first starts
    assert main(["compare", "--config", str(config), "--engines", "exact", "--set", "lr=-1", "--out", str(out)]) == 2
    assert "lr must be > 0" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.slow
def test_compare_reports_a_failed_run(tmp_path, config, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(config), "--engines", "exact", "--seeds", "1", "--no-erm", "--set",
               "dataset=fashion-mnist", "--set", f"data_dir={tmp_path / 'missing'}", "--out", str(out)])
    assert rc == 1
    assert "failed" in capsys.readouterr().err and (out / "logs" / "mwnet-exact-seed1.log").exists()


def test_a_diverged_run_is_a_result_not_a_failure(tmp_path, config):
    """A run stopped by a NaN loss is marked, counted apart from the statistics and not rerun."""
    out = tmp_path / "cmp"
    logs: list[str] = []
    result = compare(config, ["exact"], [1], out, steps=(5,), late_from=5, extra=["lr=1e12"], log=logs.append)
    assert "diverged: erm seed 1" in "\n".join(logs) and (out / "erm" / "seed1" / "diverged.txt").exists()
    for name in ("erm", "mwnet-exact"):
        assert result["table"][name]["diverged"] == 1 and result["table"][name]["last_acc"] is None
        assert result["runs"][name][1]["diverged"] is True
    assert "(1 of 1 diverged)" in format_table(result)
    logs.clear()
    compare(config, ["exact"], [1], out, steps=(5,), late_from=5, extra=["lr=1e12"], log=logs.append)
    assert all(line.startswith("skip") for line in logs)


def test_baselines_take_no_engine_and_unknown_methods_list_all():
    runs = plan(["erm", "coteaching", "prune", "mwnet"], ["exact", "fd"], [1, 2])
    assert [r.name for r in runs if r.seed == 1] == ["erm", "coteaching", "prune", "mwnet-exact", "mwnet-fd"]
    assert all(r.engine is None for r in runs if r.method in ("erm", "coteaching", "prune"))
    with pytest.raises(UnknownNameError, match="valid methods: coteaching, erm, l2r, mlc, mwnet, prune"):
        plan(["coteachin"], ["exact"], [1])
    assert [r.name for r in plan(["coteaching"], [], [1], erm=False)] == ["coteaching"]


def test_rows_are_named_runs_with_their_own_config(tmp_path, config):
    rows_file = tmp_path / "rows.yaml"
    rows_file.write_text("dividemix: {method: erm, meta_set: pseudo}\nmwnet-pseudo: {method: mwnet, meta_set: pseudo}\n"
                         "prune2: {method: prune, method-options: {folds: 2}}\n")
    rows = read_rows(rows_file)
    assert rows["prune2"] == {"method": "prune", "method_options": {"folds": 2}}
    runs = plan([], ["exact"], [1], rows=rows)
    assert [(r.name, r.method, r.engine) for r in runs] == [("erm", "erm", None), ("dividemix", "erm", None),
                                                           ("mwnet-pseudo", "mwnet", None), ("prune2", "prune", None)]
    write_row_configs(config, rows, tmp_path / "rows")
    spec = runs[-1]
    cfg = run_config(spec_config(config, spec, tmp_path / "rows"), spec, ["lr=0.02"])
    # the row's values replace the config's (its method_options: {meta_lr: ...} -> {folds: 2}); --set applies to all
    assert (cfg.method, cfg.method_options, cfg.lr, cfg.noise_rate) == ("prune", {"folds": 2}, 0.02, 0.4)
    with pytest.raises(ValueError, match="row 'erm' has the name of another run"):
        plan([], ["exact"], [1], rows={"erm": {"loss": "ce"}})


@pytest.mark.parametrize("text, needle", [
    ("- a\n- b\n", "must map row names to config overrides"),
    ("'a b': {method: erm}\n", "row name 'a b' must be a folder name"),
    ("logs: {method: erm}\n", "row name 'logs' must be a folder name"),
    ("gce: erm\n", "row 'gce' must map config keys to values"),
    ("gce: {method: erm\n", "is not valid YAML"),
    ("ct: {method: coteaching, method_options: {forget_rate: 2}}\n", "forget_rate must be in [0, 1)"),
    ("ct: {method: coteachin}\n", "unknown method 'coteachin'"),
])
def test_bad_rows_fail_before_anything_is_written(tmp_path, config, capsys, text, needle):
    rows_file, out = tmp_path / "rows.yaml", tmp_path / "cmp"
    rows_file.write_text(text)
    assert main(["compare", "--config", str(config), "--rows", str(rows_file), "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_interrupted_folders_clear_or_resume(tmp_path):
    from famus.compare import _prepare

    run = tmp_path / "run"
    run.mkdir()
    for name in ("config.yaml", "split.pt", "split.pt.sha256", "metrics.jsonl"):
        (run / name).write_text("")
    assert _prepare(run) is False and not run.exists()  # famus's files (checksums too): cleared, started again
    (run / "rank").mkdir(parents=True)  # a prune run that began ranking continues
    assert _prepare(run) is True


@pytest.mark.slow
def test_compare_runs_baselines_and_rows(tmp_path, config):
    rows_file = tmp_path / "rows.yaml"
    rows_file.write_text("prune2: {method: prune, method_options: {folds: 2}}\n")
    out = tmp_path / "cmp"
    result = compare(config, None, [1], out, methods=["coteaching"], steps=(5,), late_from=5, rows=read_rows(rows_file),
                     log=lambda line: None)
    assert sorted(result["table"]) == ["coteaching", "erm", "prune2"]
    saved = yaml.safe_load((out / "prune2" / "seed1" / "config.yaml").read_text())
    assert saved["method"] == "prune" and saved["method_options"] == {"folds": 2}
    prune_run = result["runs"]["prune2"][1]
    summary = json.loads((out / "prune2" / "seed1" / "summary.json").read_text())
    rows = [json.loads(x) for x in (out / "prune2" / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert prune_run["train_time_s"] == pytest.approx(rows[-1]["wall_time_s"] + summary["prune"]["rank_time_s"])
    assert result["table"]["coteaching"]["time_x_erm"]["mean"] > 0
    assert "prune2" in format_table(result)
