"""Forward-mode engines: jvp is exact, fd is close, FaMUS over them is FaMUS over exact."""

import copy

import pytest
import torch
from torch import nn

import famus
from famus.models import build_model

from .conftest import FD, FORWARD, AllLayers, FaMUS, TinyResNet, engines, make_batches, methods

FD_RTOL = 1e-6  # float64, default step 6e-6: measured ~1e-10 on these models


def _learner(model, method="mwnet", engine="exact", lr=0.5, method_options=None, engine_options=None, **kw):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    return famus.MetaLearner(model, opt, method, engine, method_options=method_options,
                             engine_options=engine_options, **kw)


def _staged(classes=3):
    """A Sequential of stages with BN and residual blocks (the zoo's small ResNet), float64."""
    torch.manual_seed(0)
    return build_model("small-resnet", classes, in_channels=1, width=4).double()


MODELS = {
    "tiny-resnet": (lambda: (torch.manual_seed(0), TinyResNet().double())[1], 5),  # not a chain: full passes
    "staged-resnet": (_staged, 8),  # nn.Sequential: cached stage inputs
}


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in b) ** 0.5
    return num / max(sum(float(b[k].norm() ** 2) for k in b) ** 0.5, 1e-300)


def _assert_same(got: dict, want: dict, rtol=1e-10, atol=1e-13):
    assert got.keys() == want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=rtol, atol=atol, msg=k)


METHOD_OPTS = [("mwnet", {}), ("mwnet", {"normalize": False}), ("l2r", {})]
if "mlc" in famus.METHODS:  # any method whose loss is a function of logits and theta
    METHOD_OPTS.append(("mlc", {"num_classes": 3}))


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method,opts", METHOD_OPTS)
def test_jvp_equals_exact_to_float64_precision(model_name, method, opts):
    make, size = MODELS[model_name]
    learner = _learner(make(), method, method_options=opts)
    batch = make_batches(size=size)
    exact = learner.meta_gradient(*batch)
    _assert_same(learner.meta_gradient(*batch, meta_grad="jvp"), exact)
    assert sum(float(v.abs().sum()) for v in exact.values()) > 0


@pytest.mark.parametrize("method,opts", METHOD_OPTS[2:])
@pytest.mark.parametrize("engine", engines(backend=FORWARD))
def test_other_methods_over_forward_mode(method, opts, engine):
    model = _staged()
    batch = make_batches(size=8)
    ref = _learner(model, method, "exact", method_options=opts)
    layers = ["layer3_0", "fc"]
    want = ref.meta_gradient(*batch, layers=layers)
    got = _learner(model, method, engine, method_options=opts).meta_gradient(*batch, layers=layers)
    assert _rel(got, want) < (1e-10 if engine == "famus-jvp" else FD_RTOL)


@pytest.mark.parametrize("model_name", sorted(MODELS))
@pytest.mark.parametrize("method", methods())
def test_fd_agrees_with_exact_within_stated_tolerance(model_name, method):
    make, size = MODELS[model_name]
    learner = _learner(make(), method)
    batch = make_batches(size=size)
    exact = learner.meta_gradient(*batch)
    assert _rel(learner.meta_gradient(*batch, meta_grad="fd"), exact) < FD_RTOL


@pytest.mark.parametrize("scheme", ["forward", "central"])
def test_fd_float32_is_close_and_its_step_is_configurable(scheme):
    """float32: ReLU units crossing their kink within the step dominate; ~0.5% on this net, either scheme."""
    torch.manual_seed(0)
    model = build_model("small-resnet", 3, in_channels=1, width=8)
    batch = make_batches(n=32, m=16, size=8, dtype=torch.float32)
    learner = _learner(model, "l2r", "fd", lr=0.1, engine_options={"scheme": scheme})
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    fd = learner.meta_gradient(*batch)
    assert _rel(fd, exact) < 2e-2
    assert float(torch.nn.functional.cosine_similarity(fd["eps"], exact["eps"], dim=0)) > 0.999
    coarse = _learner(model, "l2r", "fd", lr=0.1, engine_options={"fd_eps": 0.3, "scheme": scheme})
    coarse = coarse.meta_gradient(*batch)
    assert _rel(coarse, exact) > _rel(fd, exact)  # the option reaches the engine
    with pytest.raises(ValueError, match="fd_eps"):
        _learner(model, "l2r", "fd", engine_options={"fd_eps": -1.0})
    with pytest.raises(ValueError, match="scheme"):
        _learner(model, "l2r", "fd", engine_options={"scheme": "backward"})


def test_forward_scheme_bias_is_first_order_in_the_step():
    """float64, smooth regime: halving the step halves the one-sided error, quarters the central one."""
    torch.manual_seed(0)
    model = TinyResNet().double()
    batch = make_batches(size=5)

    def grad(engine="exact", **engine_options):
        torch.manual_seed(1)  # the same meta model every time
        return _learner(model, "mwnet", engine, engine_options=engine_options).meta_gradient(*batch)

    exact = grad()
    err = {(scheme, eps): _rel(grad("fd", fd_eps=eps, scheme=scheme), exact)
           for scheme in ("forward", "central") for eps in (1e-3, 5e-4)}
    assert err[("forward", 1e-3)] / err[("forward", 5e-4)] == pytest.approx(2.0, rel=0.05)
    assert err[("central", 1e-3)] / err[("central", 5e-4)] == pytest.approx(4.0, rel=0.05)
    assert err[("forward", 1e-3)] < 2e-3  # measured 9.3e-4: ~0.9 x the relative step
    assert _rel(grad("fd"), exact) < 1e-7  # the default step (sqrt of float64's epsilon)


@pytest.mark.parametrize("engine", engines(policy=AllLayers, backend=FORWARD))
def test_restricted_layers_equal_exact_restricted(engine):
    model = _staged()
    batch = make_batches(size=8)
    learner = _learner(model, "mwnet")
    for layers in (["fc"], ["layer3_0", "fc"], ["layer2_0.conv1"]):
        want = learner.meta_gradient(*batch, layers=layers)
        got = learner.meta_gradient(*batch, meta_grad=engine, layers=layers)
        if engine == "jvp":
            _assert_same(got, want)
        else:
            assert _rel(got, want) < FD_RTOL


def _famus_pair(make, method, engine, lambda_g, seed=3):
    """FaMUS over exact and over ``engine``, with identical samplers and meta models."""
    out = []
    for eng in ("famus", engine):
        torch.manual_seed(seed)
        model = make()
        learner = _learner(model, method, eng, seed=seed,
                           engine_options={"candidates": "all", "lambda_g": lambda_g, "k": 2.5})
        learner.bind(make_batches(size=8)[0])
        out.append(learner)
    if method == "mwnet":
        out[1].meta_model.load_state_dict(out[0].meta_model.state_dict())
    return out


@pytest.mark.parametrize("engine", engines(policy=FaMUS, backend=FORWARD))
@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("lambda_g", [0.0, 0.1])
def test_famus_over_forward_mode_equals_famus_over_exact(engine, method, lambda_g):
    """Same gates -> the same meta gradient AND the same sampler gradient (L_c, L_r and L_g)."""
    ref, other = _famus_pair(_staged, method, engine, lambda_g)
    batch = make_batches(size=8)
    want = ref.meta_gradient(*batch, include_samplers=True)
    got = other.meta_gradient(*batch, include_samplers=True)
    assert any(k.startswith("sampler:") for k in want)
    if engine == "famus-jvp":
        _assert_same(got, want)
    else:
        theta = [k for k in want if not k.startswith("sampler:")]
        samplers = [k for k in want if k.startswith("sampler:")]
        assert _rel({k: got[k] for k in theta}, {k: want[k] for k in theta}) < FD_RTOL
        assert _rel({k: got[k] for k in samplers}, {k: want[k] for k in samplers}) < FD_RTOL
    # a step draws the same gates, with some on and some off (else the test proves little)
    s_ref, s_other = ref.step(*batch), other.step(*batch)
    assert {k: float(v) for k, v in s_ref.gates.items()} == {k: float(v) for k, v in s_other.gates.items()}
    assert {0.0, 1.0} <= {float(v) for v in s_ref.gates.values()}
    if lambda_g:
        torch.testing.assert_close(s_other.aux["loss_g"], s_ref.aux["loss_g"], rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("engine", engines(policy=FaMUS, backend=FORWARD))
def test_sampler_gradient_equal_across_engines_non_chain_model(engine):
    ref, other = _famus_pair(lambda: TinyResNet().double(), "mwnet", engine, 0.1)
    batch = make_batches()
    want = {k: v for k, v in ref.meta_gradient(*batch, include_samplers=True).items() if k.startswith("sampler:")}
    got = {k: v for k, v in other.meta_gradient(*batch, include_samplers=True).items() if k.startswith("sampler:")}
    assert want and _rel(got, want) < (1e-10 if engine == "famus-jvp" else FD_RTOL)


class Counter(nn.Module):
    """Identity that counts its calls: how many passes ran through the bottom of the net."""

    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


@pytest.mark.parametrize("engine", engines(backend=FORWARD) + [f"{e}+central" for e in engines(backend=FD)])
def test_cached_activation_path_equals_full_path(engine):
    engine, central = engine.removesuffix("+central"), engine.endswith("+central")
    torch.manual_seed(0)
    base = _staged()
    staged = nn.Sequential(Counter(), *base)  # stage 0 counts passes from the input
    full = copy.deepcopy(staged)
    batch = make_batches(size=8)
    # children: 0 counter, 1 stem, 2-4 residual blocks, 5 pooling head, 6 fc
    engine_options = {"candidates": ["4"], "lambda_g": 0.1} if engine.startswith("famus") else {}
    if central:
        engine_options["scheme"] = "central"
    layers = None if engine.startswith("famus") else ["4", "6"]
    got, want, calls = [], [], []
    for net, stages, out in ((staged, "auto", got), (full, None, want)):
        torch.manual_seed(5)
        learner = _learner(net, "mwnet", engine, engine_options={"stages": stages, **engine_options})
        learner.bind(batch[0])
        net[0].calls = 0
        out.append(learner.meta_gradient(*batch, layers=layers, include_samplers=True))
        calls.append(net[0].calls)
    tol = 1e-10 if "jvp" in engine else FD_RTOL
    assert _rel(got[0], want[0]) < tol
    passes = 2 if central else 1  # jvp: one forward-mode pass; fd: one (forward) or two (central)
    assert calls == [2, 2 + passes]  # virtual + meta forward; the full path re-runs the bottom


def test_declared_split_points():
    class Chain(nn.Module):  # not an nn.Sequential: stages must be declared
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.body = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
            self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

        def forward(self, x):
            return self.head(self.body(self.stem(x)))

    torch.manual_seed(0)
    model = Chain().double()
    batch = make_batches()
    learner = _learner(model, "mwnet", "jvp", engine_options={"stages": ["stem", "body", "head"]})
    exact = learner.meta_gradient(*batch, meta_grad="exact", layers=["body.0", "head.2"])
    _assert_same(learner.meta_gradient(*batch, layers=["body.0", "head.2"]), exact)
    bad = _learner(model, "mwnet", "jvp", engine_options={"stages": ["body", "stem", "head"]})
    with pytest.raises(ValueError, match="do not reproduce"):
        bad.meta_gradient(*batch)
    with pytest.raises(ValueError, match="unknown stage"):
        _learner(model, "mwnet", "jvp", engine_options={"stages": ["stem", "nope"]}).meta_gradient(*batch)


def test_dropout_masks_are_replayed():
    """With dropout, the JVP pass reuses the Virtual-Train masks, so jvp still equals exact."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout(0.3),
        nn.Flatten(), nn.Linear(4 * 25, 8), nn.ReLU(), nn.Dropout(0.3), nn.Linear(8, 3),
    ).double()
    batch = make_batches()
    learner = _learner(model, "mwnet")
    torch.manual_seed(1)
    exact = learner.meta_gradient(*batch)
    torch.manual_seed(1)
    jvp = learner.meta_gradient(*batch, meta_grad="jvp", layers=["5", "8"])
    torch.manual_seed(1)
    exact_top = learner.meta_gradient(*batch, layers=["5", "8"])
    torch.manual_seed(1)
    _assert_same(learner.meta_gradient(*batch, meta_grad="jvp"), exact)
    _assert_same(jvp, exact_top)


class InplaceBias(nn.Module):
    """Adds a learned bias to its input in place: the cached input of its stage is overwritten."""

    def __init__(self, channels):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))

    def forward(self, x):
        return x.add_(self.bias)


def test_input_modified_in_place_falls_back_to_an_earlier_intact_stage():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), InplaceBias(4), nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3),
    ).double()
    with torch.no_grad():
        model[2].bias.normal_()
    batch = make_batches()
    learner = _learner(model, "l2r")
    for layers in (["2", "6"], ["1", "6"], ["6"]):
        _assert_same(learner.meta_gradient(*batch, meta_grad="jvp", layers=layers),
                     learner.meta_gradient(*batch, layers=layers))


def test_soft_training_targets():
    """(n, C) soft targets (MixMatch) go through the method's loss head like hard labels."""
    x, y, xm, ym = make_batches(size=8)
    soft = torch.softmax(torch.randn(len(y), 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1)
    learner = _learner(_staged(), "mwnet")
    exact = learner.meta_gradient(x, soft, xm, ym)
    _assert_same(learner.meta_gradient(x, soft, xm, ym, meta_grad="jvp"), exact)
    assert _rel(learner.meta_gradient(x, soft, xm, ym, meta_grad="fd"), exact) < FD_RTOL
