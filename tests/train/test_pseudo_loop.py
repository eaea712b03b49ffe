"""Pseudo mode runs in the one loop: every option of a clean run works there too (issue 13)."""

import json
import math

import pytest
import torch

from famus.train import TrainConfig, TrainingError, train
from famus.train.checkpoint import load_checkpoint
from famus.train.step import lr_at

COMMON = dict(dataset="digits", model="mlp", method="erm", meta_set="pseudo", epochs=1, batch_size=64, lr=0.05,
              noise="symmetric", noise_rate=0.5, progress=False, seed=2, threads=1,
              pseudo_options={"warmup_epochs": 1, "rampup_epochs": 1})
ITERS = 1437 // 64  # digits' training set, all of it (no trusted set in pseudo mode)


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_pseudo_honours_milestone_unit_iter(tmp_path, monkeypatch):
    """``milestone_unit: iter`` counts each network's own steps (it was read as epochs, silently)."""
    import famus.train.epoch as epoch

    seen = []
    real = epoch.set_lr
    monkeypatch.setattr(epoch, "set_lr", lambda opt, lr: (seen.append(lr), real(opt, lr)))
    train(TrainConfig(**COMMON, milestones=[5], milestone_unit="iter", out=str(tmp_path / "r")))
    decayed = 0.05 * 0.1
    assert seen == pytest.approx(([0.05] * 5 + [decayed] * (ITERS - 5)) * 2)
    assert _rows(tmp_path / "r")[0]["lr"] == pytest.approx(decayed)


def test_pseudo_tracks_the_first_network(tmp_path):
    """``--track-every`` records the first network's meta steps (MixMatch rows: their own example's label)."""
    out = tmp_path / "r"
    train(TrainConfig(**{**COMMON, "method": "mwnet", "meta_grad": "famus", "epochs": 2}, track_every=10,
                      out=str(out)))
    recs = [json.loads(x) for x in (out / "tracking.jsonl").read_text().splitlines()]
    # epoch 2: the first network's steps are 2 * ITERS + 1 ..., the second's follow; warm-up steps are plain
    first = range(2 * ITERS + 1, 3 * ITERS + 1)
    assert [r["step"] for r in recs] == [s for s in first if s % 10 == 0]
    assert all(r["epoch"] == 2 and r["weights"]["n"] == 64 and r["meta_grad"]["cosine"] is not None for r in recs)


def test_pseudo_writes_model_best(tmp_path):
    """``model_best.pt``: the chosen epoch's two networks (the ensemble was chosen), loadable weights-only."""
    out = tmp_path / "r"
    summary = train(TrainConfig(**{**COMMON, "epochs": 2}, out=str(out)))
    best = load_checkpoint(out / "model_best.pt")
    assert best["epoch"] == summary["val_chosen_epoch"] == 2  # no validation data: the last epoch
    assert len(best["models"]) == 2 and best["models"][0].keys() == best["model"].keys()
    ck = load_checkpoint(out / "checkpoint.pt")
    for net, model in zip(ck["nets"], best["models"]):
        assert all(torch.equal(net["model"][k], model[k]) for k in model)


def test_pseudo_stops_on_nan_in_warmup(tmp_path):
    """A NaN loss in a warm-up epoch stops the run (it went unnoticed) and keeps the last good checkpoint."""
    out = tmp_path / "r"
    cfg = {**COMMON, "epochs": 3, "pseudo_options": {"warmup_epochs": 2}, "model": "tests.train.test_train:nan_model"}
    with pytest.raises(TrainingError, match="NaN or inf at epoch 2"):
        train(TrainConfig(**cfg, out=str(out)))  # NaN from the 26th training forward: epoch 2, first network
    ck = load_checkpoint(out / "checkpoint.pt")
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for net in ck["nets"] for v in net["model"].values())
    assert len(_rows(out)) == 1 and _rows(out)[0]["phase"] == "warmup"


def test_pseudo_takes_amp_cosine_and_lr_warmup(tmp_path):
    """``--amp bf16``, ``--schedule cosine`` and ``--lr-warmup-epochs`` (refused before) run in pseudo mode."""
    cfg = TrainConfig(**{**COMMON, "method": "mwnet", "meta_grad": "fd", "epochs": 2}, amp="bf16",
                      schedule="cosine", lr_warmup_epochs=0.5, out=str(tmp_path / "r"))
    summary = train(cfg)
    rows = _rows(tmp_path / "r")
    assert [r["phase"] for r in rows] == ["warmup", "meta"] and all(math.isfinite(r["train_loss"]) for r in rows)
    assert [r["lr"] for r in rows] == [lr_at(cfg, e, (e + 1) * ITERS - 1, ITERS) for e in range(2)]
    assert summary["best_test_acc"] > 0.3


def test_checkpoint_format_reads_old_clean_and_refuses_old_pseudo():
    """One format (``nets``); a clean-mode checkpoint of the old format still resumes, an old pseudo one not."""
    from famus.train.state import net_states

    old_clean = {"model": {"w": torch.ones(1)}, "optimizer": {"state": {}}, "learner": None}
    assert net_states(old_clean) == [{"model": old_clean["model"], "optimizer": {"state": {}}, "learner": None,
                                      "scaler": None}]
    assert net_states({"nets": [{"model": {}}] * 2}) == [{"model": {}}] * 2
    with pytest.raises(ValueError, match="pseudo-mode checkpoint of famus before one loop"):
        net_states({"models": [{}, {}], "optimizers": [{}, {}]})


@pytest.mark.parametrize("key, value, match", [
    ("meta_set", "pseudo", "--meta-set pseudo does not run on several processes"),
    ("track_every", 5, "--track-every does not run on several processes"),
    ("checkpoint_every", 50, "checkpoint_every does not run on several processes"),
])
def test_what_several_processes_refuse_is_said_before_anything_runs(monkeypatch, key, value, match):
    import famus.distributed as fdist
    from famus.train.loop import _check_distributed

    monkeypatch.setattr(fdist, "world_size", lambda: 2)
    base = dict(dataset="digits", method="mwnet", meta_per_class=0 if key == "meta_set" else 10)
    with pytest.raises(ValueError, match=match):
        _check_distributed(TrainConfig(**base, **{key: value}))
    _check_distributed(TrainConfig(dataset="digits", method="mwnet"))  # the rest runs


def test_track_every_needs_a_meta_method():
    with pytest.raises(ValueError, match="--method erm has none"):
        TrainConfig(dataset="digits", method="erm", track_every=5).validate()
