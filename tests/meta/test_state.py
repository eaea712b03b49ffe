"""meta_gradient and meta_loss change nothing; BN statistics move only in the actual step."""

import pytest
import torch

import famus

from .conftest import TinyResNet, make_batches


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


@pytest.mark.parametrize("method", ["mwnet", "l2r"])
@pytest.mark.parametrize("engine", ["exact", "famus", "random"])
def test_meta_gradient_and_meta_loss_change_no_state(method, engine):
    torch.manual_seed(0)
    model = TinyResNet().double()
    model.dropout = torch.nn.Dropout(0.5)
    batch = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9), method, engine)
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


def test_meta_gradient_is_repeatable():
    torch.manual_seed(0)
    model = TinyResNet().double()
    batch = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", "famus")
    a = learner.meta_gradient(*batch)
    b = learner.meta_gradient(*batch)
    for k in a:
        assert torch.equal(a[k], b[k])


@pytest.mark.parametrize("engine", ["exact", "famus"])
def test_bn_running_stats_move_only_in_actual_step(engine):
    torch.manual_seed(0)
    model = TinyResNet().double()
    reference = TinyResNet().double()
    reference.load_state_dict(model.state_dict())
    x, y, xm, ym = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", engine)
    learner.step(x, y, xm, ym)
    reference.train()
    with torch.no_grad():
        reference(x)  # exactly one BN update, from the training batch at the old weights
    for (n, b), (_, rb) in zip(model.named_buffers(), reference.named_buffers()):
        torch.testing.assert_close(b, rb, rtol=0, atol=1e-15, msg=n)
