"""Find, prune and retrain (``--method prune``): which examples are flagged, that the folds and the retrain
train on exactly their rows, the run folder, bad options, and resume."""

import json

import numpy as np
import pytest
import torch
import yaml

import famus.train.batches as batches
import famus.train.loop as loop
import famus.train.prune as prune
from famus.cli import main
from famus.issues import read_scores
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from famus.train.data import prepare_data
from famus.train.nets import build_net
from famus.train.prune import confident_issues, fold_rows
from famus.verified import load_verified
from tests.train.test_run_folder import _interrupt_after, assert_same_run

COMMON = dict(dataset="digits", model="mlp", method="prune", meta_per_class=10, batch_size=64, lr=0.05,
              progress=False, threads=1, noise="symmetric", noise_rate=0.4, epochs=1,
              method_options={"folds": 2})


def test_confident_learning_flags_the_confident_joints_off_diagonal():
    """Thresholds t = (0.6, 0.55, 0.4) (mean self-confidence per given label); by hand:"""
    labels = np.array([0, 0, 0, 1, 1, 2, 2])
    probs = np.array([
        [0.90, 0.05, 0.05],  # 0: its label is confident                                   -> kept
        [0.10, 0.85, 0.05],  # 0: class 1 >= t_1 = 0.55, label 0 below t_0                 -> flagged
        [0.80, 0.10, 0.10],  # 0: (t_0 = mean(0.9, 0.1, 0.8) = 0.6)                          -> kept
        [0.05, 0.50, 0.45],  # 1: 0.50 < t_1, class 2's 0.45 >= t_2 = 0.4, but 1 is the argmax -> kept (cleanlab's rule)
        [0.30, 0.60, 0.10],  # 1: (t_1 = mean(0.5, 0.6) = 0.55)                              -> kept
        [0.20, 0.70, 0.10],  # 2: class 1 confident, label 2 not                              -> flagged
        [0.10, 0.20, 0.70],  # 2: (t_2 = mean(0.1, 0.7) = 0.4)                                -> kept
    ])
    assert confident_issues(labels, probs).tolist() == [False, True, False, False, False, True, False]
    # no class reaches its threshold: the example is not counted (not flagged)
    assert not confident_issues(np.array([0, 0, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]]))[0]
    # two confident classes: the more probable one is the likely true class
    both = confident_issues(np.array([0, 0, 1, 1]), np.array([[0.4, 0.6], [0.6, 0.4], [0.3, 0.7], [0.5, 0.5]]))
    assert both.tolist() == [True, False, False, True]


def test_confident_learning_agrees_with_cleanlab():
    """On random out-of-fold-like probabilities, cleanlab's ``confident_learning`` filter flags the same set."""
    filt = pytest.importorskip("cleanlab.filter")
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 4, 400)
    probs = rng.dirichlet(np.ones(4), 400) * 0.5 + 0.5 * np.eye(4)[labels] * (rng.random(400) > 0.3)[:, None]
    probs /= probs.sum(1, keepdims=True)
    theirs = filt.find_label_issues(labels, probs, filter_by="confident_learning")
    assert (confident_issues(labels, probs) == theirs).mean() > 0.99  # differ only in cleanlab's argmax edge case


def _known_probs(labels, classes):
    """Out-of-fold probabilities with known flags: every 7th example's probability sits on the next class."""
    rows = np.arange(len(labels))
    guess = np.where(rows % 7 == 0, (labels + 1) % classes, labels)
    return np.full((len(labels), classes), 0.1 / (classes - 1)) + np.eye(classes)[guess] * (0.9 - 0.1 / (classes - 1))


def test_the_retrain_trains_on_exactly_the_unflagged_examples(tmp_path, monkeypatch):
    """Known probabilities -> known flags; the folds train on their rows only, the retrain on the others."""
    cfg = TrainConfig(**COMMON, out=str(tmp_path / "r"))
    data = prepare_data(cfg)
    labels = data.train_y.numpy()
    known = _known_probs(labels, data.num_classes)
    monkeypatch.setattr(prune, "probabilities", lambda model, data, rows, bs: known[rows])
    seen = []
    real = batches.shuffled

    def spy(data, gen, pos, batch, iters, rows=None, among=None):
        for it, x, idx in real(data, gen, pos, batch, iters, rows, among):
            seen[-1].append(idx)
            yield it, x, idx

    monkeypatch.setattr(batches, "shuffled", spy)
    real_setup = loop.setup
    monkeypatch.setattr(prune, "setup", lambda *a, **k: (seen.append([]), real_setup(*a, **k))[1])
    summary = train(cfg)
    flagged = np.arange(len(labels)) % 7 == 0
    ranking = load_verified(tmp_path / "r" / "prune.pt")
    assert ranking["flagged"].numpy().tolist() == flagged.tolist()
    folds = fold_rows(labels, 2, cfg.seed)
    assert len(seen) == 3  # two folds, then the retrain
    for (tr, held), idx in zip(folds, seen):
        used = torch.cat(idx).numpy()
        assert set(used) <= set(tr) and not set(used) & set(held)
    final = torch.cat(seen[2]).numpy()
    assert set(final) <= set(np.flatnonzero(~flagged)) and len(final) == len(set(final)) == (~flagged).sum() // 64 * 64
    ck = load_checkpoint(tmp_path / "r" / "checkpoint.pt")
    assert ck["train_rows"].tolist() == np.flatnonzero(~flagged).tolist()
    pruned = read_scores(tmp_path / "r" / "pruned.csv")
    assert sorted(pruned.index.tolist()) == sorted(data.train_index[torch.from_numpy(flagged)].tolist())
    assert summary["prune"]["flagged"] == flagged.sum() and summary["prune"]["kept"] == (~flagged).sum()
    assert summary["clean_score"] == "out_of_fold_prob_given_label"
    scores = read_scores(tmp_path / "r" / "example_scores.csv")  # the ranking, over the whole training set
    assert scores.index.tolist() == data.train_index.tolist()  # training-set order
    assert np.allclose(scores.clean_score, np.where(flagged, 0.1 / (data.num_classes - 1), 0.9), atol=1e-6)


def test_out_of_fold_probabilities_come_from_each_folds_model(tmp_path):
    """Without stand-ins: the flags are confident learning on the fold models' probabilities of their held-out
    rows; the run's accuracies are the retrain's."""
    out = tmp_path / "r"
    summary = train(TrainConfig(**COMMON, out=str(out)))
    cfg = TrainConfig(**COMMON, out=str(out))
    data = prepare_data(cfg)
    probs = np.zeros((data.train_y.numel(), data.num_classes))
    for k, (_, held) in enumerate(fold_rows(data.train_y.numpy(), 2, cfg.seed)):
        fold = load_checkpoint(out / "rank" / f"fold{k + 1}" / "checkpoint.pt")
        net = build_net(TrainConfig(**{**COMMON, "method": "erm"}), data, torch.device("cpu"))
        net.model.load_state_dict(fold["nets"][0]["model"])
        probs[held] = prune.probabilities(net.model, data, held, 1000)
    ranking = load_verified(out / "prune.pt")
    assert ranking["flagged"].numpy().tolist() == confident_issues(data.train_y.numpy(), probs).tolist()
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert summary["last_test_acc"] == rows[-1]["test_acc"] and summary["prune"]["rank_steps"] > 0
    assert summary["prune"]["flagged_precision"] > 0.5  # noise 0.4: most flagged labels are wrong


def test_resume_in_a_fold_and_in_the_retrain_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = dict(COMMON, epochs=2, method_options={"folds": 2, "fold_epochs": 1}, checkpoint_every=5)
    ref = tmp_path / "ref"
    train(TrainConfig(**{**cfg, "checkpoint_every": None}, out=str(ref)))
    for name, when in (("fold 2", lambda s: s["config"]["out"].endswith("fold2") and s["position"] is not None),
                       ("retrain", lambda s: s["config"]["method"] == "prune" and s["epoch"] == 1
                        and s["position"] is not None)):
        out = tmp_path / name.replace(" ", "")
        seen = _interrupt_after(monkeypatch, loop, when)
        with pytest.raises(KeyboardInterrupt):
            train(TrainConfig(**cfg, out=str(out)))
        assert seen, name
        monkeypatch.undo()
        fold1 = (out / "rank" / "fold1" / "checkpoint.pt").stat().st_mtime_ns
        train(TrainConfig(**cfg, out=str(out), resume=True))
        assert (out / "rank" / "fold1" / "checkpoint.pt").stat().st_mtime_ns == fold1  # finished: not trained again
        assert_same_run(out, ref)
        for k in (1, 2):
            assert_same_run(out / "rank" / f"fold{k}", ref / "rank" / f"fold{k}")
        flags = [load_verified(run / "prune.pt")["flagged"].tolist() for run in (out, ref)]
        assert flags[0] == flags[1]


def test_a_fold_resumed_on_its_own_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    train(TrainConfig(**COMMON, out=str(out)))
    assert main(["train", "--out", str(out / "rank" / "fold1"), "--resume", "--epochs", "2"]) == 2
    assert "trained on other training examples" in capsys.readouterr().err


def test_the_famus_ranker_flags_low_meta_weights(tmp_path):
    out = tmp_path / "r"
    summary = train(TrainConfig(**{**COMMON, "method_options": {"ranker": "famus", "threshold": 0.8}}, out=str(out)))
    scores = read_scores(out / "rank" / "famus" / "example_scores.csv")  # the MW-Net run's clean scores
    ranking = load_verified(out / "prune.pt")
    score = np.nan_to_num(scores.clean_score, nan=np.inf)  # never visited: kept
    expected = score < 0.8
    clear = np.abs(score - 0.8) > 1e-5  # the CSV holds 6 significant digits: 0.7999999 reads as 0.8
    flagged = ranking["flagged"].numpy()
    assert (flagged[clear] == expected[clear]).all() and 0 < expected.sum() < len(expected) and clear.mean() > 0.99
    assert summary["clean_score"] == "meta_weight" and summary["prune"]["folds"] is None
    assert yaml.safe_load((out / "rank" / "famus" / "config.yaml").read_text())["method"] == "mwnet"


def test_the_cleanlab_ranker(tmp_path):
    pytest.importorskip("cleanlab")
    summary = train(TrainConfig(**{**COMMON, "method_options": {"ranker": "cleanlab", "folds": 2}},
                                out=str(tmp_path / "r")))
    assert summary["prune"]["ranker"] == "cleanlab" and summary["prune"]["flagged"] > 0


ARGS = ["train", "--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--epochs", "1", "--no-progress",
        "--method", "prune"]


@pytest.mark.parametrize("extra, needle", [
    (["--set", "method_options.ranker=nope"], "ranker must be one of confident, cleanlab, famus"),
    (["--set", "method_options.folds=1"], "folds must be >= 2"),
    (["--set", "method_options.folds=3000"], "method_options folds 3000: Cannot have number of splits"),
    (["--set", "method_options.fold_epochs=0"], "fold_epochs must be >= 1"),
    (["--set", "method_options.threshold=-1"], "threshold must be >= 0"),
    (["--set", "method_options.meta_method=mlc"], "meta_method must be one of"),
    (["--set", "method_options.k=3"], "unknown method_options ['k']; valid: fold_epochs, folds, meta_method"),
    (["--set", "method_options.ranker=famus", "--meta-per-class", "0"], "method 'prune' needs a meta set"),
    (["--meta-set", "pseudo", "--meta-per-class", "0"], "--method prune cannot"),
])
def test_bad_options_one_line_nothing_written(tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    assert main([*ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()


def test_cleanlab_missing_is_one_line(tmp_path, capsys, monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "cleanlab" else real(name, *a))
    out = tmp_path / "r"
    assert main([*ARGS, "--set", "method_options.ranker=cleanlab", "--out", str(out)]) == 2
    assert "pip install cleanlab" in capsys.readouterr().err and not out.exists()
