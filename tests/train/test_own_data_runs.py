"""``famus train`` on your own data: class folders, a trusted set from its own folder, no noise unless asked,
model selection without test labels, bad layouts, and the list of likely mislabeled examples."""

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import famus
from famus.cli import main
from famus.demo import demo_configs
from famus.issues import detection_quality
from famus.train import TrainConfig
from famus.train.checkpoint import load_checkpoint
from famus.train.data import prepare_data
from famus.train.selection import NO_VALIDATION
from tests.own_data import CLASSES, images, save, write_class_folders, write_list, write_split_folders

NAMES = sorted(CLASSES)
ROOT = Path(__file__).resolve().parents[2]


def args(root, *more):
    return ["train", "--dataset", "folder", "--data-dir", str(root), "--model", "mlp", "--set",
            "model_options.hidden=[16]", "--batch-size", "10", "--lr", "0.05", "--threads", "1", "--no-progress",
            *more]


def rows_of(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def one_line(capsys):
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_folder_run_saves_classes_keeps_labels_and_lists_suspects(tmp_path, capsys):
    root = write_split_folders(tmp_path / "data", train=8, val=3, test=4)
    out = tmp_path / "run"
    assert main(args(root, "--method", "mwnet", "--meta-grad", "famus", "--meta-per-class", "2", "--epochs", "2",
                     "--batch-size", "6", "--out", str(out))) == 0  # 3 full batches: every example is visited
    captured = capsys.readouterr()
    assert "injecting" not in captured.err  # no noise was asked for
    assert "best test accuracy" in captured.out and "best validation accuracy" in captured.out
    assert json.loads((out / "classes.json").read_text()) == NAMES
    saved = torch.load(out / "noisy_labels.pt", weights_only=False)
    assert torch.equal(saved["labels"], saved["clean"]) and not saved["corrupted"].any()
    info = json.loads((out / "run.json").read_text())
    assert info["noise"] == "none" and info["realised_noise_rate"] == 0.0 and info["val_examples"] == 9
    rows = rows_of(out / "example_scores.csv")
    assert len(rows) == 24 - 6  # every training example but the 2-per-class meta set
    for r in rows:  # the given label is the folder's class, unchanged; the path is the file
        assert (root / r["path"]).is_file() and r["path"].split("/")[1] == r["given_class"]
        assert NAMES[int(r["given_label"])] == r["given_class"] and float(r["clean_score"]) > 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"] == "best validation accuracy" and "validation split" in summary["val_source"]
    assert summary["clean_score"] == "meta_weight" and "label_issues" not in summary  # no known noise
    issues = famus.label_issues(out)  # flagged first, each part by score; absolute paths
    k = int(issues.flagged.sum())
    assert sorted(issues.clean_score) == sorted(float(r["clean_score"]) for r in rows)
    assert list(issues.clean_score[:k]) == sorted(issues.clean_score[:k])
    assert list(issues.clean_score[k:]) == sorted(issues.clean_score[k:])
    assert all(p == str((root / r).resolve()) for p, r in zip(sorted(issues.path), sorted(r["path"] for r in rows)))
    assert main(["issues", str(out), "--top", "3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0].split() == ["rank", "index", "given", "predicted", "clean_score", "flagged", "path"]
    assert [line.split()[1] for line in lines[1:4]] == [str(i) for i in issues.index[:3]]
    assert lines[1].split()[2] in NAMES and lines[4] == "clean score: meta_weight"


def test_meta_set_comes_from_meta_data_never_from_training(tmp_path):
    train_root = write_class_folders(tmp_path / "train", 6, seed=0, marker=0)
    meta_root = write_class_folders(tmp_path / "meta", 3, seed=50, marker=255)
    out = tmp_path / "run"
    assert main(args(train_root, "--method", "mwnet", "--meta-per-class", "5", "--meta-data", str(meta_root),
                     "--epochs", "1", "--out", str(out))) == 0
    split = torch.load(out / "split.pt", weights_only=False)
    assert torch.equal(split["train_index"], torch.arange(18))  # every training example is trained on
    assert split["meta_source"] == f"--meta-data {meta_root}"
    info = json.loads((out / "run.json").read_text())
    assert info["train_examples"] == 18 and info["meta_examples"] == 9
    cfg = TrainConfig(dataset="folder", data_dir=str(train_root), meta_data=str(meta_root), meta_per_class=5)
    data = prepare_data(cfg)
    assert (data.meta_x[:, :, 0, 0] == 255).all() and (data.train_x[:, :, 0, 0] == 0).all()
    assert data.meta_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # a validation set held out of the trusted set: disjoint from the meta set, together the trusted set
    held = prepare_data(TrainConfig(**{**cfg.to_dict(), "val_per_class": 1}))
    assert held.val_y.tolist() == [0, 1, 2] and held.meta_x.shape[0] == 6 and (held.val_x[:, :, 0, 0] == 255).all()
    rows = {tuple(x.flatten().tolist()) for x in data.meta_x}
    meta_rows = [tuple(x.flatten().tolist()) for x in held.meta_x]
    val_rows = [tuple(x.flatten().tolist()) for x in held.val_x]
    assert set(meta_rows).isdisjoint(val_rows) and set(meta_rows) | set(val_rows) == rows
    assert torch.equal(held.train_y, data.train_y) and torch.equal(held.train_x, data.train_x)


def test_labels_change_only_when_noise_is_asked_for(tmp_path, capsys):
    root = write_class_folders(tmp_path / "data", 10, seed=1)
    assert TrainConfig().noise == "none"
    assert main(args(root, "--method", "erm", "--meta-per-class", "0", "--noise-rate", "0.3",
                     "--out", str(tmp_path / "a"))) == 2
    assert "no noise is injected" in one_line(capsys) and not (tmp_path / "a").exists()
    assert main(args(root, "--method", "erm", "--meta-per-class", "0", "--noise", "symmetric",
                     "--out", str(tmp_path / "a"))) == 2
    assert "--noise symmetric needs a rate" in one_line(capsys) and not (tmp_path / "a").exists()
    out = tmp_path / "noisy"
    assert main(args(root, "--method", "erm", "--meta-per-class", "0", "--noise", "symmetric", "--noise-rate", "0.5",
                     "--epochs", "1", "--out", str(out))) == 0
    line = one_line(capsys)
    saved = torch.load(out / "noisy_labels.pt", weights_only=False)
    changed = int(saved["corrupted"].sum())
    assert line.startswith(f"famus: injecting symmetric label noise at rate 0.5: {changed} of 30 training labels")
    assert changed > 5 and [int(r["given_label"]) for r in rows_of(out / "example_scores.csv")] == \
        saved["labels"].tolist()
    # the demo and every shipped config say which noise they inject
    assert all(cfg.noise == "symmetric" and cfg.noise_rate == 0.6 for _, cfg in demo_configs(tmp_path / "demo"))
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        assert "noise" in yaml.safe_load(path.read_text()), path.name


def _bad_layout(tmp_path, case):
    root = write_split_folders(tmp_path / "data", train=3, val=0, test=2)
    more = []
    if case == "empty class folder":
        (root / "train" / "empty").mkdir()
    elif case == "unreadable image":
        (root / "train" / "moth" / "001.png").write_bytes(b"\x89PNG but cut short")
    elif case == "test label outside the classes":
        save(images(0, 1, seed=3)[0], root / "test" / "wolf" / "0.png")
    elif case == "meta-data label outside the classes":
        more = ["--meta-data", str(write_class_folders(tmp_path / "meta", 1, seed=4, classes=("ant", "wolf")))]
    elif case == "list label outside the classes":
        write_list(tmp_path / "lst", "train.txt", 2, seed=5)
        (tmp_path / "lst" / "test.txt").write_text("imgs/train.txt-ant-0.png wolf\n")
        return ["--dataset", "listfile", "--data-dir", str(tmp_path / "lst")]
    return ["--data-dir", str(root), *more]


@pytest.mark.parametrize("case,needle", [
    ("empty class folder", "has no images"),
    ("unreadable image", "001.png is corrupt or unreadable"),
    ("test label outside the classes", "label 'wolf' (class folder wolf in"),
    ("meta-data label outside the classes", "label 'wolf' (class folder wolf in"),
    ("list label outside the classes", "label 'wolf' (line 1 of"),
])
def test_bad_layouts_are_one_line_errors_and_write_nothing(tmp_path, capsys, case, needle):
    out = tmp_path / "run"
    rc = main([*args(tmp_path, "--method", "mwnet", "--meta-per-class", "1", "--out", str(out)),
               *_bad_layout(tmp_path, case)])
    assert rc == 2
    err = one_line(capsys)
    assert err.startswith("famus train: error: ") and needle in err, err
    assert not out.exists()


def test_model_selection_uses_no_test_label(tmp_path):
    """Scramble the test labels (move every test image to a random class folder): model_best.pt is the same."""
    a = write_split_folders(tmp_path / "a", train=20, val=10, test=20, seed=0, noise=200.0)
    b = tmp_path / "b"
    shutil.copytree(a, b)
    rng = random.Random(0)
    for i, f in enumerate(sorted((b / "test").rglob("*.png"))):
        f.rename(b / "test" / rng.choice(NAMES) / f"s{i}.png")
    summaries, tests = [], []
    for root in (a, b):
        out = tmp_path / f"run-{root.name}"
        assert main(args(root, "--method", "erm", "--meta-per-class", "0", "--noise", "symmetric", "--noise-rate",
                         "0.4", "--epochs", "6", "--seed", "3", "--out", str(out))) == 0
        summaries.append(json.loads((out / "summary.json").read_text()))
        tests.append([json.loads(x)["test_acc"] for x in (out / "metrics.jsonl").read_text().splitlines()])
    best = [load_checkpoint(tmp_path / f"run-{r}" / "model_best.pt") for r in ("a", "b")]
    assert best[0]["epoch"] == best[1]["epoch"] == summaries[0]["val_chosen_epoch"] == summaries[1]["val_chosen_epoch"]
    assert all(torch.equal(best[0]["model"][k], best[1]["model"][k]) for k in best[0]["model"])
    # the scramble matters: choosing on the test labels would have picked other epochs in each run
    argmax = [t.index(max(t)) + 1 for t in tests]
    assert tests[0] != tests[1] and argmax[0] != argmax[1] and best[0]["epoch"] not in argmax
    assert summaries[0]["val_chosen_acc"] == tests[0][best[0]["epoch"] - 1]
    assert summaries[0]["best_test_acc"] == max(tests[0])


def test_without_validation_data_the_last_epoch_is_chosen_and_said(tmp_path, capsys):
    root = write_class_folders(tmp_path / "data", 5, seed=2)
    out = tmp_path / "run"
    assert main(args(root, "--method", "erm", "--meta-per-class", "0", "--epochs", "2", "--out", str(out))) == 0
    text = capsys.readouterr().out
    assert "n/a (no test set)" in text and NO_VALIDATION in text
    summary = json.loads((out / "summary.json").read_text())
    assert summary["selection"] == NO_VALIDATION and summary["val_chosen_epoch"] == 2
    assert summary["best_test_acc"] is None and load_checkpoint(out / "model_best.pt")["epoch"] == 2


def test_feature_vectors_train_with_the_mlp(tmp_path, capsys):
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, (3, 5))
    y = np.repeat(np.array(NAMES), 20)
    x = centers[np.repeat(np.arange(3), 20)] + rng.normal(0, 1, (60, 5))
    np.savez(tmp_path / "f.npz", x_train=x, y_train=y, x_test=x[::3], y_test=y[::3])
    common = ["train", "--dataset", "arrays", "--data-dir", str(tmp_path / "f.npz"), "--batch-size", "10",
              "--meta-per-class", "3", "--epochs", "3", "--no-progress", "--threads", "1"]
    assert main([*common, "--model", "mlp", "--method", "mwnet", "--out", str(tmp_path / "run")]) == 0
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["last_test_acc"] > 0.8
    assert main([*common, "--model", "lenet", "--out", str(tmp_path / "bad")]) == 2
    assert "use --model mlp" in one_line(capsys) and not (tmp_path / "bad").exists()


def test_erm_scores_are_the_probability_of_the_given_label(tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--method", "erm", "--meta-per-class", "10",
                 "--batch-size", "64", "--epochs", "2", "--noise", "symmetric", "--noise-rate", "0.4", "--threads", "1",
                 "--no-progress", "--out", str(out)]) == 0
    cfg = TrainConfig(**{k: v for k, v in yaml.safe_load((out / "config.yaml").read_text()).items()})
    data = prepare_data(cfg)
    model = famus.models.build_model("mlp", num_classes=10, in_channels=1, input_size=8)
    model.load_state_dict(load_checkpoint(out / "checkpoint.pt")["nets"][0]["model"])
    model.eval()
    with torch.no_grad():
        p = torch.softmax(model(data.augmenter.normalize(data.train_x)), 1)
    rows = rows_of(out / "example_scores.csv")
    given = p.gather(1, data.train_y[:, None]).squeeze(1)
    np.testing.assert_allclose([float(r["clean_score"]) for r in rows], given.numpy(), rtol=1e-4, atol=1e-6)
    assert [int(r["predicted_label"]) for r in rows] == p.argmax(1).tolist()
    summary = json.loads((out / "summary.json").read_text())
    expected = detection_quality(given.numpy(), data.corrupted.numpy())
    assert summary["label_issues"]["n_noisy"] == expected["n_noisy"]
    assert summary["label_issues"]["auroc"] == pytest.approx(expected["auroc"], abs=1e-4)
