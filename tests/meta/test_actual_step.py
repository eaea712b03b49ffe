"""Actual-Train: reusing the Virtual-Train forward equals a separate forward; the lagged mode."""

import copy

import pytest
import torch
from torch import nn

import famus
from famus.models import build_model

from .conftest import AllLayers, FaMUS, TinyResNet, engine_options, engines, make_batches, methods


def _staged():
    torch.manual_seed(0)
    return build_model("small-resnet", 3, in_channels=1, width=4).double()


def _state(learner):
    """Everything a step changes: weights, BN buffers, optimizer and meta-optimizer state, samplers."""
    out = {f"p:{n}": p.detach().clone() for n, p in learner.model.named_parameters()}
    out.update({f"b:{n}": b.clone() for n, b in learner.model.named_buffers()})
    for i, st in enumerate(learner.optimizer.state.values()):
        out.update({f"o{i}:{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    if learner.meta_model is not None:
        out.update({f"mm:{n}": v.clone() for n, v in learner.meta_model.state_dict().items()})
    out.update({f"s:{i}": p.detach().clone() for i, p in enumerate(learner.engine.parameters())})
    return out


def _run(make, method, engine, steps=2, seed=0, **kw):
    torch.manual_seed(seed)
    model = make()
    opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
    learner = famus.MetaLearner(model, opt, method, engine, engine_options=engine_options(engine), **kw)
    stats = []
    for s in range(steps):
        torch.manual_seed(100 + s)  # the same dropout masks for both runs
        stats.append(learner.step(*make_batches(seed=s, size=8)))
    return learner, stats


@pytest.mark.parametrize("engine", engines())
@pytest.mark.parametrize("method", methods())
def test_reused_forward_equals_a_separate_actual_step(engine, method):
    a, sa = _run(_staged, method, engine, reuse_forward=True)
    b, sb = _run(_staged, method, engine, reuse_forward=False)
    assert a.reused_forward and not b.reused_forward
    ta, tb = _state(a), _state(b)
    assert ta.keys() == tb.keys()
    for k in ta:
        torch.testing.assert_close(ta[k], tb[k], rtol=1e-12, atol=1e-14, msg=k)
    for x, y in zip(sa, sb):
        torch.testing.assert_close(x.train_loss, y.train_loss, rtol=1e-12, atol=0)
        torch.testing.assert_close(x.weights, y.weights, rtol=1e-12, atol=0)


def _with_dropout():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 3),
    ).double()


@pytest.mark.parametrize("engine", engines(policy=AllLayers))
def test_reuse_falls_back_with_dropout(engine):
    """A stochastic forward cannot stand in for a fresh one: the learner runs the separate forward."""
    a, _ = _run(_with_dropout, "mwnet", engine, reuse_forward=True)
    b, _ = _run(_with_dropout, "mwnet", engine, reuse_forward=False)
    assert not a.reused_forward
    ta, tb = _state(a), _state(b)
    for k in ta:
        assert torch.equal(ta[k], tb[k]), k


def test_reuse_is_the_default():
    model = TinyResNet().double()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    learner.step(*make_batches())
    assert learner.reuse_forward and learner.reused_forward and not learner.lagged


@pytest.mark.parametrize("engine", engines())
def test_lagged_steps_with_the_virtual_gradient_at_the_old_meta_weights(engine):
    torch.manual_seed(0)
    model = _staged()
    reference = copy.deepcopy(model)
    lr = 0.3
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=lr), "mwnet", engine, lagged=True,
                                engine_options=engine_options(engine))
    batch = make_batches(size=8)
    x, y = batch[:2]
    old_meta = copy.deepcopy(learner.meta_model)
    meta_grads = learner.meta_gradient(*batch)
    stats = learner.step(*batch)

    # by hand: w' = w - lr * grad_w sum_i c_i(theta_old) L_i(w); BN statistics move once
    reference.train()
    logits = reference(x)
    loss, c = learner.method.loss(logits, y, dict(old_meta.named_parameters()))
    grads = torch.autograd.grad(loss, list(reference.parameters()))
    for (n, p), g in zip(reference.named_parameters(), grads):
        torch.testing.assert_close(dict(model.named_parameters())[n], p - lr * g, rtol=1e-12, atol=1e-14, msg=n)
    for (n, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, rb, rtol=0, atol=1e-15, msg=n)
    torch.testing.assert_close(stats.train_loss, loss.detach())
    torch.testing.assert_close(stats.weights, c.detach())
    assert learner.reused_forward
    assert stats.times["actual_forward"] == 0.0
    # the meta model still takes its usual step (Eq. 4)
    fresh = copy.deepcopy(old_meta)
    opt = torch.optim.Adam(fresh.parameters(), lr=1e-3, weight_decay=1e-4)
    for n, p in fresh.named_parameters():
        p.grad = meta_grads[n]
    opt.step()
    for (n, p), (_, q) in zip(learner.meta_model.named_parameters(), fresh.named_parameters()):
        torch.testing.assert_close(p, q, msg=n)


def test_lagged_suffix_and_l2r_refusal():
    model = TinyResNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    learner = famus.MetaLearner(model, opt, "mwnet", "famus-fd+lagged")
    assert learner.lagged and learner.engine_name == "famus-fd"
    with pytest.raises(ValueError, match="lagged mode needs meta parameters that persist"):
        famus.MetaLearner(model, opt, "l2r", "jvp", lagged=True)


@pytest.mark.parametrize("engine", engines(policy=FaMUS))
def test_lagged_mode_trains(engine):
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (256,), generator=gen)
    x = torch.randn(256, 1, 6, 6, generator=gen) * 0.5 + y.view(-1, 1, 1, 1).float() - 1
    model = build_model("small-resnet", 3, in_channels=1, width=4)
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), "mwnet",
                                engine + "+lagged")
    for i in range(25):
        sl = slice((i * 32) % 256, (i * 32) % 256 + 32)
        learner.step(x[sl], y[sl], x[:30], y[:30])
    model.eval()
    with torch.no_grad():
        assert float((model(x).argmax(1) == y).float().mean()) > 0.6
