"""The exact meta gradient is exact; restricted engines equal their definitions."""

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import famus
from famus.meta.methods import MWNet

from .conftest import TinyResNet, make_batches, methods


def _learner(model, method="mwnet", engine="exact", lr=0.5, method_options=None, engine_options=None, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return famus.MetaLearner(model, opt, method, engine, method_options=method_options,
                             engine_options=engine_options, **kw)


def _fd_check(learner, batch, theta, grads, seed=1, eps=1e-5, directions=3):
    gen = torch.Generator().manual_seed(seed)
    for _ in range(directions):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in theta.items()}
        plus = learner.meta_loss(*batch, meta_params={k: theta[k] + eps * d[k] for k in theta})
        minus = learner.meta_loss(*batch, meta_params={k: theta[k] - eps * d[k] for k in theta})
        fd = (plus - minus) / (2 * eps)
        analytic = sum(float((grads[k] * d[k]).sum()) for k in grads)
        assert abs(fd - analytic) / max(abs(analytic), 1e-12) < 1e-4, (fd, analytic)


def test_exact_mwnet_matches_central_differences(tiny):
    model, batch = tiny
    learner = _learner(model)
    grads = learner.meta_gradient(*batch)
    assert set(grads) == {n for n, _ in learner.meta_model.named_parameters()}
    theta = {k: v.detach().clone() for k, v in learner.meta_model.named_parameters()}
    _fd_check(learner, batch, theta, grads)


def test_exact_mwnet_unnormalized_matches_central_differences(tiny):
    model, batch = tiny
    learner = _learner(model, method_options={"normalize": False})
    grads = learner.meta_gradient(*batch)
    theta = {k: v.detach().clone() for k, v in learner.meta_model.named_parameters()}
    _fd_check(learner, batch, theta, grads, seed=2)


def test_exact_l2r_matches_central_differences(tiny):
    model, batch = tiny
    learner = _learner(model, "l2r")
    grads = learner.meta_gradient(*batch)
    assert set(grads) == {"eps"} and grads["eps"].shape == (batch[0].shape[0],)
    _fd_check(learner, batch, {"eps": torch.zeros_like(grads["eps"])}, grads)


@pytest.mark.parametrize("method", methods())
def test_every_layer_contributing_equals_exact(tiny, method):
    model, batch = tiny
    learner = _learner(model, method, "famus", engine_options={"candidates": "all"})
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    all_layers = famus.layers(model)
    via_famus = learner.meta_gradient(*batch, layers=all_layers)
    block = _learner(model, method, "block", engine_options={"layers": all_layers})
    if method == "mwnet":
        block.meta_model.load_state_dict(learner.meta_model.state_dict())
    via_block = block.meta_gradient(*batch)
    for k in exact:
        torch.testing.assert_close(via_famus[k], exact[k], rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(via_block[k], exact[k], rtol=1e-10, atol=1e-12)


def test_famus_with_all_gates_on_equals_exact(tiny):
    """FaMUS's own gating path: every sampler forced on and L_g off gives the exact gradient."""
    model, batch = tiny
    learner = _learner(model, "mwnet", "famus",
                       engine_options={"candidates": "all", "lambda_g": 0.0, "lambda_r": 0.0})
    learner.bind(batch[0])
    for s in learner.engine.samplers.values():  # logits (-inf, +inf): always on
        torch.nn.init.zeros_(s.fc2.weight)
        s.fc2.bias.data = torch.tensor([-1e6, 1e6], dtype=s.fc2.bias.dtype)
    famus_g = learner.meta_gradient(*batch)
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    for k in exact:
        torch.testing.assert_close(famus_g[k], exact[k], rtol=1e-10, atol=1e-12)


def test_last_layer_only_equals_eq7_last_layer_term(tiny):
    model, batch = tiny
    x, y, xm, ym = batch
    lr = 0.5
    learner = _learner(model, "mwnet", "famus", lr=lr)
    got = learner.meta_gradient(*batch, layers=["fc"])

    # Eq. 7 by hand: g = -alpha * sum_i <v_L, dL_i/dw_L> dc_i/dtheta, v_L = dL_c/dw_hat_L
    params = dict(model.named_parameters())
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    method: MWNet = learner.method
    theta = dict(method.meta_model.named_parameters())
    logits = functional_call(model, {**params, **bufs}, (x,))
    losses = F.cross_entropy(logits, y, reduction="none")
    loss, c = method.loss(logits, y, theta)
    grads = torch.autograd.grad(loss, list(params.values()), retain_graph=True)
    w_hat = {n: (p - lr * g).detach().requires_grad_() for (n, p), g in zip(params.items(), grads)}
    meta = F.cross_entropy(functional_call(model, {**w_hat, **bufs}, (xm,)), ym)
    v = torch.autograd.grad(meta, [w_hat["fc.weight"], w_hat["fc.bias"]])
    G = torch.stack([
        sum((a * b).sum() for a, b in zip(v, torch.autograd.grad(losses[i], [params["fc.weight"], params["fc.bias"]],
                                                                   retain_graph=True)))
        for i in range(len(y))
    ])
    expected = torch.autograd.grad(-lr * (c * G.detach()).sum(), list(theta.values()))
    for (k, _), e in zip(theta.items(), expected):
        torch.testing.assert_close(got[k], e, rtol=1e-9, atol=1e-12)


def test_restricted_gradient_is_not_exact_gradient(tiny):
    """Guard against a test that cannot fail: fewer layers really changes the gradient."""
    model, batch = tiny
    learner = _learner(model)
    exact = learner.meta_gradient(*batch)
    last = learner.meta_gradient(*batch, layers=["fc"])
    assert any(not torch.allclose(exact[k], last[k]) for k in exact)


def test_random_and_block_engines_pick_their_layers(tiny):
    model, batch = tiny
    learner = _learner(model, "mwnet", "random", engine_options={"s": 2})
    stats = learner.step(*batch)
    assert stats.gates is not None and len(stats.gates) == 2
    block = _learner(model, "mwnet", "block", engine_options={"layers": ["conv3", "bn3"]})
    assert set(block.step(*batch).gates) == {"conv3", "bn3"}


def test_layers_follow_forward_order():
    class Shuffled(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = torch.nn.Linear(4, 2)
            self.body = torch.nn.Linear(3, 4)

        def forward(self, x):
            return self.head(self.body(x))

    m = Shuffled()
    assert famus.layers(m) == ["head", "body"]  # registration order without an example
    assert famus.layers(m, torch.zeros(2, 3)) == ["body", "head"]
    learner = famus.MetaLearner(m, torch.optim.SGD(m.parameters(), lr=0.1))
    learner.bind(torch.zeros(2, 3))
    assert [i.name for i in learner.layer_infos] == ["body", "head"]


def test_float32_default_dtype_runs():
    torch.manual_seed(0)
    model = TinyResNet()
    x, y, xm, ym = make_batches(dtype=torch.float32)
    learner = _learner(model, "mwnet", "famus")
    stats = learner.step(x, y, xm, ym)
    assert stats.weights.dtype == torch.float32 and torch.isfinite(stats.train_loss)
