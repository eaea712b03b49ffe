"""FaMUS against its authors' code (github.com/youjiangxu/FaMUS), in float64 on a tiny residual net.

``_authors_meta_step`` re-derives one meta step the way the authors' ``meta_step`` and
``_compute_gated_grad`` compute it (written from their algorithm, not copied): gates per parameter
tensor, the meta-batch gradient in L_g detached, L_r on the last gate only, a three-layer sampler.
famus with the matching options must give the same meta and sampler gradients. docs/famus-fidelity.md
lists every difference; each option's own effect is tested below.
"""

import io

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import famus
from famus.meta.engines.base import MetaResult
from famus.meta.engines.famus import FaMUS
from famus.meta.sampler import GradientSampler, pooled_gradient

from .conftest import TinyResNet, engines, make_batches

AUTHORS = {"gate_unit": "tensor", "lg_target": "detached", "lr_gates": "last", "sampler_layers": 3,
           "sampler_nesterov": True}
FAMUS = engines(policy=FaMUS)
FD_RTOL = 1e-6  # famus-fd against second order, float64 (as tests/meta/test_forward_mode.py)
LR = 0.5


def _learner(engine="famus", seed=3, **options):
    torch.manual_seed(0)
    model = TinyResNet().double()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), "mwnet", engine,
                                seed=seed, engine_options=options)
    learner.bind(make_batches()[0])
    return learner


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in b) ** 0.5
    return num / max(sum(float(b[k].norm() ** 2) for k in b) ** 0.5, 1e-300)


def _row_stats(g):
    rows = g.reshape(g.shape[0], -1) if g.dim() >= 2 else g.reshape(1, -1)
    return rows.mean(1), rows.std(1)


def _authors_meta_step(learner, batch, k=4.0, lambda_r=0.1, lambda_g=0.1, temperature=5.0, pool="sum"):
    """The authors' meta step on ``learner``'s model, meta model and samplers (same generator state).

    ``pool``: ``"sum"`` as the authors' ``grad_function``, or ``"mean"`` as famus (equal after the
    standardisation but for its ``1e-9`` guard).

    Returns ``(grads, gates)``: theta and ``"sampler:..."`` gradients of L_c + L_g + L_r, keyed as
    ``MetaLearner.meta_gradient(include_samplers=True)``, and each gated tensor's gate value.
    """
    x, y, xm, ym = batch
    model, eng = learner.model, learner.engine
    params = dict(model.named_parameters())
    names = list(params)
    theta = dict(learner.meta_model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    # virtual forward and backward (create_graph: the meta gradient flows through it)
    logits = functional_call(model, {**params, **buffers}, (x,))
    loss, _ = learner.method.loss(logits, y, theta)
    grads = dict(zip(names, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
    # the authors' top_k tensors: all gated but the last two (the classifier's weight and bias)
    gated = [u.name for u in eng.sampled]
    pinned = names[-2:]
    assert all(n in names for n in gated) and set(pinned) == {"fc.weight", "fc.bias"}
    # grad_function: sum-pool all dimensions but the first, standardise (famus: population std, the one
    # documented difference, which rescales the input by sqrt(n / (n - 1))), three-layer sampler
    logits_r = []
    for n in gated:
        g = grads[n].detach()
        s = g.reshape(g.shape[0], -1)
        s = (s.sum(1) if pool == "sum" else s.mean(1)) if g.dim() >= 2 else g
        s = (s - s.mean()) / (s.std(unbiased=False) + 1e-9)
        logits_r.append(eng.samplers[n.replace(".", "/")](s))
    logits_r = torch.stack(logits_r)
    u = torch.rand(logits_r.shape, generator=torch.Generator().set_state(learner.generator.get_state())).double()
    y_soft = F.softmax((logits_r - torch.log(-torch.log(u + 1e-20) + 1e-20)) / temperature, dim=-1)
    y_hard = torch.zeros_like(y_soft).scatter_(1, y_soft.argmax(-1, keepdim=True), 1.0)
    act = ((y_hard - y_soft).detach() + y_soft)[:, 1]
    # _compute_gated_grad: below the gated tensors detached; a gate on keeps the path (act * g), a gate
    # off only feeds the gate ((1 - act) * g.detach()); the classifier keeps its path
    new = {n: grads[n].detach() for n in names}
    for j, n in enumerate(gated):
        new[n] = act[j] * grads[n] if act[j] > 0.5 else (1 - act[j]) * grads[n].detach()
    for n in pinned:
        new[n] = grads[n]
    act_loss = (act[-1:].sum() - k) ** 2  # acts.append after the loop: the last gate only
    w_hat = {n: params[n] - LR * new[n] for n in names}
    meta_buffers = {n: b.clone() for n, b in buffers.items()}
    valid_loss = F.cross_entropy(functional_call(model, {**w_hat, **meta_buffers}, (xm,)), ym)
    valid_grads = torch.autograd.grad(valid_loss, [w_hat[n] for n in pinned], create_graph=True)
    mse_loss = 0.0
    for n, valid_grad in zip(pinned, valid_grads):
        g_mean, g_std = _row_stats(valid_grad.detach())  # the target: detached
        pg_mean, pg_std = _row_stats(grads[n])
        mse_loss = mse_loss + lambda_g * torch.mean((pg_mean - g_mean) ** 2 + (pg_std - g_std) ** 2)
    total = valid_loss + mse_loss + lambda_r * act_loss
    sampler_params = {f"sampler:{n}": p for n, p in eng.samplers.named_parameters()}
    inputs = {**theta, **sampler_params}
    out = torch.autograd.grad(total, list(inputs.values()), allow_unused=True)
    grads_out = {n: torch.zeros_like(p) if g is None else g for (n, p), g in zip(inputs.items(), out)}
    return grads_out, dict(zip(gated, act.detach().tolist()))


@pytest.mark.parametrize("engine", FAMUS)
def test_authors_options_equal_the_authors_meta_step(engine):
    """famus with the authors' options = their meta step: meta and sampler gradients, float64."""
    learner = _learner(engine, k=4.0, top_tensors=9, **AUTHORS)
    batch = make_batches()
    got = learner.meta_gradient(*batch, include_samplers=True)
    for pool, tol in (("mean", 1e-12), ("sum", 1e-7)):  # sum: the 1e-9 guard moves the inputs (measured 1e-9)
        want, gates = _authors_meta_step(learner, batch, pool=pool)
        assert {0.0, 1.0} <= set(gates.values())  # some gates on, some off: the test shows both paths
        assert len(gates) == 7  # the last 9 tensors less the classifier's 2: one gate per tensor
        assert got.keys() == want.keys()
        rel = _rel(got, want)
        assert rel < (max(tol, FD_RTOL) if engine == "famus-fd" else tol), (pool, rel)
    stats = learner.step(*batch)
    assert {k: float(v) for k, v in stats.gates.items()} == {**gates, "fc": 1.0}


def test_fixed_layers_equal_the_authors_gated_virtual_step_exactly():
    """With a fixed layer set (all gates of the set on, the rest off; no L_g, no L_r), famus's meta gradient
    is the authors' formula ``w - lr * g`` on the set, ``w - lr * g.detach()`` elsewhere: bit for bit."""
    learner = _learner("famus")
    batch = make_batches()
    x, y, xm, ym = batch
    model = learner.model
    for fixed in (["fc"], ["conv3", "bn3", "fc"], ["bn2", "fc"], famus.layers(model)):
        got = learner.meta_gradient(*batch, layers=fixed)
        params = dict(model.named_parameters())
        theta = dict(learner.meta_model.named_parameters())
        buffers = {n: b.clone() for n, b in model.named_buffers()}
        loss, _ = learner.method.loss(functional_call(model, {**params, **buffers}, (x,)), y, theta)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        on = {p for layer in fixed for p in params if p.startswith(layer + ".")}
        w_hat = {n: p - LR * (g if n in on else g.detach()) for (n, p), g in zip(params.items(), grads)}
        meta = F.cross_entropy(functional_call(model, {**w_hat, **buffers}, (xm,)), ym)
        want = dict(zip(theta, torch.autograd.grad(meta, list(theta.values()))))
        rel = max(float((got[k] - want[k]).abs().max() / want[k].abs().max()) for k in want)
        assert rel == 0.0, (fixed, rel)


@pytest.mark.parametrize("engine", FAMUS)
@pytest.mark.parametrize("gate_unit", ["module", "tensor"])
def test_detached_target_is_the_constant_target_formula(engine, gate_unit):
    """lg_target=detached: the samplers get nothing from L_g, and theta gets L_c's gradient plus
    ``lambda_g d/dtheta L_g(g_L(theta), v_L)`` with the meta-batch gradient ``v_L`` a constant."""
    lam = 0.1
    det = _learner(engine, gate_unit=gate_unit, lg_target="detached", lambda_g=lam, k=2.5)
    no_g = _learner(engine, gate_unit=gate_unit, lambda_g=0.0, k=2.5)
    dif = _learner(engine, gate_unit=gate_unit, lambda_g=lam, k=2.5)
    batch = make_batches()
    got, base, full = (lrn.meta_gradient(*batch, include_samplers=True) for lrn in (det, no_g, dif))
    samplers = [k for k in got if k.startswith("sampler:")]
    theta_keys = [k for k in got if not k.startswith("sampler:")]
    assert samplers
    tol = FD_RTOL if engine == "famus-fd" else 1e-12
    assert _rel({k: got[k] for k in samplers}, {k: base[k] for k in samplers}) < tol
    # the L_g term by hand: v_L at w_hat for the same gates is the meta gradient of the last layer
    x, y, xm, ym = batch
    model = det.model
    params = dict(model.named_parameters())
    theta = dict(det.meta_model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    loss, _ = det.method.loss(functional_call(model, {**params, **buffers}, (x,)), y, theta)
    g = dict(zip(params, torch.autograd.grad(loss, list(params.values()), create_graph=True)))
    # w_hat's value does not depend on the gates (on: w - lr r g, off: w - lr (1 - r) g.detach())
    w_hat = {n: (p - LR * g[n]).detach() for n, p in params.items()}
    fc_hat = {n: w_hat[n].clone().requires_grad_() for n in ("fc.weight", "fc.bias")}
    meta = F.cross_entropy(functional_call(model, {**w_hat, **fc_hat, **buffers}, (xm,)), ym)
    v = torch.autograd.grad(meta, list(fc_hat.values()))
    lg = 0.0
    for n, vn in zip(fc_hat, v):
        (tm, ts), (vm, vs) = _row_stats(g[n]), _row_stats(vn)
        lg = lg + ((tm - vm) ** 2 + (ts - vs) ** 2).mean()
    term = dict(zip(theta, torch.autograd.grad(lam * lg, list(theta.values()))))
    want = {k: base[k] + term[k] for k in theta_keys}
    assert _rel({k: got[k] for k in theta_keys}, want) < tol
    # and the option matters: differentiating through v_L changes both gradients
    assert _rel({k: full[k] for k in theta_keys}, {k: got[k] for k in theta_keys}) > 1e-6
    assert _rel({k: full[k] for k in samplers}, {k: got[k] for k in samplers}) > 1e-6


def _gates(learner, batch):
    state = learner.generator.get_state()
    try:
        return {k: float(v) for k, v in learner.step(*batch).gates.items()}
    finally:
        learner.generator.set_state(state)


def test_tensor_gates_one_per_parameter_tensor():
    default = _learner(gate_unit="tensor")  # top_tensors=15 > the model's 12: every tensor but fc's
    names = [n for n, _ in default.model.named_parameters()]
    assert [u.name for u in default.engine.sampled] == names[:-2]
    dims = {n: s.fc1.in_features for n, s in default.engine.samplers.items()}
    shapes = dict(default.model.named_parameters())
    assert dims == {n.replace(".", "/"): shapes[n].shape[0] for n in names[:-2]}
    top = _learner(gate_unit="tensor", top_tensors=5)  # exactly the last 5 tensors, fc's pinned: 3 gates
    assert [u.name for u in top.engine.sampled] == ["conv3.bias", "bn3.weight", "bn3.bias"]
    module = _learner(top_tensors=5)  # per module: the layers holding them, whole
    assert [u.name for u in module.engine.sampled] == ["conv3", "bn3"]
    gates = _gates(top, make_batches())
    assert set(gates) == {"conv3.bias", "bn3.weight", "bn3.bias", "fc"}
    listed = _learner(gate_unit="tensor", candidates=["bn2", "conv3"])
    assert [u.name for u in listed.engine.sampled] == ["bn2.weight", "bn2.bias", "conv3.weight", "conv3.bias"]


def test_three_layer_nesterov_sampler():
    learner = _learner(sampler_layers=3, sampler_nesterov=True, hidden=16)
    s = learner.engine.samplers["conv3"]
    assert [(n, type(m).__name__) for n, m in s.named_children()] == [
        ("fc1", "Linear"), ("act", "PReLU"), ("fc2", "Linear"), ("act2", "PReLU"), ("fc3", "Linear")]
    assert (s.fc1.in_features, s.fc1.out_features, s.fc2.out_features, s.fc3.out_features) == (4, 16, 16, 2)
    g = torch.randn(4, dtype=torch.float64)
    torch.testing.assert_close(s(g), s.fc3(s.act2(s.fc2(s.act(s.fc1(g))))), rtol=0, atol=0)
    group = learner.engine.optimizer.param_groups[0]
    assert group["nesterov"] is True and group["momentum"] == 0.9 and group["weight_decay"] == 0
    assert {id(p) for p in group["params"]} == {id(p) for p in learner.engine.samplers.parameters()}
    plain = _learner()
    assert [n for n, _ in plain.engine.samplers["conv3"].named_children()] == ["fc1", "act", "fc2"]
    assert plain.engine.optimizer.param_groups[0]["nesterov"] is False
    # two sampler steps with gradient 1: Nesterov moves by lr (1 + m) then lr (1 + m + m^2), plain momentum
    # by lr then lr (1 + m)
    nest = _learner(sampler_nesterov=True)
    lr, m = 0.1, 0.9
    for lrn, steps in ((plain, (1, 1 + m)), (nest, (1 + m, 1 + m + m * m))):
        p0 = {n: p.detach().clone() for n, p in lrn.engine.samplers.named_parameters()}
        ones = {n: torch.ones_like(p) for n, p in p0.items()}
        for _ in steps:
            lrn.engine.apply(MetaResult(meta_grads={}, sampler_grads=ones))
        for n, p in lrn.engine.samplers.named_parameters():
            torch.testing.assert_close(p, p0[n] - lr * sum(steps), rtol=1e-12, atol=1e-12)


def test_lr_on_the_last_gate_only():
    batch = make_batches()
    grads = {}
    for lr_gates in ("all", "last"):
        for lam in (0.0, 0.1):
            lrn = _learner(lr_gates=lr_gates, lambda_r=lam, lambda_g=0.0, k=2.5, candidates="all")
            grads[lr_gates, lam] = lrn.meta_gradient(*batch, include_samplers=True)
    units = [u.name.replace(".", "/") for u in lrn.engine.sampled]

    def moved(lr_gates):
        return [u for u in units if not torch.allclose(grads[lr_gates, 0.1][f"sampler:{u}.fc2.bias"],
                                                       grads[lr_gates, 0.0][f"sampler:{u}.fc2.bias"])]

    assert moved("all") == units
    assert moved("last") == units[-1:]


def test_pooled_input_equals_the_authors_sum_pooling_up_to_the_std_convention():
    g = torch.randn(8, 3, 3, 3, dtype=torch.float64)
    s = g.sum((1, 2, 3))
    authors = (s - s.mean()) / (s.std() + 1e-9)  # sum pooling, unbiased std
    torch.testing.assert_close(pooled_gradient(g) * ((8 - 1) / 8) ** 0.5, authors, rtol=1e-7, atol=1e-9)


def test_state_round_trip_and_resume_with_the_authors_options():
    batch = make_batches()
    a = _learner(**AUTHORS)
    a.step(*batch)
    b = _learner(seed=99, **AUTHORS)
    saved = _saved({"model": a.model.state_dict(), "optimizer": a.optimizer.state_dict(), "learner": a.state_dict()})
    b.model.load_state_dict(saved["model"])
    b.optimizer.load_state_dict(saved["optimizer"])
    b.load_state_dict(saved["learner"])
    assert b.engine.optimizer.param_groups[0]["nesterov"] is True
    assert b.engine.optimizer.state_dict()["state"].keys() == a.engine.optimizer.state_dict()["state"].keys()
    sa, sb = a.step(*batch), b.step(*batch)
    assert {k: float(v) for k, v in sa.gates.items()} == {k: float(v) for k, v in sb.gates.items()}
    for (n, p), (_, q) in zip(a.engine.samplers.named_parameters(), b.engine.samplers.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    for (n, p), (_, q) in zip(a.model.named_parameters(), b.model.named_parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0, msg=n)
    module = _learner()  # a per-tensor state does not load into per-module samplers
    with pytest.raises(RuntimeError, match="Missing key|Unexpected key"):
        module.load_state_dict(saved["learner"])


def _saved(state):
    """``state`` through a file, as a checkpoint (no pickle: ``weights_only=True``)."""
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


@pytest.mark.parametrize("options,message", [
    ({"lg_target": "detach"}, "lg_target must be one of 'differentiated', 'detached'"),
    ({"gate_unit": "layer"}, "gate_unit must be one of 'module', 'tensor'"),
    ({"lr_gates": "first"}, "lr_gates must be one of 'all', 'last'"),
    ({"sampler_layers": 1}, "sampler_layers must be an integer >= 2"),
    ({"sampler_layers": 2.5}, "sampler_layers must be an integer >= 2"),
    ({"sampler_layers": True}, "sampler_layers must be an integer >= 2"),
    ({"sampler_nesterov": "yes"}, "sampler_nesterov must be true or false"),
    ({"sampler_nesterov": True, "sampler_momentum": 0.0}, "sampler_nesterov needs sampler_momentum > 0"),
    ({"gate_unit": "tensor", "pin_last": False}, "gate_unit='tensor' needs pin_last=True"),
])
@pytest.mark.parametrize("engine", FAMUS)
def test_bad_options_are_clear_errors(engine, options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        famus.build_engine(engine, **options)


@pytest.mark.parametrize("engine", FAMUS)
def test_defaults_are_unchanged(engine):
    eng = famus.build_engine(engine)
    assert (eng.lg_target, eng.gate_unit, eng.lr_gates, eng.sampler_layers, eng.sampler_nesterov) == (
        "differentiated", "module", "all", 2, False)
    assert [n for n, _ in GradientSampler(4).named_parameters()] == [
        "fc1.weight", "fc1.bias", "act.weight", "fc2.weight", "fc2.bias"]  # checkpoints keep loading


def test_bench_runs_the_variants_side_by_side(monkeypatch):
    """``famus bench --engines 'famus,famus[lg_target=detached;gate_unit=tensor]'``: options per spec."""
    from famus import bench as bench_module

    assert bench_module.split_specs("exact,famus[a=1;b=[x, y]]+lagged, fd") == [
        "exact", "famus[a=1;b=[x, y]]+lagged", "fd"]
    assert bench_module.spec_options("famus-fd[sampler_layers=3;sampler_nesterov=true]+lagged") == (
        "famus-fd+lagged", {"sampler_layers": 3, "sampler_nesterov": True})
    assert bench_module.parse_engine("famus[k=2]+lagged") == ("famus", True, True)
    seen = {}

    class Recording(bench_module.MetaLearner):
        def __init__(self, *args, engine_options=None, **kw):
            super().__init__(*args, engine_options=engine_options, **kw)
            seen.setdefault(args[3], []).append(dict(engine_options or {}))

    monkeypatch.setattr(bench_module, "MetaLearner", Recording)
    specs = ["famus", "famus[lg_target=detached;gate_unit=tensor]", "famus-fd[sampler_layers=3]+lagged"]
    result = bench_module.bench("small-resnet", (1, 8, 8), 8, "mwnet", ["exact", *specs], num_classes=3, repeats=1,
                                warmup=0, engine_options={"famus": {"k": 2}})
    assert list(result["engines"]) == ["exact", *specs]
    assert all("error" not in row for row in result["engines"].values())
    assert {"k": 2} in seen["famus"] and {"k": 2, "lg_target": "detached", "gate_unit": "tensor"} in seen["famus"]
    assert {"sampler_layers": 3} in seen["famus-fd"]
    with pytest.raises(ValueError, match="lg_target must be one of"):
        bench_module.bench("small-resnet", (1, 8, 8), 8, "mwnet", ["famus[lg_target=both]"], num_classes=3)
    with pytest.raises(TypeError, match="unknown engine option"):
        bench_module.bench("small-resnet", (1, 8, 8), 8, "mwnet", ["famus[lgtarget=detached]"], num_classes=3)
    with pytest.raises(ValueError, match="KEY=VALUE"):
        bench_module.spec_options("famus[lg_target]")
