"""The label-free health check: right on hand-made weights, silent where it should be, free for training."""

import json
import math

import pytest
import torch

from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from famus.train.health import (
    BINS,
    MIN_META_STEPS,
    HealthMeter,
    assess,
    auc,
    bin_edges,
    hist_quantiles,
    null_se,
    recheck,
)


def test_meter_histogram_quantiles_moments_and_class_means():
    m = HealthMeter(3, torch.device("cpu"))
    # batch of 4: relative weights c_i * 4 = 2, 1, 1, 0 -> mean 1, cv sqrt(0.5)
    m.update(torch.tensor([0.5, 0.25, 0.25, 0.0]), torch.tensor([0, 1, 1, 2]), batch=4, meta_updated=True)
    w = m.window()
    assert w["zero_share"] == 0.25 and w["meta_steps"] == 1
    assert w["w_cv"] == pytest.approx(math.sqrt(0.5), abs=1e-6)
    edges = bin_edges()

    def bin_of(v):
        return next(i for i in range(BINS) if edges[i] <= v < edges[i + 1])

    assert w["w_q"][0] == 0.0  # below 1e-3 of uniform
    assert bin_of(w["w_q"][2]) == bin_of(1.0) and bin_of(w["w_q"][4]) == bin_of(2.0)  # inside their bins
    m.update(torch.full((4,), 0.25), torch.tensor([0, 0, 1, 2]), batch=4, meta_updated=False)  # uniform
    w = m.window()
    assert w["w_q"] == [1.0] * 5 and w["w_cv"] == 0.0 and w["meta_steps"] == 0  # equal weights: exactly 1
    e = m.epoch()
    assert sum(e["weight_hist"]["counts"]) == 8 and len(e["weight_hist"]["counts"]) == BINS
    assert len(e["weight_hist"]["edges"]) == BINS + 1
    assert e["class_weight"] == [pytest.approx(4 / 3), 1.0, 0.5]  # class 0: 2, 1, 1; class 1: 1, 1, 1, 1...
    m2 = HealthMeter(3, torch.device("cpu"))
    m2.load_state_dict(m.state_dict())
    assert m2.epoch()["class_weight"] == [None, None, None]  # the epoch restarted after epoch()


def test_hist_quantiles_and_auc():
    edges = bin_edges()
    counts = [0] * BINS
    j = next(i for i, e in enumerate(edges) if e >= 1.0) - 1  # the bin holding 1.0
    counts[j] = 10
    q = hist_quantiles(counts)
    assert all(edges[j] <= v <= edges[j + 1] for v in q) and q == sorted(q)
    assert hist_quantiles([0] * BINS) == [None] * 5
    assert auc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == 1.0
    assert auc(torch.tensor([1.0]), torch.tensor([1.0])) == 0.5 and auc(torch.tensor([]), torch.ones(2)) is None
    assert null_se(100, 100) == pytest.approx(math.sqrt(201 / 120000))


def test_assess_warnings():
    ok_v = {"0.1": 0.6, "0.3": 0.6, "1": 0.5, "2": 0.3, "3": 0.2, "5": 0.1}
    assert assess("mwnet", {"w_cv": 0.5, "v_curve": ok_v}, {"probe_flip_auc": 0.9, "probe_se": 0.03}, 100) == []
    assert assess("mwnet", {"w_cv": 0.01, "v_curve": ok_v}, None, MIN_META_STEPS - 1) == []  # too early to say
    assert assess("mwnet", {"w_cv": 0.01, "v_curve": ok_v}, None, 100)[0].startswith("flat")
    low = {k: v / 100 for k, v in ok_v.items()}
    assert assess("mwnet", {"w_cv": 0.5, "v_curve": low}, None, 100)[0].startswith("collapsing")
    rising = dict(zip(ok_v, sorted(ok_v.values())))
    assert assess("mwnet", {"w_cv": 0.5, "v_curve": rising}, None, 100)[0].startswith("inverted: V(loss) rises")
    hump = {"0.1": 0.05, "0.3": 0.1, "1": 0.28, "2": 0.17, "3": 0.07, "5": 0.01}  # a working MW-Net (measured)
    assert assess("mwnet", {"w_cv": 1.1, "v_curve": hump}, None, 100) == []
    assert assess("mwnet", {"w_cv": 0.5, "v_curve": rising}, None, 100, balanced=False) == []  # a long tail
    assert assess("l2r", {"w_cv": 2.0, "zero_share": 0.95}, None, 100)[0].startswith("collapsing")
    probe = {"probe_flip_auc": 0.3, "probe_hard_auc": 0.2, "probe_se": 0.04, "probe_vs_train": 0.4,
             "probe_train_se": 0.03}
    inv = assess("l2r", {"w_cv": 1.0, "zero_share": 0.3}, probe, 100)
    assert inv == ["inverted: both kinds of wrong labels weigh more than trusted ones on the probe (AUC 0.30)"]
    clean = assess("l2r", {"w_cv": 1.0}, {**probe, "probe_vs_train": 0.52}, 100)  # training weighs like trusted
    assert "the training labels look clean" in clean[0]
    noisy = assess("l2r", {"w_cv": 1.0}, {**probe, "probe_vs_train": 0.43}, 100)  # p = 0.07 / 0.2: 35% noise
    assert "clean" not in noisy[0]
    assert assess("l2r", {"w_cv": 1.0}, {**probe, "probe_hard_auc": 0.9}, 100) == []  # pair-like errors separated
    assert assess("l2r", {"w_cv": 1.0}, {"probe_flip_auc": 0.52, "probe_se": 0.04}, 100)[0].startswith("not sep")
    assert assess("mlc", {"t_diag": 0.12, "num_classes": 10}, None, 100)[0].startswith("flat")
    assert assess("mlc", {"t_diag": 0.8, "num_classes": 10}, None, 100) == []


# runs compared with each other pin the engine (auto times exact and fd: two runs may choose apart)
COMMON = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, lr=0.05, progress=False, epochs=2,
              log_every=5, threads=1, meta_grad="fd")


def _rows(run):
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def _same_state(a, b):
    a, b = load_checkpoint(a / "checkpoint.pt"), load_checkpoint(b / "checkpoint.pt")
    for x, y in zip(a["nets"], b["nets"]):
        assert str(x["optimizer"]) == str(y["optimizer"])
        for k in x["model"]:
            assert torch.equal(x["model"][k], y["model"][k]), k
        assert str(x["learner"]) == str(y["learner"])
        for k, v in (x["learner"]["method"].get("meta_model") or {}).items():
            assert torch.equal(v, y["learner"]["method"]["meta_model"][k]), k
    assert torch.equal(a["generator"], b["generator"]) and torch.equal(a["torch_rng"], b["torch_rng"])


@pytest.mark.parametrize("extra", [dict(method="mwnet", meta_grad="fd", model="lenet"),
                                   dict(method="l2r", meta_grad="famus"), dict(method="mlc", meta_grad="exact")])
def test_health_check_does_not_change_training(tmp_path, extra):
    """With a probe (validation set), BatchNorm (lenet) and a random engine (FaMUS): the same run either way."""
    cfg = {**COMMON, "val_per_class": 3, "noise": "symmetric", "noise_rate": 0.4, **extra}
    train(TrainConfig(**cfg, out=str(tmp_path / "on")))
    train(TrainConfig(**cfg, out=str(tmp_path / "off"), log_quality=False))
    _same_state(tmp_path / "on", tmp_path / "off")
    on, off = _rows(tmp_path / "on"), _rows(tmp_path / "off")
    assert [r["test_acc"] for r in on] == [r["test_acc"] for r in off]
    assert all("health" not in r for r in off)
    h = on[-1]["health"]
    if extra["method"] == "mlc":
        assert "probe_flip_auc" not in h and len(h["transition"]) == 10 and 0 < h["t_diag"] < 1
    else:
        assert 0 <= h["probe_flip_auc"] <= 1 and 0 <= h["probe_vs_train"] <= 1 and h["probe_n"] == 30
        assert 0 <= h["sample_auroc"] <= 1  # injected noise: the truth on the same sample
    assert len(h["class_weight"]) == 10 and isinstance(h["flags"], list)
    steps = [w["step"] for r in on for w in r["health_steps"]]
    assert steps == sorted(steps) and steps[0] == 5


def test_no_noise_mask_no_clean_fields_and_no_probe_without_validation(tmp_path):
    train(TrainConfig(**COMMON, method="mwnet", out=str(tmp_path / "run")))
    rows = _rows(tmp_path / "run")
    for key in ("clean_weight_share", "weight_auroc", "quality_steps", "clean_lift"):
        assert all(key not in r for r in rows), key
    h = rows[-1]["health"]
    assert "probe_flip_auc" not in h and "sample_auroc" not in h  # no validation set: no probe
    assert set(rows[-1]["v_curve"]) == {"0.1", "0.3", "1", "2", "3", "5"}
    assert all("v_curve" in w and "w_q" in w for w in rows[-1]["health_steps"])


def test_recheck_judges_logged_numbers_by_the_current_rule():
    good = {"probe_flip_auc": 0.4, "probe_hard_auc": 0.9, "probe_se": 0.03, "w_cv": 0.6, "flags": ["not separating"]}
    recs = [{"epoch": 1, "meta_steps": 40, "health": good}, {"epoch": 2, "meta_steps": 40, "health": good},
            {"epoch": 3, "meta_steps": 40, "health": {**good, "probe_hard_auc": 0.45}},
            {"epoch": 4, "meta_steps": 40, "health": {"w_cv": "oops", "v_curve": {"5": "x"}}}, {"epoch": 5}]
    flags = recheck(recs, "mwnet")
    assert flags[0] == [] and flags[1] == []  # first: too early; second: plausible wrong labels are separated
    assert flags[2][0].startswith("not separating") and flags[3] == [] and flags[4] == []


def test_mid_epoch_resume_logs_the_same_health(tmp_path, monkeypatch):
    """A run with a probe, interrupted right after a mid-epoch checkpoint and resumed, logs what an uninterrupted
    run logs (the health sums and windows are in the checkpoint; the probe runs at epoch ends)."""
    from famus.train import loop

    cfg = {**COMMON, "val_per_class": 3, "noise": "symmetric", "noise_rate": 0.4, "method": "mwnet", "epochs": 2}
    train(TrainConfig(**cfg, out=str(tmp_path / "ref")))
    real, seen = loop.save_checkpoint, []

    def save(path, state):
        real(path, state)
        if state.get("position") is not None and state["epoch"] == 1 and not seen:
            seen.append(state["step"])
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg, out=str(tmp_path / "cut"), checkpoint_every=7))
    monkeypatch.undo()
    train(TrainConfig(**cfg, out=str(tmp_path / "cut"), checkpoint_every=7, resume=True))
    timing = {"time_per_iter_s", "wall_time_s", "stage_time_s", "epoch_time_s"}
    a, b = ([{k: v for k, v in r.items() if k not in timing} for r in _rows(tmp_path / d)] for d in ("cut", "ref"))
    assert seen and a == b and "probe_flip_auc" in a[-1]["health"]
