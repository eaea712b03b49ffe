"""--meta-set pseudo: cross-assignment, no clean labels read, metrics."""

import json
import math

import pytest
import torch

import famus
import famus.train.pseudo as pseudo
from famus.train import TrainConfig, train
from famus.train import data as data_mod
from famus.train.checkpoint import load_checkpoint

COMMON = dict(dataset="digits", model="mlp", method="mwnet", meta_grad="famus", meta_set="pseudo", epochs=3,
              batch_size=64, lr=0.05, noise="symmetric", noise_rate=0.5, progress=False, seed=2,
              pseudo_options={"warmup_epochs": 1, "rampup_epochs": 1})


def test_pseudo_run_records_split_quality(tmp_path):
    summary = train(TrainConfig(**COMMON, out=str(tmp_path / "run")))
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "meta", "meta"]
    for r in rows:
        assert 0 <= r["split_precision"] <= 1 and 0 <= r["split_recall"] <= 1
        assert {"test_acc_net1", "test_acc_net2", "test_acc"} <= set(r)
    # the GMM split is far better than chance (half the labels are clean-ish: 1 - 0.5 * 9/10)
    assert rows[-1]["split_precision"] > 0.7
    assert summary["best_test_acc"] > 0.5
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["meta_examples"] == 0  # no held-out clean set in this mode
    # the clean score of pseudo mode is the GMM's clean probability; it finds the injected noise
    issues = famus.label_issues(tmp_path / "run")
    assert summary["clean_score"] == "gmm_clean_probability" and len(issues) == run["train_examples"]
    assert ((issues.clean_score >= 0) & (issues.clean_score <= 1)).all()
    assert summary["label_issues"]["auroc"] > 0.8 and summary["selection"] == "last epoch (no validation data)"


def test_training_never_reads_clean_labels(tmp_path, monkeypatch):
    """Scramble the clean labels the run holds: the trained weights must not change."""
    a = train(TrainConfig(**COMMON, out=str(tmp_path / "a")))
    real = data_mod.prepare_data

    def scrambled(cfg, device="cpu"):
        d = real(cfg, device)
        g = torch.Generator().manual_seed(99)
        d.clean_y = torch.randint(0, d.num_classes, d.clean_y.shape, generator=g)
        d.corrupted = d.train_y != d.clean_y
        return d

    monkeypatch.setattr("famus.train.loop.prepare_data", scrambled)
    b = train(TrainConfig(**COMMON, out=str(tmp_path / "b")))
    ca, cb = (load_checkpoint(tmp_path / r / "checkpoint.pt") for r in ("a", "b"))
    for ma, mb in zip(*([n["model"] for n in c["nets"]] for c in (ca, cb))):
        for k in ma:
            assert torch.equal(ma[k], mb[k]), k
    assert a["best_test_acc"] == b["best_test_acc"]
    ra = json.loads((tmp_path / "a" / "metrics.jsonl").read_text().splitlines()[-1])
    rb = json.loads((tmp_path / "b" / "metrics.jsonl").read_text().splitlines()[-1])
    assert ra["split_precision"] != rb["split_precision"]  # the oracle only feeds the report


def test_cross_assignment(monkeypatch):
    """Network A's split is B's meta set and labeled set, and vice versa."""
    seen = []
    real_split = pseudo.split_by_probability

    def spy(prob, threshold, min_size=1):
        seen.append(prob)
        return real_split(prob, threshold, min_size)

    monkeypatch.setattr(pseudo, "split_by_probability", spy)
    calls = []
    real_gmm = pseudo.gmm_clean_probability

    def gmm(losses, **kw):
        p = real_gmm(losses, **kw)
        calls.append(p)
        return p

    monkeypatch.setattr(pseudo, "gmm_clean_probability", gmm)
    steps = []
    from famus.meta.learner import MetaLearner

    real_step = MetaLearner.step

    def step(self, x, y, xm, ym, **kw):
        steps.append(id(self))
        return real_step(self, x, y, xm, ym, **kw)

    monkeypatch.setattr(MetaLearner, "step", step)
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        train(TrainConfig(**{**COMMON, "epochs": 2}, out=d + "/run"))
    # epoch 2: probs of net1 (calls[2]) and net2 (calls[3]); the first network trains on net2's split
    p1, p2 = calls[2], calls[3]
    meta_epoch = seen[4:]  # 2 reporting splits per epoch come first
    assert meta_epoch[0] is p2 and meta_epoch[1] is p2  # net 1 is fed by net 2 (labeled, meta)
    assert meta_epoch[2] is p1 and meta_epoch[3] is p1  # net 2 is fed by net 1
    assert len(set(steps)) == 2


@pytest.mark.parametrize("method, engine", [("l2r", "famus"), ("mwnet", "exact"), ("mwnet", "fd"),
                                            ("mwnet", "famus-jvp+lagged")])
def test_pseudo_runs_with_other_methods_and_engines(tmp_path, method, engine):
    summary = train(TrainConfig(**{**COMMON, "method": method, "meta_grad": engine, "epochs": 2},
                                out=str(tmp_path / "r")))
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["phase"] == "meta" and math.isfinite(rows[-1]["train_loss"])
    assert summary["best_test_acc"] > 0.3  # 10 classes: far above chance after one meta epoch


def test_semi_false_is_algorithm_2_on_noisy_labels(tmp_path, monkeypatch):
    """``semi: false``: every step trains on hard noisy labels of the training set, meta set from the split."""
    from famus.meta.learner import MetaLearner

    seen = []
    real_step = MetaLearner.step

    def step(self, x, y, xm, ym, **kw):
        seen.append((y.dtype, y.dim()))
        return real_step(self, x, y, xm, ym, **kw)

    monkeypatch.setattr(MetaLearner, "step", step)
    summary = train(TrainConfig(**{**COMMON, "pseudo_options": {"warmup_epochs": 1, "semi": False}},
                                out=str(tmp_path / "r")))
    assert seen and set(seen) == {(torch.int64, 1)}
    rows = [json.loads(x) for x in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert "lambda_u" not in rows[-1] and rows[-1]["phase"] == "meta"
    assert summary["best_test_acc"] > 0.5


def test_pseudo_erm_is_dividemix(tmp_path):
    """``--method erm`` co-trains on the MixMatch batches with no meta model (DivideMix)."""
    summary = train(TrainConfig(**{**COMMON, "method": "erm"}, out=str(tmp_path / "x")))
    rows = [json.loads(x) for x in (tmp_path / "x" / "metrics.jsonl").read_text().splitlines()]
    assert [r["phase"] for r in rows] == ["warmup", "semi", "semi"]
    assert summary["best_test_acc"] > 0.5


def test_pseudo_resume_equals_uninterrupted(tmp_path):
    full = train(TrainConfig(**COMMON, out=str(tmp_path / "full")))
    train(TrainConfig(**{**COMMON, "epochs": 2}, out=str(tmp_path / "cut")))
    resumed = train(TrainConfig(**COMMON, out=str(tmp_path / "cut"), resume=True))
    a, b = (load_checkpoint(tmp_path / r / "checkpoint.pt") for r in ("full", "cut"))
    for ma, mb in zip(*([n["model"] for n in c["nets"]] + [n["learner"]["method"]["meta_model"] for n in c["nets"]]
                        for c in (a, b))):
        for k in ma:
            assert torch.equal(ma[k], mb[k]), k
    assert full["best_test_acc"] == resumed["best_test_acc"] and resumed["epochs"] == 3
    ra = [json.loads(x) for x in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()]
    rb = [json.loads(x) for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert [r["test_acc"] for r in ra] == [r["test_acc"] for r in rb]


@pytest.mark.parametrize("options, message", [
    ({"p_treshold": 0.5}, "unknown pseudo_options"),
    ({"p_threshold": 1.5}, "p_threshold must be in"),
    ({"alpha": 0}, "alpha must be > 0"),
])
def test_bad_pseudo_options_write_nothing(tmp_path, options, message):
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=message):
        train(TrainConfig(**{**COMMON, "pseudo_options": options}, out=str(out)))
    assert not out.exists()


def test_pseudo_rejects_mlc_and_other_losses(tmp_path):
    with pytest.raises(ValueError, match="use --loss ce"):
        train(TrainConfig(**{**COMMON, "loss": "focal"}, out=str(tmp_path / "a")))
    with pytest.raises(ValueError, match="soft MixMatch targets"):
        train(TrainConfig(**{**COMMON, "method": "mlc"}, out=str(tmp_path / "b")))
