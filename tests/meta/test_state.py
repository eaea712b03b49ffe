"""meta_gradient and meta_loss change nothing; BN statistics move only in the actual step."""

import pytest
import torch

import famus

from .conftest import FORWARD, FaMUS, TinyResNet, engine_options, engines, make_batches, methods


def _snapshot(learner):
    m = learner.model
    snap = {f"p:{n}": p.detach().clone() for n, p in m.named_parameters()}
    snap.update({f"b:{n}": b.clone() for n, b in m.named_buffers()})
    snap.update({f"g:{n}": p.grad.clone() for n, p in m.named_parameters() if p.grad is not None})
    for i, st in enumerate(learner.optimizer.state.values()):
        snap.update({f"o{i}:{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    if learner.meta_model is not None:
        snap.update({f"mm:{n}": v.clone() for n, v in learner.meta_model.state_dict().items()})
        for i, st in enumerate(learner.method.meta_optimizer.state.values()):
            snap.update({f"mo{i}:{k}": v.clone() for k, v in st.items() if torch.is_tensor(v)})
    for n, p in enumerate(learner.engine.parameters()):
        snap[f"s:{n}"] = p.detach().clone()
    snap["gen"] = learner.generator.get_state()
    snap["rng"] = torch.random.get_rng_state()
    snap["training"] = torch.tensor(m.training)
    return snap


@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("engine", engines())
def test_meta_gradient_and_meta_loss_change_no_state(method, engine):
    torch.manual_seed(0)
    model = TinyResNet().double()
    model.dropout = torch.nn.Dropout(0.5)
    batch = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), method, engine,
                                engine_options=engine_options(engine))
    learner.step(*batch)  # so optimizer and meta optimizer have state, and .grad is set
    model.eval()  # a user's mode must be restored too
    before = _snapshot(learner)
    learner.meta_gradient(*batch)
    learner.meta_gradient(*batch, meta_grad="exact", layers=["fc"])
    learner.meta_loss(*batch)
    after = _snapshot(learner)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), k


@pytest.mark.parametrize("engine", engines(policy=FaMUS))
def test_meta_gradient_is_repeatable(engine):
    torch.manual_seed(0)
    model = TinyResNet().double()
    batch = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", engine)
    a = learner.meta_gradient(*batch)
    b = learner.meta_gradient(*batch)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("engine", engines(backend=FORWARD))
def test_forward_mode_engines_leave_the_model_and_global_rng_alone(engine):
    """Straight engine.compute, no learner guard: model tensors are untouched, and with dropout the
    global RNG moves exactly as under the exact engine (the replayed masks are given back)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3, padding=1), torch.nn.BatchNorm2d(4), torch.nn.ReLU(), torch.nn.Dropout(0.3),
        torch.nn.Flatten(), torch.nn.Linear(100, 3),
    ).double()
    x, y, xm, ym = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", engine)
    learner.bind(x)
    exact = famus.meta.build_engine("exact")
    exact.bind(learner.layer_infos, learner.device, learner.dtype)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = []
    for eng in (learner.engine, exact):
        torch.manual_seed(7)
        eng.compute(learner._batch(x, y, xm, ym), torch.Generator().manual_seed(1))
        rng.append(torch.random.get_rng_state())
    assert torch.equal(rng[0], rng[1])
    for k, v in model.state_dict().items():
        assert torch.equal(before[k], v), k
