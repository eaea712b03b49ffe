"""A batch-level regularizer and soft targets (pseudo-clean training) keep every engine exact."""

import pytest
import torch
import torch.nn.functional as F

import famus
from famus.train.semi import SemiLoss, prior_penalty

from .conftest import FORWARD, AllLayers, engines, methods
from .test_exactness import _fd_check


def _semi_learner(model, method, engine, **engine_options):
    """Pseudo mode's learner: its MixMatch loss and prior penalty given at construction."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return famus.MetaLearner(model, opt, method, engine, engine_options=engine_options,
                             method_options={"loss_fn": SemiLoss(3, lambda_u=5.0), "regularizer": prior_penalty})


def _soft(batch):
    x, y, xm, ym = batch
    g = torch.Generator().manual_seed(5)
    t = torch.softmax(torch.randn(x.shape[0], 3, generator=g, dtype=x.dtype) * 2, 1)
    return x, t, xm, ym


@pytest.mark.parametrize("method", methods(takes_loss_fn=True))  # soft targets: a per-example loss
def test_regularized_soft_target_meta_gradient_matches_central_differences(tiny, method):
    model, batch = tiny
    batch = _soft(batch)
    learner = _semi_learner(model, method, "exact")
    grads = learner.meta_gradient(*batch)
    theta = {k: v.detach().clone() for k, v in learner.method.meta_params(batch[0].shape[0], batch[0]).items()}
    _fd_check(learner, batch, theta, grads, seed=3)


def test_regularizer_changes_the_meta_gradient(tiny):
    """The penalty is really in the Virtual-Train loss (a test that would pass without it is no test)."""
    model, batch = tiny
    batch = _soft(batch)
    learner = _semi_learner(model, "mwnet", "exact")
    with_reg = learner.meta_gradient(*batch)
    learner.method.regularizer = None
    without = learner.meta_gradient(*batch)
    assert any(not torch.allclose(with_reg[k], without[k], rtol=1e-6) for k in with_reg)


@pytest.mark.parametrize("engine", engines(policy=AllLayers, backend=FORWARD))
def test_forward_mode_engines_equal_exact_with_regularizer(tiny, engine):
    model, batch = tiny
    batch = _soft(batch)
    learner = _semi_learner(model, "mwnet", "exact")
    exact = learner.meta_gradient(*batch)
    other = learner.meta_gradient(*batch, meta_grad=engine)
    tol = 1e-6 if engine == "fd" else 1e-9
    for k in exact:
        assert torch.allclose(other[k], exact[k], rtol=tol, atol=tol * float(exact[k].abs().max())), k


def test_actual_step_adds_the_regularizer(tiny):
    model, batch = tiny
    x, t, xm, ym = _soft(batch)
    learner = _semi_learner(model, "mwnet", "exact")
    logits = model(x)
    loss, c = learner.method.actual_loss(logits, t, {})
    per = -(t * F.log_softmax(logits, 1)).sum(1)
    per = torch.where(torch.arange(6) < 3, per, 5.0 * ((F.softmax(logits, 1) - t) ** 2).mean(1))
    assert torch.allclose(loss, (c * per).sum() + prior_penalty(logits))
