"""Hostile configs and run folders (issue 25): YAML with limits, ``--resume`` with nothing to resume, the meta set
validation took, and the NaN message that names a checkpoint only when there is one."""

import time

import pytest
import torch
import yaml

from famus.cli import main
from famus.train.config import load_config
from famus.train.errors import TrainingError, check_finite
from famus.yamlload import MAX_BYTES, YAMLLimitError, safe_load

BASE = ["--dataset", "digits", "--model", "mlp", "--batch-size", "64", "--no-progress", "--threads", "1"]


def laughs(levels: int, key: str = "dataset_options") -> str:
    """A "billion laughs" document: ``levels`` anchors, each 10 aliases of the one before: 10**levels values in
    a few hundred bytes, under ``key``."""
    lines = ["l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\n{key}: {{bomb: *l{levels - 1}}}\n"


def _err(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


# ------------------------------------------------------------------------------------ YAML


def test_alias_bomb_config_is_refused_at_once(tmp_path, capsys):
    path = tmp_path / "bomb.yaml"
    path.write_text(laughs(7))  # 10**7 values in ~800 bytes (10**9 with two more lines)
    assert path.stat().st_size < 2000
    t0 = time.perf_counter()
    assert main(["train", "--config", str(path), "--out", str(tmp_path / "run")]) == 2
    assert time.perf_counter() - t0 < 5
    err = _err(capsys)
    assert f"YAML file {str(path)!r} is refused: its aliases expand to more than 100000 values" in err
    assert not (tmp_path / "run").exists()


def test_alias_bomb_in_a_run_folder_is_refused_on_resume(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text(laughs(7))
    assert main(["train", "--out", str(run), "--resume"]) == 2
    assert "config.yaml' is refused: its aliases expand to more than 100000 values" in _err(capsys)


@pytest.mark.parametrize("text,needle", [
    ("[" * 65 + "]" * 65, "nested more than 64 levels deep"),
    ("a: &a [*a]", "a cycle"),
    ("a: &a 1\nb: [" + ", ".join(["*a"] * 101) + "]", "more than 100 aliases"),
])
def test_yaml_limits(text, needle):
    with pytest.raises(YAMLLimitError, match=needle):
        safe_load(text)
    assert issubclass(YAMLLimitError, yaml.YAMLError)  # readers that catch YAMLError (famus report) keep working


def test_yaml_within_the_limits_still_loads(tmp_path):
    assert safe_load("lr: 1e-3\nopts: &o {k: 6}\nmore: *o\n") == {"lr": 1e-3, "opts": {"k": 6}, "more": {"k": 6}}
    assert safe_load("[" * 64 + "]" * 64) is not None
    path = tmp_path / "big.yaml"
    path.write_text("# " + "x" * MAX_BYTES + "\nepochs: 2\n")
    with pytest.raises(ValueError, match="big.yaml' is larger than 1 MiB, the most famus reads"):
        load_config(path)
    path.write_bytes(b"epochs: 2\nout: caf\xe9\n")
    with pytest.raises(ValueError, match="big.yaml' is not UTF-8 text"):
        load_config(path)


# ------------------------------------------------------------------------------------ --resume with no run


@pytest.mark.parametrize("folder", ["missing", "empty"])
def test_resume_of_a_folder_with_no_run_needs_its_settings(tmp_path, capsys, folder):
    out = tmp_path / folder
    if folder == "empty":
        out.mkdir()
    assert main(["train", "--out", str(out), "--resume", "--threads", "1", "--epochs", "3"]) == 2
    err = _err(capsys)
    assert f"--resume: {str(out)!r} holds no run yet (no config.yaml)" in err and "--config FILE" in err
    assert out.exists() == (folder == "empty") and not (out.exists() and any(out.iterdir()))
    config = tmp_path / "run.yaml"
    config.write_text(f"dataset: digits\nmodel: mlp\nmethod: erm\nmeta_per_class: 0\nepochs: 1\nout: {out}\n"
                      "progress: false\n")
    assert main(["train", "--config", str(config), "--resume", "--threads", "1"]) == 0  # settings given: starts
    assert (out / "summary.json").exists()


# ------------------------------------------------------------------------------------ messages


def test_validation_taking_the_whole_meta_set_is_said(tmp_path, capsys):
    assert main(["train", *BASE, "--method", "mwnet", "--meta-per-class", "1", "--val-per-class", "1",
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = _err(capsys)
    assert "needs a meta set, but validation (--val-per-class 1) took all of the trusted examples" in err
    assert "raise --meta-per-class above --val-per-class" in err and not (tmp_path / "run").exists()


def test_nan_message_names_a_checkpoint_only_when_there_is_one(tmp_path):
    with pytest.raises(TrainingError) as exc:
        check_finite(torch.tensor(True), str(tmp_path), 0, 7)
    assert "No checkpoint was written before it" in str(exc.value) and "kept" not in str(exc.value)
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    with pytest.raises(TrainingError, match=f"The last good checkpoint is kept in {tmp_path / 'checkpoint.pt'}"):
        check_finite(torch.tensor(True), str(tmp_path), 0, 7)
    check_finite(torch.tensor(False), str(tmp_path), 0, 7)
