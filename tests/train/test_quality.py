"""Weight quality (AUROC, clean share, V(loss)): right on hand-made weights, free for training."""

import json
import math

import pytest
import torch

from famus.meta import L2R, MWNet
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from famus.train.quality import FIELDS, QualityMeter, batch_auroc, batch_quality, lift_onset, v_curve


def _q(weights, clean):
    return dict(zip(FIELDS, batch_quality(torch.tensor(weights), torch.tensor(clean)).tolist()))


def test_auroc_on_hand_made_weights():
    clean = torch.tensor([True, True, False, False])
    assert float(batch_auroc(torch.tensor([4.0, 3.0, 2.0, 1.0]), clean)) == 1.0  # perfect separation
    assert float(batch_auroc(torch.tensor([1.0, 2.0, 3.0, 4.0]), clean)) == 0.0  # reversed
    assert float(batch_auroc(torch.ones(4), clean)) == 0.5  # ties count half
    # pairs (clean, noisy): (3,4) lose, (3,1) win, (2,4) lose, (2,1) win -> 2 of 4
    assert float(batch_auroc(torch.tensor([3.0, 2.0, 4.0, 1.0]), clean)) == 0.5
    # one tie: (2, 2) counts half; (5, 2) wins, (5, 1) wins, (2, 1) wins -> 3.5 / 4
    assert float(batch_auroc(torch.tensor([5.0, 2.0, 2.0, 1.0]), clean)) == 0.875
    assert math.isnan(float(batch_auroc(torch.ones(3), torch.tensor([True, True, True]))))


def test_clean_share_lift_and_mean_weights():
    q = _q([0.4, 0.3, 0.2, 0.1], [True, True, False, False])
    assert q["clean_share"] == pytest.approx(0.7)
    assert q["natural_share"] == pytest.approx(0.5)
    assert q["clean_lift"] == pytest.approx(0.2)
    assert q["weight_clean"] == pytest.approx(1.4)  # in units of the uniform weight 0.25
    assert q["weight_noisy"] == pytest.approx(0.6)
    u = _q([1.0, 1.0, 1.0, 1.0], [True, False, False, False])
    assert u["clean_share"] == pytest.approx(0.25) and u["clean_lift"] == pytest.approx(0.0)
    assert u["weight_clean"] == pytest.approx(1.0) == u["weight_noisy"]
    z = _q([0.0, 0.0], [True, False])  # L2R can zero a whole batch: shares undefined, not 0/0 errors
    assert math.isnan(z["clean_share"]) and z["weight_auroc"] == 0.5


def test_meter_averages_windows_and_skips_undefined():
    m = QualityMeter(torch.device("cpu"))
    m.update(torch.tensor([2.0, 1.0]), torch.tensor([True, False]))  # auroc 1, lift 2/3 - 1/2
    m.update(torch.tensor([1.0, 1.0]), torch.tensor([True, True]))  # auroc undefined, lift 0
    w = m.window()
    assert w["weight_auroc"] == pytest.approx(1.0)
    assert w["clean_lift"] == pytest.approx((2 / 3 - 1 / 2) / 2, abs=1e-6)
    m.update(torch.tensor([1.0, 2.0]), torch.tensor([True, False]))
    assert m.window()["weight_auroc"] == 0.0  # the window restarted
    assert m.epoch()["weight_auroc"] == pytest.approx(0.5)  # the epoch did not


def test_lift_onset_and_v_curve():
    windows = [{"step": 25, "clean_lift": 0.05}, {"step": 50, "clean_lift": None}, {"step": 75, "clean_lift": 0.2}]
    assert lift_onset(windows) == 75 and lift_onset(windows, 0.5) is None
    meta = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid())
    with torch.no_grad():
        meta[0].weight.fill_(-1.0)
        meta[0].bias.fill_(0.0)
    v = v_curve(MWNet(meta_model=meta), (0.0, 2.0))
    assert v == {"0": 0.5, "2": pytest.approx(1 / (1 + math.e**2), abs=1e-6)}
    assert v_curve(None) is None and v_curve(L2R()) is None


def test_quality_logging_does_not_change_training(tmp_path, one_thread):
    common = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, method="mwnet",
                  meta_grad="famus", lr=0.05, progress=False, epochs=2, log_every=5, noise="symmetric", noise_rate=0.4)
    train(TrainConfig(**common, out=str(tmp_path / "on")))
    train(TrainConfig(**common, out=str(tmp_path / "off"), log_quality=False))
    a = load_checkpoint(tmp_path / "on" / "checkpoint.pt")["nets"][0]
    b = load_checkpoint(tmp_path / "off" / "checkpoint.pt")["nets"][0]
    for part in ("model", "optimizer"):
        assert str(a[part]) == str(b[part])  # every tensor and number of the state dicts
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ma, mb = a["learner"]["method"]["meta_model"], b["learner"]["method"]["meta_model"]
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    rows = [json.loads(x) for x in (tmp_path / "on" / "metrics.jsonl").read_text().splitlines()]
    assert all(0.0 <= r["weight_auroc"] <= 1.0 and set(r["v_curve"]) == {"0.1", "0.3", "1", "2", "3", "5"}
               for r in rows)
    steps = [w["step"] for r in rows for w in r["quality_steps"]]
    assert steps == sorted(steps) and steps[0] == 5
    off = [json.loads(x) for x in (tmp_path / "off" / "metrics.jsonl").read_text().splitlines()]
    assert all("weight_auroc" not in r for r in off)


@pytest.mark.parametrize("warmup, plain", [(None, "auto"), (0, 0), (7, 7)])
def test_meta_warmup_default_is_a_quarter_epoch_at_most_25_steps(tmp_path, one_thread, warmup, plain):
    out = tmp_path / "run"
    cfg = TrainConfig(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, method="mwnet", epochs=1,
                      noise="symmetric", noise_rate=0.4, progress=False, out=str(out), meta_warmup=warmup,
                      log_every=2)
    train(cfg)
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    iters = rec["step"]
    expected_plain = min(25, iters // 4) if plain == "auto" else plain
    assert rec["meta_steps"] == iters - expected_plain
    first = rec["quality_steps"][0]  # steps 1-2: uniform weights during the warm-up
    if expected_plain >= 2:
        assert first["weight_auroc"] == 0.5 and first["clean_lift"] == pytest.approx(0.0, abs=1e-9)
