"""Long-tailed runs: class counts, many/medium/few-shot groups, --loss, MLC from the command line."""

import json
from pathlib import Path

import pytest
import torch

from famus.cli import main
from famus.data import DATASETS
from famus.data.errors import DataError
from famus.data.longtail import longtail_counts
from famus.losses import LDAMLoss
from famus.train import TrainConfig
from famus.train.data import prepare_data, shot_groups
from famus.train.evaluation import group_accuracy

from ..data.test_data_loaders import write_cifar10

BASE = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "32", "--no-progress",
        "--lr", "0.05", "--epochs", "2"]


def test_fashion_mnist_long_tail_counts_and_meta_set():
    cfg = TrainConfig(dataset="fashion-mnist", imbalance=100, meta_per_class=10, noise="none", noise_rate=0.0)
    try:
        data = prepare_data(cfg)
    except DataError:
        pytest.skip("Fashion-MNIST is not installed")
    counts = data.class_counts().tolist()
    assert counts == longtail_counts(5990, 10, 100)  # 6000 per class, 10 of each held out as meta set
    assert counts[0] == 5990 and counts[-1] == 59
    assert torch.bincount(data.meta_y, minlength=10).tolist() == [10] * 10
    assert set(data.train_index.tolist()).isdisjoint(data.meta_index.tolist())
    assert torch.equal(data.label_counts(), data.class_counts())  # no noise: labels are the clean ones


def test_digits_long_tail_counts_follow_the_profile():
    data = prepare_data(TrainConfig(dataset="digits", imbalance=10, meta_per_class=10, noise="none",
                                    noise_rate=0.0))
    counts = data.class_counts().tolist()
    assert counts == longtail_counts(counts[0], 10, 10)
    assert counts[0] / counts[-1] == pytest.approx(10, rel=0.1)


def test_shot_groups_thresholds_on_cifar100_lt():
    counts = torch.tensor(longtail_counts(500, 100, 100))
    groups, rule = shot_groups(counts)
    assert rule == "thresholds"
    assert [len(groups[g]) for g in ("many", "medium", "few")] == [35, 35, 30]  # the usual CIFAR-100-LT split
    assert all(counts[i] > 100 for i in groups["many"]) and all(counts[i] < 20 for i in groups["few"])


def test_shot_groups_fall_back_to_tertiles_for_ten_classes():
    counts = torch.tensor(longtail_counts(5000, 10, 100))  # 5000 .. 50: no class below 20
    groups, rule = shot_groups(counts)
    assert rule == "tertiles"
    assert groups == {"many": [0, 1, 2], "medium": [3, 4, 5, 6], "few": [7, 8, 9]}
    shuffled = counts[torch.tensor([9, 0, 5, 1, 8, 2, 7, 3, 6, 4])]  # by count, not by class index
    g2, _ = shot_groups(shuffled)
    assert g2["many"] == [1, 3, 5] and g2["few"] == [0, 4, 6]


def test_group_accuracy_is_the_mean_per_class_accuracy():
    per_class = torch.tensor([1.0, 0.8, 0.6, 0.4, 0.2, 0.0])
    got = group_accuracy(per_class, {"many": [0, 1], "medium": [2, 3], "few": [4, 5]})
    assert got == pytest.approx({"many": 0.9, "medium": 0.5, "few": 0.1})
    assert group_accuracy(per_class, {"many": [0], "medium": [], "few": [5]})["medium"] is None


def test_long_tailed_run_reports_groups_and_uses_ldam_with_drw(tmp_path, capsys, monkeypatch):
    epochs_seen = []
    original = LDAMLoss.set_epoch

    def spy(self, epoch):
        epochs_seen.append(epoch)
        original(self, epoch)

    monkeypatch.setattr(LDAMLoss, "set_epoch", spy)
    out = tmp_path / "run"
    rc = main(["train", *BASE, "--imbalance", "10", "--noise", "none", "--noise-rate", "0", "--method", "mwnet",
               "--loss", "ldam", "--set", "loss_options={s: 1.0, drw_epoch: 1}", "--out", str(out)])
    assert rc == 0
    assert epochs_seen[-2:] == [0, 1]  # once at construction, then at the start of every epoch
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    info = json.loads((out / "run.json").read_text())
    assert sorted(sum(info["class_groups"].values(), [])) == list(range(10))
    assert (info["class_groups"], info["group_rule"]) == shot_groups(torch.tensor(info["class_counts"]))
    assert info["group_rule"] == "thresholds"  # digits at imbalance 10: about 165 .. 16 examples per class
    for r in rows:
        assert set(r["group_acc"]) == {"many", "medium", "few"} and r["group_rule"] == info["group_rule"]
        assert len(r["per_class_acc"]) == 10
        assert all(0 <= a <= 1 for a in r["group_acc"].values())
        for g, classes in info["class_groups"].items():
            assert r["group_acc"][g] == pytest.approx(sum(r["per_class_acc"][i] for i in classes) / len(classes),
                                                      abs=1e-5)
    assert "few-shot" in capsys.readouterr().out


def test_balanced_run_has_no_group_record(tmp_path):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "1", "--method", "erm", "--loss", "focal", "--out", str(out)]) == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert "group_acc" not in rec and rec["train_loss"] > 0


@pytest.mark.parametrize("engine", ["exact", "famus"])
def test_mlc_trains_from_the_command_line(tmp_path, engine):
    out = tmp_path / "run"
    rc = main(["train", *BASE, "--noise", "pair", "--noise-rate", "0.4", "--method", "mlc", "--meta-grad", engine,
               "--out", str(out)])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_acc"] > 0.3
    ck = torch.load(out / "checkpoint.pt", weights_only=False)
    T = torch.softmax(ck["nets"][0]["learner"]["method"]["meta_model"]["T_logits"], 1)
    torch.testing.assert_close(T.sum(1), torch.ones(10, dtype=T.dtype))


def test_loss_errors_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--method", "mlc", "--loss", "ldam", "--out", str(out)]) != 0
    assert "cannot be combined" in capsys.readouterr().err and not out.exists()
    assert main(["train", *BASE, "--loss", "nope", "--out", str(out)]) != 0
    assert "unknown loss function 'nope'" in capsys.readouterr().err and not out.exists()
    assert main(["train", *BASE, "--loss", "focal", "--set", "loss_options.gama=2", "--out", str(out)]) != 0
    assert "valid options: gamma" in capsys.readouterr().err and not out.exists()


def test_fashion_mnist_is_registered():
    assert "fashion-mnist" in DATASETS


@pytest.mark.parametrize("config,extra", [
    ("table8-cifar10-if100-famus.yaml", ["--imbalance", "4", "--model", "resnet20", "--loss", "ldam"]),
    ("table2-mlc-cifar10-r40.yaml", ["--model", "wrn", "--set", "model_options={depth: 10, widen_factor: 1}",
                                     "--meta-grad", "famus"]),
])
def test_table_configs_run_on_cifar_files(tmp_path, config, extra):
    write_cifar10(tmp_path / "data", per_batch=40)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(Path(__file__).parents[2] / "configs" / config), *extra,
               "--data-dir", str(tmp_path / "data"), "--meta-per-class", "2", "--epochs", "1", "--batch-size", "16",
               "--device", "cpu", "--no-progress", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["epoch"] == 1 and 0 <= rec["test_acc"] <= 1
    assert ("group_acc" in rec) == ("table8" in config)
