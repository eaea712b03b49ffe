"""The virtual step follows the optimizer: Adam/AdamW's preconditioner, the same in every engine."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

import famus
from famus.models import build_model

from .conftest import FORWARD, FaMUS, TinyResNet, engines, make_batches, methods

FD_RTOL = 1e-6  # the fd engines, float64 (as in test_forward_mode)
ENGINE_TOL = {"auto": FD_RTOL, "exact": 0.0, "jvp": 1e-10, "famus-jvp": 1e-10, "famus": 1e-10, "block": 1e-10,
              "random": 1e-10, "fd": FD_RTOL, "famus-fd": FD_RTOL}
ENGINE_OPTS = {"block": {"layers": ["fc"]}, "random": {"s": 2}}


def _staged():
    torch.manual_seed(0)
    return build_model("small-resnet", 3, in_channels=1, width=4).double()


def _adam_learner(make, method="mwnet", engine="exact", steps=3, lr=1e-2, amsgrad=False, engine_options=None, **kw):
    """A learner whose AdamW has state: ``steps`` training steps on other batches first."""
    model = make()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2, amsgrad=amsgrad)
    learner = famus.MetaLearner(model, opt, method, engine, engine_options=engine_options, **kw)
    for s in range(steps):
        learner.step(*make_batches(seed=10 + s, size=8))
    return learner


def _rel(a: dict, b: dict) -> float:
    num = sum(float((a[k] - b[k]).norm() ** 2) for k in b) ** 0.5
    return num / max(sum(float(b[k].norm() ** 2) for k in b) ** 0.5, 1e-300)


def _preconditioner(opt: torch.optim.Optimizer, p: torch.Tensor) -> torch.Tensor:
    """By hand, as torch.optim.AdamW computes its step: lr / (sqrt(v) / sqrt(1 - beta2^t) + eps)."""
    group = opt.param_groups[0]
    st = opt.state[p]
    v = st["max_exp_avg_sq"] if group["amsgrad"] else st["exp_avg_sq"]
    t = float(st["step"])
    return group["lr"] / (v.sqrt() / (1 - group["betas"][1] ** t) ** 0.5 + group["eps"])


def _meta_loss_by_hand(learner, batch, theta, sgd=False) -> float:
    """``L_c(w_hat(theta))`` with ``w_hat = w - P * grad_w L_train(w, theta)``, P held fixed."""
    x, y, xm, ym = batch
    model = learner.model
    params = dict(model.named_parameters())
    bufs = {n: b.clone() for n, b in model.named_buffers()}
    loss, _ = learner.method.loss(functional_call(model, {**params, **bufs}, (x,)), y, theta)
    grads = torch.autograd.grad(loss, list(params.values()))
    lr = learner.optimizer.param_groups[0]["lr"]
    with torch.no_grad():
        w_hat = {n: p - (lr if sgd else _preconditioner(learner.optimizer, p)) * g
                 for (n, p), g in zip(params.items(), grads)}
        return float(F.cross_entropy(functional_call(model, {**w_hat, **bufs}, (xm,)), ym))


@pytest.mark.parametrize("amsgrad", [False, True])
@pytest.mark.parametrize("method", methods())
def test_adam_aware_meta_gradient_matches_central_differences(method, amsgrad):
    """d L_c(w - P * g(theta)) / d theta: the engine's value against a central difference written here."""
    learner = _adam_learner(lambda: (torch.manual_seed(0), TinyResNet().double())[1], method, amsgrad=amsgrad)
    batch = make_batches(seed=3)
    grads = learner.meta_gradient(*batch)
    theta = {k: v.detach().clone() for k, v in learner.method.meta_params(batch[0].shape[0], batch[0]).items()}
    gen = torch.Generator().manual_seed(1)
    eps = 1e-5
    for _ in range(3):
        d = {k: torch.randn(v.shape, generator=gen, dtype=v.dtype) for k, v in theta.items()}
        analytic = sum(float((grads[k] * d[k]).sum()) for k in grads)
        diffs = []
        for sgd in (False, True):
            plus = _meta_loss_by_hand(learner, batch, {k: theta[k] + eps * d[k] for k in theta}, sgd)
            minus = _meta_loss_by_hand(learner, batch, {k: theta[k] - eps * d[k] for k in theta}, sgd)
            diffs.append((plus - minus) / (2 * eps))
        adam_fd, sgd_fd = diffs
        assert abs(adam_fd - analytic) / max(abs(analytic), 1e-12) < 1e-4, (adam_fd, analytic)
        # the guard (a test that can fail): the plain SGD step at the same lr gives another derivative
        assert abs(sgd_fd - analytic) > 0.5 * abs(analytic), (sgd_fd, analytic)


@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_every_engine_uses_the_same_preconditioned_step(engine):
    """Each engine's meta gradient under AdamW equals exact's for the same layers."""
    ref = _adam_learner(_staged)
    batch = make_batches(seed=3, size=8)
    layers = ["layer3_0", "fc"] if engine != "block" else ["fc"]
    want = ref.meta_gradient(*batch, layers=layers)
    other = famus.MetaLearner(ref.model, ref.optimizer, "mwnet", engine, engine_options=ENGINE_OPTS.get(engine, {}))
    other.meta_model.load_state_dict(ref.meta_model.state_dict())
    got = other.meta_gradient(*batch, layers=layers)
    assert _rel(got, want) <= ENGINE_TOL[engine]
    assert _rel(ref.meta_gradient(*batch, layers=layers, meta_grad="exact"), want) == 0.0


@pytest.mark.parametrize("engine", engines(policy=FaMUS, backend=FORWARD))
def test_famus_sampler_gradients_under_adam_equal_famus_over_exact(engine):
    """The gates' straight-through gradients use the elementwise step too (``<P * V, g>``)."""
    opts = {"candidates": "all", "lambda_g": 0.1, "k": 2.5}
    ref = _adam_learner(_staged, "mwnet", "famus", steps=2, seed=3, engine_options=opts)  # AdamW state, samplers
    other = famus.MetaLearner(ref.model, ref.optimizer, "mwnet", engine, seed=3, engine_options=opts)
    other.bind(make_batches(size=8)[0])
    other.meta_model.load_state_dict(ref.meta_model.state_dict())
    other.engine.load_state_dict(ref.engine.state_dict())
    other.generator.set_state(ref.generator.get_state())  # the same gates
    batch = make_batches(seed=3, size=8)
    want = ref.meta_gradient(*batch, include_samplers=True)
    got = other.meta_gradient(*batch, include_samplers=True)
    samplers = [k for k in want if k.startswith("sampler:")]
    assert samplers
    assert _rel({k: got[k] for k in want}, want) < (1e-10 if engine == "famus-jvp" else FD_RTOL)


def test_before_the_first_adam_step_the_virtual_step_is_sgd_at_lr():
    batch = make_batches()
    out = []
    for opt_cls in (torch.optim.AdamW, torch.optim.SGD):
        torch.manual_seed(0)
        model = TinyResNet().double()
        learner = famus.MetaLearner(model, opt_cls(model.parameters(), lr=0.05), "mwnet", "exact")
        out.append(learner.meta_gradient(*batch))
    for k in out[0]:
        assert torch.equal(out[0][k], out[1][k]), k


def test_other_optimizers_warn_once_and_step_as_sgd():
    torch.manual_seed(0)
    model = TinyResNet().double()
    batch = make_batches()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9))
        famus.MetaLearner(model, torch.optim.Adam(model.parameters(), lr=0.05))
        assert not [w for w in caught if "virtual step" in str(w.message)]
        opt = torch.optim.RMSprop(model.parameters(), lr=0.05)
        learner = famus.MetaLearner(model, opt)
        famus.MetaLearner(model, torch.optim.RMSprop(model.parameters(), lr=0.05))
    msgs = [str(w.message) for w in caught if "virtual step" in str(w.message)]
    assert len(msgs) == 1 and "RMSprop" in msgs[0] and "plain SGD" in msgs[0]
    learner.step(*batch)  # RMSprop now has state, but the virtual step stays SGD at lr
    sgd = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.05), "mwnet")
    sgd.meta_model.load_state_dict(learner.meta_model.state_dict())
    a, b = learner.meta_gradient(*batch, meta_grad="exact"), sgd.meta_gradient(*batch, meta_grad="exact")
    for k in a:
        assert torch.equal(a[k], b[k]), k
