"""FaMUS sampler: inputs, gradients from L_c, L_r and L_g, and the real saving."""

import torch
from torch import nn

import famus
from famus.meta.sampler import gumbel_gates, pooled_gradient

from .conftest import make_batches


def test_pooled_gradient_shapes_for_conv_linear_norm():
    assert pooled_gradient(torch.randn(8, 3, 3, 3)).shape == (8,)
    assert pooled_gradient(torch.randn(10, 64)).shape == (10,)
    assert pooled_gradient(torch.randn(16)).shape == (16,)
    p = pooled_gradient(torch.randn(32, 4, 3, 3))
    assert abs(float(p.mean())) < 1e-6 and abs(float(p.std(unbiased=False)) - 1) < 1e-4


def test_sampler_inputs_match_layer_shapes(tiny):
    model, batch = tiny
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "famus",
                                engine_options={"candidates": "all"})
    learner.bind(batch[0])
    dims = {n.replace("/", "."): s.fc1.in_features for n, s in learner.engine.samplers.items()}
    assert dims == {"conv1": 4, "bn1": 4, "conv2": 4, "bn2": 4, "conv3": 4, "bn3": 4}
    assert "fc" not in dims  # pinned on, no sampler


def test_gumbel_gates_are_hard_with_straight_through_gradient():
    logits = torch.randn(5, 2, requires_grad=True)
    r = gumbel_gates(logits, torch.rand(5, 2, generator=torch.Generator().manual_seed(0)), 5.0)
    assert set(r.tolist()) <= {0.0, 1.0}
    r.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def _sampler_grads(learner, batch):
    g = learner.meta_gradient(*batch, include_samplers=True)
    return {k: v for k, v in g.items() if k.startswith("sampler:")}


def test_sampler_gets_gradient_from_each_loss(tiny):
    model, batch = tiny
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", "famus",
                                engine_options={"candidates": "all", "lambda_r": 0.0, "lambda_g": 0.0})
    eng = learner.engine
    only_c = _sampler_grads(learner, batch)
    assert only_c and all(torch.isfinite(v).all() for v in only_c.values())
    assert sum(float(v.abs().sum()) for v in only_c.values()) > 0  # straight-through from L_c
    eng.lambda_r, eng.k = 0.1, 0.5  # K off the integers: L_r's gradient cannot vanish
    with_r = _sampler_grads(learner, batch)
    assert any(not torch.allclose(with_r[k], only_c[k]) for k in only_c)
    eng.lambda_r, eng.lambda_g = 0.0, 0.1
    with_g = _sampler_grads(learner, batch)
    assert any(not torch.allclose(with_g[k], only_c[k]) for k in only_c)


def test_gate_gradient_is_plus_minus_alpha_v_dot_g(tiny):
    """dL_c/dr_l = -alpha <v_l, g_l> for an on gate and +alpha <v_l, g_l> for an off gate."""
    model, batch = tiny
    x, y, xm, ym = batch
    lr = 0.5
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=lr), "mwnet", "famus",
                                engine_options={"candidates": ["conv3"], "lambda_r": 0.0, "lambda_g": 0.0})
    learner.bind(x)
    sampler = learner.engine.samplers["conv3"]
    for on in (True, False):
        nn.init.zeros_(sampler.fc2.weight)
        sampler.fc2.bias.data = torch.tensor([0.0, 50.0] if on else [50.0, 0.0], dtype=torch.float64)
        grads = learner.meta_gradient(*batch, include_samplers=True)
        # fc2.bias gradient = dL/dr * dr/dbias; with softmax p on the chosen side ~1, compute it by autograd
        # of the same chain: dr/dbias = p1 * ([0,1] - p) at the soft probabilities.
        gen = learner.generator.get_state()
        u = torch.rand(1, 2, generator=torch.Generator().set_state(gen)).double()
        logit = sampler.fc2.bias.detach().clone().requires_grad_()
        r = gumbel_gates(logit.unsqueeze(0), u, learner.engine.temperature)[0]
        (dr_db,) = torch.autograd.grad(r, logit)
        # <v, g> for conv3 by hand
        params = dict(model.named_parameters())
        bufs = {n: b.clone() for n, b in model.named_buffers()}
        logits = torch.func.functional_call(model, {**params, **bufs}, (x,))
        loss, _ = learner.method.loss(logits, y, dict(learner.meta_model.named_parameters()))
        g = torch.autograd.grad(loss, list(params.values()))
        w_hat = {n: (p - lr * gi).detach().requires_grad_() for (n, p), gi in zip(params.items(), g)}
        meta = torch.nn.functional.cross_entropy(torch.func.functional_call(model, {**w_hat, **bufs}, (xm,)), ym)
        v = torch.autograd.grad(meta, w_hat["conv3.weight"], retain_graph=True)[0]
        vb = torch.autograd.grad(meta, w_hat["conv3.bias"])[0]
        names = list(params)
        vg = (v * g[names.index("conv3.weight")]).sum() + (vb * g[names.index("conv3.bias")]).sum()
        d_loss_dr = (-lr if on else lr) * vg
        torch.testing.assert_close(grads["sampler:conv3.fc2.bias"], d_loss_dr * dr_db, rtol=1e-6, atol=1e-14)


class Probe(torch.autograd.Function):
    calls = 0

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        Probe.calls += 1
        return g * 1.0


class ProbedNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = Probe.apply(torch.relu(self.bn1(self.conv1(x))))  # counts backward passes through the bottom
        return self.fc(torch.relu(self.conv2(h)).mean((2, 3)))


def test_meta_backward_stops_at_lowest_contributing_layer():
    torch.manual_seed(0)
    model = ProbedNet().double()
    batch = make_batches()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "block",
                                engine_options={"layers": ["conv2", "fc"]})
    learner.bind(batch[0])
    Probe.calls = 0
    learner.meta_gradient(*batch)
    restricted = Probe.calls  # the virtual backward only
    Probe.calls = 0
    learner.meta_gradient(*batch, meta_grad="exact")
    full = Probe.calls
    assert restricted == 1
    assert full >= 2
