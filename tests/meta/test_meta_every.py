"""meta_every (amortized meta updates) and meta_warmup: which steps update the meta parameters, and
what the other steps train with."""

import copy

import pytest
import torch
import torch.nn.functional as F

import famus

from .conftest import TinyResNet, make_batches, methods

ENGINE_OPTS = {"block": {"layers": ["fc"]}, "random": {"s": 2}}


def _learner(engine="exact", method="mwnet", **kw):
    torch.manual_seed(0)
    model = TinyResNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    method_options = {"num_classes": 3} if method == "mlc" else {}
    return famus.MetaLearner(model, opt, method, engine, method_options=method_options,
                             engine_options=ENGINE_OPTS.get(engine, {}), **kw)


def _meta_state(learner):
    return [p.detach().clone() for p in (learner.meta_model.parameters() if learner.meta_model else [])] + \
        [p.detach().clone() for p in learner.engine.parameters()]


@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_meta_parameters_move_only_on_meta_steps(engine, method):
    learner = _learner(engine, method, meta_every=3, meta_warmup=1)
    batch = make_batches()
    learner.bind(batch[0])
    updated = []
    for _ in range(7):
        before = _meta_state(learner)
        stats = learner.step(*batch)
        moved = any(not torch.equal(a, b) for a, b in zip(before, _meta_state(learner)))
        updated.append(stats.meta_updated)
        assert torch.isfinite(stats.train_loss)
        if before:  # a meta model or samplers (not plain L2R)
            assert moved == stats.meta_updated
    assert updated == [False, True, False, False, True, False, False]
    assert learner.steps == 7


@pytest.mark.parametrize("warmup,dense,every", [(1, 3, 2), (0, 0, 3), (2, 5, 1), (0, 4, 4)])
def test_dense_then_every_kth_step_updates(warmup, dense, every):
    learner = _learner(meta_every=every, meta_warmup=warmup, meta_dense=dense)
    batch = make_batches()
    updated = [learner.step(*batch).meta_updated for _ in range(12)]
    want = [s >= warmup and (s - warmup < dense or (s - warmup - dense) % every == 0) for s in range(12)]
    assert updated == want
    assert updated[warmup:warmup + dense] == [True] * min(dense, 12 - warmup)  # dense: every step


def test_the_default_recipe_schedule_is_the_learners():
    from famus.meta.recipe import Recipe, default_recipe

    recipe = Recipe("auto", warmup=2, dense=4, every=3)
    learner = _learner(meta_every=3, meta_warmup=2, meta_dense=4)
    batch = make_batches()
    assert [learner.step(*batch).meta_updated for _ in range(15)] == [recipe.due(s) for s in range(15)]
    warm, meta, plain = recipe.counts(15)  # 2 warm-up, 4 dense, then steps 6, 9, 12 of the 9 left
    assert (warm, meta, plain) == (2, 4 + 3, 6)
    assert default_recipe("l2r").every == 1 and default_recipe("l2r").dense == 0  # eps does not persist
    assert default_recipe("mwnet").every > 1


def test_bad_dense_is_refused():
    with pytest.raises(ValueError, match="meta_dense must be an int >= 0"):
        _learner(meta_dense=-1)


def test_warmup_steps_are_uniform_erm_steps():
    learner = _learner(meta_warmup=2)
    ref = copy.deepcopy(learner.model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    x, y, xm, ym = make_batches()
    for _ in range(2):
        stats = learner.step(x, y, xm, ym)
        assert not stats.meta_updated and torch.isnan(stats.meta_loss)
        torch.testing.assert_close(stats.weights, torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype))
        ref_opt.zero_grad()
        F.cross_entropy(ref(x), y).backward()
        ref_opt.step()
    for a, b in zip(learner.model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_between_meta_steps_the_current_meta_model_weighs():
    learner = _learner(meta_every=2)
    x, y, xm, ym = make_batches()
    learner.step(x, y, xm, ym)  # a meta step: the meta model moves
    ref = copy.deepcopy(learner.model)
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    meta = copy.deepcopy(learner.meta_model)
    stats = learner.step(x, y, xm, ym)  # a plain step, weighted by the (unchanged) meta model
    assert not stats.meta_updated
    losses = F.cross_entropy(ref(x), y, reduction="none")
    v = meta(losses.detach().unsqueeze(1)).reshape(-1)
    c = (v / v.sum()).detach()
    torch.testing.assert_close(stats.weights, c)
    ref_opt.zero_grad()
    (c * losses).sum().backward()
    ref_opt.step()
    for a, b in zip(learner.model.parameters(), ref.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    for a, b in zip(learner.meta_model.parameters(), meta.parameters()):
        assert torch.equal(a, b)


def test_l2r_between_meta_steps_weighs_uniformly():
    learner = _learner(method="l2r", meta_every=2)
    x, y, xm, ym = make_batches()
    assert learner.step(x, y, xm, ym).meta_updated
    stats = learner.step(x, y, xm, ym)
    torch.testing.assert_close(stats.weights, torch.full((x.shape[0],), 1.0 / x.shape[0], dtype=x.dtype))


def test_meta_every_survives_state_dict():
    a = _learner(meta_every=3)
    batch = make_batches()
    for _ in range(3):
        a.step(*batch)
    b = _learner(meta_every=3)
    b.model.load_state_dict(a.model.state_dict())
    b.bind(batch[0])
    b.load_state_dict(a.state_dict())
    assert b.steps == 3 and a.meta_step_due() and b.meta_step_due()  # steps 0 and 3 update the meta model


@pytest.mark.parametrize("bad", [{"meta_every": 0}, {"meta_every": 1.5}, {"meta_warmup": -1}, {"meta_every": True}])
def test_bad_values(bad):
    with pytest.raises(ValueError, match="meta_every|meta_warmup"):
        _learner(**bad)
