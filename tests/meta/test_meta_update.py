"""``meta_update`` in your own loop: ``step`` bit for bit, clipping applies, bad meta gradients are skipped."""

import copy

import pytest
import torch

import famus
from famus.models import build_model

from .conftest import engines, make_batches

ENGINE_OPTS = {"auto": {"choice": "fd"}, "block": {"layers": ["layer3_0", "fc"]}, "random": {"s": 2}}
METHOD_OPTS = {"mwnet": {}, "l2r": {}, "mlc": {"num_classes": 3}}


def _staged():
    torch.manual_seed(0)
    return build_model("small-resnet", 3, in_channels=1, width=4).double()


def _pair(method, engine, **kw):
    """Two identical learners (model, optimizer, meta model, samplers, generator)."""
    out = []
    for _ in range(2):
        model = _staged()
        opt = torch.optim.SGD(model.parameters(), lr=0.3, momentum=0.9, weight_decay=1e-3)
        out.append(famus.MetaLearner(model, opt, method, engine, seed=4, method_options=METHOD_OPTS[method],
                                     engine_options=ENGINE_OPTS.get(engine, {}), **kw))
        torch.manual_seed(1)  # the same samplers (built on the first batch)
        out[-1].bind(make_batches(size=8)[0])
    return out


def _state(learner):
    """Everything a step changes: weights, BN buffers, optimizer, meta model and meta optimizer, samplers."""
    out = {f"m:{k}": v for k, v in learner.model.state_dict().items()}
    for i, st in enumerate(learner.optimizer.state.values()):
        out.update({f"o{i}:{k}": v for k, v in st.items() if torch.is_tensor(v)})
    if learner.meta_model is not None:
        out.update({f"mm:{k}": v for k, v in learner.meta_model.state_dict().items()})
        for i, st in enumerate(learner.method.meta_optimizer.state.values()):
            out.update({f"mo{i}:{k}": v for k, v in st.items() if torch.is_tensor(v)})
    out.update({f"s{i}": p for i, p in enumerate(learner.engine.parameters())})
    return {k: v.detach().clone() for k, v in out.items()}


def _own_step(learner, batch, reuse: bool, clip: float | None = None):
    """The README's loop: meta_update, the user's forward and loss, backward, (clipping), optimizer step."""
    x, y, xm, ym = batch
    update = learner.meta_update(x, y, xm, ym)
    logits = update.logits() if reuse else learner.model(x)
    loss = update.loss(logits)
    learner.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if clip is not None:
        norm = torch.nn.utils.clip_grad_norm_(learner.model.parameters(), clip)
        assert float(norm) > clip  # the clipping really acted
        after = torch.sqrt(sum((p.grad**2).sum() for p in learner.model.parameters()))
        assert float(after) <= clip * (1 + 1e-6)
    learner.optimizer.step()
    return update, loss


@pytest.mark.parametrize("reuse", [True, False])
@pytest.mark.parametrize("method", sorted(METHOD_OPTS))
@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_meta_update_and_own_backward_equal_step_bit_for_bit(engine, method, reuse):
    a, b = _pair(method, engine, reuse_forward=reuse)
    for s in range(3):
        batch = make_batches(seed=s, size=8)
        stats = a.step(*batch)
        update, loss = _own_step(b, batch, reuse)
        assert torch.equal(stats.train_loss, loss.detach())
        assert torch.equal(stats.weights, update.weights) or not reuse  # a fresh forward: same only up to rounding
        assert torch.equal(stats.meta_loss, update.meta_loss)
        assert a.reused_forward == b.reused_forward == reuse
    sa, sb = _state(a), _state(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.mark.parametrize("engine", engines())
def test_clipping_in_your_own_loop_changes_the_step(engine):
    a, b = _pair("mwnet", engine)
    for s in range(2):
        batch = make_batches(seed=s, size=8)
        a.step(*batch)
        _own_step(b, batch, reuse=True, clip=1e-2)
    sa, sb = _state(a), _state(b)
    changed = [k for k in sa if k.startswith("m:") and k.endswith("weight") and not torch.equal(sa[k], sb[k])]
    assert changed  # clipping before step() used to change nothing: it now reaches the optimizer step


def test_update_fields_and_stats():
    a, _ = _pair("mwnet", "famus")
    x, y, xm, ym = make_batches(size=8)
    update = a.meta_update(x, y, xm, ym)
    assert update.weights.shape == (6,) and not update.weights.requires_grad
    assert abs(float(update.weights.sum()) - 1) < 1e-9  # MW-Net normalizes
    assert update.virtual_logits is not None and update.virtual_logits.requires_grad
    assert float(update.meta_skipped) == 0.0 and update.gates
    assert update.times["actual_forward"] == update.times["actual_backward"] == 0.0
    loss = update.loss(update.logits())
    stats = update.stats(loss)
    assert stats.to_dict()["meta_skipped"] == 0.0 and torch.equal(stats.weights, update.weights)
    assert a.steps == 1
    lean = a.meta_update(x, y, xm, ym, keep_forward=False)
    assert lean.virtual_logits is None
    lean.logits()  # a fresh forward
    assert not a.reused_forward


@pytest.mark.parametrize("method", sorted(METHOD_OPTS))
@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_non_finite_meta_gradient_is_skipped_and_counted(engine, method):
    learner, _ = _pair(method, engine)
    x, y, xm, ym = make_batches(seed=0, size=8)
    learner.step(x, y, xm, ym)  # optimizers have state
    before = _state(learner)
    bad = xm.clone()
    bad[0, 0, 0, 0] = float("nan")  # L_c, hence the meta gradient, is NaN
    stats = learner.step(*make_batches(seed=1, size=8)[:2], bad, ym)
    assert float(stats.meta_skipped) == 1.0
    after = _state(learner)
    for k in before:
        if k.startswith(("mm:", "mo", "s")):  # meta model, meta optimizer, samplers: untouched
            assert torch.equal(before[k], after[k]), k
    assert all(torch.isfinite(v).all() for v in after.values())  # the model stepped with finite weights
    assert torch.isfinite(stats.weights).all()
    if method == "l2r":
        assert float(stats.weights.abs().sum()) == 0.0  # no meta gradient: no weight
    ok = learner.step(*make_batches(seed=2, size=8))
    assert float(ok.meta_skipped) == 0.0


def test_a_skipped_first_step_leaves_a_fresh_meta_optimizer():
    learner, twin = _pair("mwnet", "famus")
    x, y, xm, ym = make_batches(size=8)
    bad = xm.clone()
    bad[1] = float("inf")
    meta = copy.deepcopy(learner.meta_model.state_dict())
    assert float(learner.meta_update(x, y, bad, ym).meta_skipped) == 1.0
    for k, v in learner.meta_model.state_dict().items():
        assert torch.equal(v, meta[k]), k
    for st in learner.method.meta_optimizer.state.values():  # Adam's state as if never stepped
        assert all(float(v.abs().sum()) == 0.0 for v in st.values() if torch.is_tensor(v))
    # the next good step moves the meta model as a fresh learner's first step does
    twin.generator.set_state(learner.generator.get_state())
    learner.meta_update(x, y, xm, ym)
    twin.meta_update(x, y, xm, ym)
    for (k, v), w in zip(learner.meta_model.state_dict().items(), twin.meta_model.state_dict().values()):
        assert torch.equal(v, w), k
