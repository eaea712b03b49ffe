"""`famus train` end to end on digits: outputs, resume, bad input, NaN guard."""

import json

import pytest
import torch
import yaml
from torch import nn

from famus.cli import main
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint

BASE = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "64", "--no-progress"]
NOISE = ["--noise", "symmetric", "--noise-rate", "0.4"]  # noise is off unless asked for


def test_train_cli_digits_two_epochs(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *BASE, "--epochs", "2", "--method", "mwnet", "--meta-grad", "famus", "--lr", "0.05",
               "--out", str(out), "--metrics-format", "csv"])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    for key in ("epoch", "test_acc", "best_test_acc", "train_loss", "time_per_iter_s"):
        assert all(key in r for r in rows), key
    assert rows[1]["best_test_acc"] == max(r["test_acc"] for r in rows)
    assert rows[-1]["test_acc"] > 0.3  # far above chance (0.1) after two epochs
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["method"] == "mwnet" and cfg["meta_grad"] == "famus" and cfg["seed"] == 1
    info = json.loads((out / "run.json").read_text())
    assert "code_version" in info and info["seed"] == 1
    saved = torch.load(out / "noisy_labels.pt", weights_only=False)
    assert saved is not None
    assert (out / "metrics.csv").read_text().startswith("train_loss") or "test_acc" in (out / "metrics.csv").read_text()
    assert "best test accuracy" in capsys.readouterr().out


def test_same_seed_gives_same_noisy_labels_for_every_method(tmp_path):
    a = tmp_path / "a"
    b = tmp_path / "b"
    assert main(["train", *BASE, *NOISE, "--epochs", "1", "--method", "erm", "--out", str(a)]) == 0
    assert main(["train", *BASE, *NOISE, "--epochs", "1", "--method", "l2r", "--out", str(b)]) == 0
    la = (a / "noisy_labels.pt").read_bytes()
    lb = (b / "noisy_labels.pt").read_bytes()
    assert la == lb


@pytest.mark.parametrize("method,engine", [("mwnet", "famus"), ("erm", "exact")])
def test_resume_equals_uninterrupted(tmp_path, method, engine):
    common = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, method=method,
                  meta_grad=engine, lr=0.05, progress=False, milestones=[1], noise="symmetric", noise_rate=0.4)
    full = train(TrainConfig(**common, epochs=2, out=str(tmp_path / "full")))
    train(TrainConfig(**common, epochs=1, out=str(tmp_path / "part")))
    resumed = train(TrainConfig(**common, epochs=2, out=str(tmp_path / "part"), resume=True))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    assert a["step"] == b["step"] > 0
    for k in a["nets"][0]["model"]:
        assert torch.equal(a["nets"][0]["model"][k], b["nets"][0]["model"][k]), k
    assert full["best_test_acc"] == resumed["best_test_acc"]
    rows = [json.loads(x) for x in (tmp_path / "part" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    # the clean scores' running means and the model selection continue too
    scores = [(tmp_path / run / "example_scores.csv").read_text() for run in ("full", "part")]
    assert scores[0] == scores[1]
    for key in ("val_chosen_acc", "val_chosen_epoch", "label_issues"):
        assert full.get(key) == resumed.get(key), key


def _err(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--noise-rate", "1.5"], "noise rate must be in [0, 1]"),
        (["--dataset", "nope"], "unknown dataset 'nope'; valid datasets: arrays, cifar10"),
        (["--model", "nope"], "unknown model 'nope'"),
        (["--method", "nope"], "unknown method 'nope'; valid methods: coteaching, erm, l2r, mlc, mwnet, prune"),
        (["--meta-grad", "nope"], "unknown engine 'nope'"),
        (["--noise", "nope"], "unknown noise 'nope'"),
        (["--meta-per-class", "1000"], "meta set needs 1000 examples per class"),
        (["--dataset", "fashion-mnist", "--data-dir", "EMPTY"], "dataset-fashion-mnist"),
        (["--dataset", "cifar10", "--data-dir", "EMPTY"], "cifar"),
    ],
)
def test_bad_input_one_line_error_nothing_written(tmp_path, capsys, args, needle):
    (tmp_path / "empty").mkdir()
    args = [str(tmp_path / "empty") if a == "EMPTY" else a for a in args]
    out = tmp_path / "run"
    rc = main(["train", *BASE, *args, "--epochs", "1", "--out", str(out)])
    assert rc != 0
    assert needle in _err(capsys)
    assert not out.exists()


def test_unwritable_output_folder(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    rc = main(["train", *BASE, "--epochs", "1", "--out", str(blocker / "run")])
    assert rc != 0 and "choose another --out" in _err(capsys)
    rc = main(["train", *BASE, "--epochs", "1", "--out", str(blocker)])
    assert rc != 0 and "not a folder" in _err(capsys)


def test_existing_run_is_not_overwritten(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "1", "--method", "erm", "--out", str(out)]) == 0
    before = (out / "metrics.jsonl").read_text()
    assert main(["train", *BASE, "--epochs", "1", "--out", str(out)]) != 0
    assert "--resume" in capsys.readouterr().err
    assert (out / "metrics.jsonl").read_text() == before


class NaNAfter(nn.Module):
    """Fine for the first `after` training forwards, then returns NaN."""

    def __init__(self, num_classes, in_channels, after=25):
        super().__init__()
        self.fc = nn.Linear(in_channels * 64, num_classes)
        self.calls, self.after = 0, after

    def forward(self, x):
        out = self.fc(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                out = out * float("nan")
        return out


def nan_model(num_classes, in_channels):
    return NaNAfter(num_classes, in_channels)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["train", *BASE, "--epochs", "3", "--method", "erm", "--model", "tests.train.test_train:nan_model",
               "--out", str(out)])
    assert rc != 0
    assert "NaN or inf" in _err(capsys)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in ck["nets"][0]["model"].values())
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1


def test_yaml_config_and_flag_override(tmp_path):
    cfg_file = tmp_path / "c.yaml"
    cfg_file.write_text("dataset: digits\nmodel: mlp\nmeta-per-class: 10\nepochs: 5\nmethod: erm\n")
    out = tmp_path / "run"
    assert main(["train", "--config", str(cfg_file), "--epochs", "1", "--no-progress", "--out", str(out)]) == 0
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["epochs"] == 1 and cfg["method"] == "erm" and cfg["meta_per_class"] == 10
    bad = tmp_path / "bad.yaml"
    bad.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown config key 'epoch'"):
        main_raise(["train", "--config", str(bad), "--out", str(tmp_path / "x")])


def main_raise(argv):
    from famus.cli import build_parser, config_from_args

    return config_from_args(build_parser().parse_args(argv))


def test_track_every_then_report(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *BASE, *NOISE, "--epochs", "1", "--method", "mwnet", "--meta-grad", "famus",
                 "--track-every", "5", "--out", str(out)]) == 0
    rows = [json.loads(x) for x in (out / "tracking.jsonl").read_text().splitlines()]
    assert rows and all(-1.0001 <= r["meta_grad"]["cosine"] <= 1.0001 for r in rows)
    assert main(["report", str(out), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "index.html").stat().st_size > 1000


def test_file_noise_with_one_label_per_dataset_example_follows_the_split(tmp_path):
    """A CIFAR-N style file (a label for every dataset example) with a subset and a meta split:
    each kept training example gets its own row of the file; the meta set stays clean."""
    from famus.data import load_dataset
    from famus.train.data import prepare_data

    full = load_dataset("digits").train_y
    g = torch.Generator().manual_seed(3)
    noisy = torch.where(torch.rand(full.shape, generator=g) < 0.3, (full + 1) % 10, full)
    torch.save(noisy, tmp_path / "labels.pt")
    cfg = TrainConfig(dataset="digits", noise="file", noise_options={"path": str(tmp_path / "labels.pt")},
                      train_subset=800, meta_per_class=5, method="mwnet", out=str(tmp_path / "r"))
    d = prepare_data(cfg)
    assert torch.equal(d.train_y, noisy[d.train_index]) and torch.equal(d.clean_y, full[d.train_index])
    assert d.train_index.numel() == 750 and torch.equal(d.meta_y, full[d.meta_index])


def test_exponent_floats_without_a_dot_are_floats(tmp_path):
    """PyYAML reads ``1e-3`` as a string; famus configs and ``--set`` read it as the float users mean."""
    from famus.train.config import load_config
    from famus.yamlload import safe_load

    assert safe_load("lr: 1e-3\nx: 5E4\ny: -2e+1\nz: 1.5\nname: e5\nn: 3") == {
        "lr": 1e-3, "x": 5e4, "y": -20.0, "z": 1.5, "name": "e5", "n": 3}
    path = tmp_path / "c.yaml"
    path.write_text("dataset: digits\nlr: 1e-3\nweight_decay: 5e-4\n")
    cfg = load_config(path)
    assert cfg.lr == 1e-3 and cfg.weight_decay == 5e-4


@pytest.mark.parametrize("engine", ["exact", "fd"])
def test_tracking_does_not_change_training(tmp_path, engine):
    """--track-every observes: the same seed trains the same run with and without it (warm-up steps included,
    where tracking needs a meta batch the training does not draw)."""
    base = dict(dataset="digits", model="mlp", method="mwnet", meta_grad=engine, epochs=2, noise="symmetric",
                noise_rate=0.4, meta_per_class=10, seed=1, progress=False)
    rows = []
    for every in (0, 5):
        train(dict(base, track_every=every, out=str(tmp_path / f"t{every}")))
        rows.append([(r["test_acc"], r["train_loss"]) for r in map(json.loads, (tmp_path / f"t{every}" /
                                                                                "metrics.jsonl").read_text().splitlines())])
    assert rows[0] == rows[1]
