"""Tracker: exactness of its comparisons, Welford moments, record contents, and no side effects."""

import json

import numpy as np
import pytest
import torch

import famus
from famus.train.tracking import RunningMoments, Tracker

from .conftest import tiny_batches, tiny_learner


def _stats_and_mask(learner, batch, noisy=(1, 4)):
    stats = learner.step(*batch)
    mask = torch.zeros(batch[0].shape[0], dtype=torch.bool)
    mask[list(noisy)] = True
    return stats, mask


def _read(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_exact_against_itself_has_cosine_one(tmp_path):
    learner = tiny_learner("mwnet", "exact")
    batch = tiny_batches()
    stats, mask = _stats_and_mask(learner, batch)
    tracker = Tracker(tmp_path, every=1, layer_names=famus.layers(learner.model))
    rec = tracker.record(1, 1, learner, *batch, stats, mask)
    tracker.close()
    assert rec["meta_grad"]["cosine"] == pytest.approx(1.0, abs=1e-12)
    assert rec["meta_grad"]["rel_error"] == pytest.approx(0.0, abs=1e-12)
    assert rec["meta_grad"]["norm_engine"] == pytest.approx(rec["meta_grad"]["norm_exact"], rel=1e-12)
    assert rec["running"]["engine"] == rec["running"]["exact"]
    assert rec["gates"] is None  # the exact engine gates nothing: every layer contributes
    assert _read(tmp_path / "tracking.jsonl") == [rec]


def test_restricted_famus_has_cosine_below_one(tmp_path):
    """Every sampler forced off: only the pinned classifier contributes, so the gradient differs from exact."""
    learner = tiny_learner("mwnet", "famus", candidates="all", lambda_g=0.0, lambda_r=0.0)
    batch = tiny_batches()
    learner.bind(batch[0])
    for s in learner.engine.samplers.values():  # logits (+inf, -inf): always off
        torch.nn.init.zeros_(s.fc2.weight)
        s.fc2.bias.data = torch.tensor([1e6, -1e6], dtype=s.fc2.bias.dtype)
    stats, mask = _stats_and_mask(learner, batch)
    names = famus.layers(learner.model)
    rec = Tracker(tmp_path, every=1, layer_names=names).record(1, 1, learner, *batch, stats, mask)
    cos = rec["meta_grad"]["cosine"]
    assert cos is not None and cos < 1 - 1e-6
    assert rec["meta_grad"]["rel_error"] > 1e-6
    assert list(rec["gates"]) == names  # forward order, every layer listed
    assert rec["gates"] == {"conv": 0.0, "bn": 0.0, "hidden": 0.0, "fc": 1.0}


def test_all_layers_famus_matches_exact(tmp_path):
    """Sanity of the comparison itself: FaMUS with every gate on and no L_g equals exact."""
    learner = tiny_learner("mwnet", "famus", candidates="all", lambda_g=0.0, lambda_r=0.0)
    batch = tiny_batches()
    learner.bind(batch[0])
    for s in learner.engine.samplers.values():
        torch.nn.init.zeros_(s.fc2.weight)
        s.fc2.bias.data = torch.tensor([-1e6, 1e6], dtype=s.fc2.bias.dtype)
    stats, mask = _stats_and_mask(learner, batch)
    rec = Tracker(tmp_path, every=1, layer_names=famus.layers(learner.model)).record(1, 1, learner, *batch, stats,
                                                                                     mask)
    assert rec["meta_grad"]["cosine"] == pytest.approx(1.0, abs=1e-10)
    assert rec["meta_grad"]["rel_error"] < 1e-8


def _flat(prefix, obj, out):
    if torch.is_tensor(obj):
        out[prefix] = obj.detach().clone()
    elif isinstance(obj, dict):
        for k, v in obj.items():
            _flat(f"{prefix}/{k}", v, out)
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            _flat(f"{prefix}/{i}", v, out)
    else:
        out[prefix] = obj


def _snapshot(learner):
    """Every piece of training state, flattened: model, grads, optimizer, learner (meta model, samplers, RNG)."""
    out = {}
    _flat("model", learner.model.state_dict(), out)
    _flat("grad", {k: p.grad for k, p in learner.model.named_parameters() if p.grad is not None}, out)
    _flat("opt", learner.optimizer.state_dict(), out)
    _flat("learner", learner.state_dict(), out)
    out["rng"] = torch.random.get_rng_state()
    return out


def _same(a, b):
    return torch.equal(a, b) if torch.is_tensor(a) else a == b


@pytest.mark.parametrize("method,engine", [("mwnet", "famus"), ("mwnet", "exact"), ("l2r", "famus")])
def test_record_changes_no_training_state(tmp_path, method, engine):
    learner = tiny_learner(method, engine)
    batch = tiny_batches()
    stats, mask = _stats_and_mask(learner, batch)
    learner.model.train()
    before, steps = _snapshot(learner), learner.steps
    Tracker(tmp_path, every=1, layer_names=famus.layers(learner.model)).record(1, 1, learner, *batch, stats, mask)
    after = _snapshot(learner)
    assert learner.steps == steps and learner.model.training
    assert before.keys() == after.keys()
    assert len(before) > 10
    for k in before:
        assert _same(before[k], after[k]), k
    # and the next step is the one it would have been without tracking
    twin = tiny_learner(method, engine)
    twin.step(*batch)
    s1, s2 = learner.step(*batch), twin.step(*batch)
    torch.testing.assert_close(s1.weights, s2.weights, rtol=0, atol=0)


def test_l2r_records_eps_and_weights_split(tmp_path):
    learner = tiny_learner("l2r", "famus")
    batch = tiny_batches()
    stats, mask = _stats_and_mask(learner, batch, noisy=(0, 2, 3))
    rec = Tracker(tmp_path, every=1, layer_names=famus.layers(learner.model)).record(7, 2, learner, *batch, stats,
                                                                                     mask)
    assert rec["meta_params"] == {"eps": [8]} and rec["step"] == 7 and rec["epoch"] == 2
    w = rec["weights"]
    assert w["n"] == 8 and len(w["clean"]) == 5 and len(w["noisy"]) == 3
    full = stats.weights.double()
    assert w["clean"] == pytest.approx(full[~mask].tolist(), rel=1e-5, abs=1e-12)
    assert w["noisy"] == pytest.approx(full[mask].tolist(), rel=1e-5, abs=1e-12)
    if float(full.sum()) > 0:
        assert w["clean_share"] == pytest.approx(float(full[~mask].sum() / full.sum()))
    json.dumps(rec, allow_nan=False)


def test_corrupted_mask_of_wrong_size_is_a_clear_error(tmp_path):
    learner = tiny_learner()
    batch = tiny_batches()
    stats, _ = _stats_and_mask(learner, batch)
    with pytest.raises(ValueError, match="corrupted has 3 entries"):
        Tracker(tmp_path, 1, []).record(1, 1, learner, *batch, stats, torch.zeros(3, dtype=torch.bool))


def test_running_moments_match_numpy():
    rng = np.random.default_rng(0)
    vs = rng.normal(size=(9, 5))
    m = RunningMoments()
    for v in vs:
        m.update(torch.from_numpy(v))
    np.testing.assert_allclose(m.mean.numpy(), vs.mean(0), rtol=1e-12)
    np.testing.assert_allclose(m.variance.numpy(), vs.var(0), rtol=1e-12)
    assert m.update(torch.ones(3)) and m.count == 1  # a new dimension restarts the moments


def test_running_summaries_over_steps(tmp_path):
    """Per-step records accumulate Welford moments; the projection scalar is documented as <g, mean dir>."""
    learner = tiny_learner("mwnet", "exact")
    tracker = Tracker(tmp_path, every=2, layer_names=famus.layers(learner.model))
    grads = []
    for step in range(1, 6):
        batch = tiny_batches(seed=step)
        stats, mask = _stats_and_mask(learner, batch)
        if tracker.should_track(step):
            g = learner.meta_gradient(*batch, meta_grad="exact")
            grads.append(torch.cat([v.reshape(-1) for v in g.values()]))
            tracker.record(step, 1, learner, *batch, stats, mask)
    tracker.close()
    recs = _read(tmp_path / "tracking.jsonl")
    assert [r["step"] for r in recs] == [1, 2, 4]  # step 1, then multiples of every
    g = torch.stack(grads)
    last = recs[-1]["running"]["exact"]
    assert last["count"] == 3
    assert last["mean_norm"] == pytest.approx(float(g.mean(0).norm()), rel=1e-9)
    assert last["mean_entry"] == pytest.approx(float(g.mean()), rel=1e-9)
    assert last["total_var"] == pytest.approx(float(g.var(0, unbiased=False).sum()), rel=1e-9)
    u = g.mean(0) / g.mean(0).norm()
    assert last["proj"] == pytest.approx(float(g[-1] @ u), rel=1e-9)


def test_resume_keeps_earlier_records(tmp_path):
    learner = tiny_learner()
    batch = tiny_batches()
    stats, mask = _stats_and_mask(learner, batch)
    with Tracker(tmp_path, every=1, layer_names=[]) as t:
        for step in (1, 2, 3):
            t.record(step, 1, learner, *batch, stats, mask)
    with open(tmp_path / "tracking.jsonl", "a") as f:
        f.write('{"step": 4, "trunc')  # interrupted mid-write
    with Tracker(tmp_path, every=1, layer_names=[], keep_until=2) as t:
        t.record(3, 1, learner, *batch, stats, mask)
    assert [r["step"] for r in _read(tmp_path / "tracking.jsonl")] == [1, 2, 3]
    with Tracker(tmp_path, every=1, layer_names=[]) as t:  # a new run replaces the file
        t.record(1, 1, learner, *batch, stats, mask)
    assert [r["step"] for r in _read(tmp_path / "tracking.jsonl")] == [1]


def test_every_must_be_positive(tmp_path):
    with pytest.raises(ValueError, match="interval"):
        Tracker(tmp_path, every=0, layer_names=[])
