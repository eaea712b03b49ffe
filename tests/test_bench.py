"""``famus bench`` runs on a tiny model and reports every field the issue asks for."""

import argparse
import json
import subprocess
import sys

import pytest

from famus.bench import DEFAULT_ENGINES, add_arguments, bench, format_table, parse_engine, run_cli
from famus.meta.engines import STAGES
from famus.registry import UnknownNameError

FIELDS = {"iteration_s", "speedup_vs_exact", "ratio_to_erm", "cosine_to_exact", "rel_error_to_exact",
          "peak_memory_bytes", "stages"}
TINY = dict(model="small-resnet", input_shape=(1, 8, 8), batch_size=8, num_classes=3, repeats=1, warmup=0)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one thread (the shared ``one_thread`` fixture in tests/conftest.py)."""


def _check(result, engines):
    assert result["erm_step_s"] > 0
    assert list(result["engines"]) == list(engines)
    for name, row in result["engines"].items():
        assert FIELDS <= set(row), name
        assert set(row["stages"]) == set(STAGES)
        assert row["iteration_s"] > 0 and row["ratio_to_erm"] > 0
        assert row["peak_memory_bytes"] is None or row["peak_memory_bytes"] > 0
        assert -1.0 - 1e-9 <= row["cosine_to_exact"] <= 1.0 + 1e-9
    assert result["engines"]["exact"]["speedup_vs_exact"] == pytest.approx(1.0)
    assert result["engines"]["exact"]["rel_error_to_exact"] == pytest.approx(0.0, abs=1e-9)


def test_bench_library_function_reports_every_field():
    result = bench(method="mwnet", engines=DEFAULT_ENGINES, **TINY)
    _check(result, DEFAULT_ENGINES)
    rows = result["engines"]
    assert rows["jvp"]["cosine_to_exact"] > 0.9999
    assert rows["fd"]["cosine_to_exact"] > 0.99
    assert rows["famus-fd+lagged"]["lagged"] and rows["famus-fd+lagged"]["stages"]["actual_forward"] == 0.0
    assert "memory_method" in result and "timing" in result and result["meta_batch_size"] == 8
    json.dumps(result)  # JSON-ready
    table = format_table(result)
    for name in DEFAULT_ENGINES:
        assert name in table


def test_bench_l2r_marks_lagged_as_not_applicable():
    result = bench(method="l2r", engines=["exact", "jvp", "famus-fd+lagged"], **TINY)
    assert "error" in result["engines"]["famus-fd+lagged"]
    assert result["engines"]["jvp"]["cosine_to_exact"] > 0.9999
    assert "n/a" in format_table(result)


def test_bench_options_and_bad_input():
    opts = {"fd": {"fd_eps": 1e-3}, "famus": {"k": 2}}
    result = bench(method="mwnet", engines=["exact", "fd", "famus"], engine_options=opts, **TINY)
    assert result["engine_options"] == opts and set(result["engines"]) == {"exact", "fd", "famus"}
    with pytest.raises(TypeError, match="fd_eps"):  # exact takes no fd_eps: each option goes to its owner only
        bench(method="mwnet", engines=["exact"], engine_options={"exact": {"fd_eps": 1e-3}}, **TINY)
    with pytest.raises(ValueError, match="not benched"):
        bench(method="mwnet", engines=["exact"], engine_options={"fd": {"fd_eps": 1e-3}}, **TINY)
    with pytest.raises(UnknownNameError, match="valid engines"):
        parse_engine("fast+lagged")
    assert parse_engine("famus-fd+lagged+noreuse") == ("famus-fd", True, False)


def test_cli_prints_the_table_and_writes_json(tmp_path, capsys):
    parser = add_arguments(argparse.ArgumentParser())
    out = tmp_path / "bench.json"
    args = parser.parse_args([
        "--model", "small-resnet", "--input-shape", "1,8,8", "--batch-size", "8", "--num-classes", "3",
        "--method", "mwnet", "--engines", ",".join(DEFAULT_ENGINES), "--repeats", "1",
        "--warmup", "0", "--json", str(out),
    ])
    assert run_cli(args) == 0
    printed = capsys.readouterr().out
    assert "famus-fd+lagged" in printed and "vs exact" in printed
    result = json.loads(out.read_text())
    _check(result, DEFAULT_ENGINES)
    assert run_cli(parser.parse_args(["--input-shape", "1,x"])) == 2


@pytest.mark.slow
def test_python_dash_m_entry_point():
    proc = subprocess.run([sys.executable, "-m", "famus.bench", "--help"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    for flag in ("--model", "--input-shape", "--batch-size", "--method", "--engines", "--repeats", "--json"):
        assert flag in proc.stdout


def test_mlc_and_amortized_meta_every():
    result = bench(method="mlc", engines=["exact", "fd"], meta_every=4, **TINY)
    _check(result, ["exact", "fd"])
    plain = result["plain_step_s"]
    for row in result["engines"].values():
        assert row["amortized_s"] == pytest.approx((row["iteration_s"] + 3 * plain) / 4)
        assert row["amortized_ratio_to_erm"] == pytest.approx(row["amortized_s"] / result["erm_step_s"])
    assert "k=4 x ERM" in format_table(result)
    assert "plain_step_s" in bench(method="mwnet", engines=["fd"], **TINY) and "amortized_s" not in \
        bench(method="mwnet", engines=["fd"], **TINY)["engines"]["fd"]
