"""`famus compare`: runs every (engine, seed), skips finished runs, summarizes, fails clearly."""

import json

import pytest
import yaml

from famus.cli import main
from famus.compare import compare, format_table, plan
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
    assert not out.exists()


@pytest.mark.slow
def test_compare_reports_a_failed_run(tmp_path, config, capsys):
    out = tmp_path / "cmp"
    rc = main(["compare", "--config", str(config), "--engines", "exact", "--seeds", "1", "--no-erm",
               "--set", "lr=-1", "--out", str(out)])
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
