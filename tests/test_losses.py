"""Per-example losses: LDAM margins and DRW, focal, class-balanced weights, GCE, SCE; MW-Net/L2R on top of them."""

import inspect
import math

import pytest
import torch
import torch.nn.functional as F

import famus
from famus.losses import LOSSES, build_loss, class_balanced_weights, ldam_margins
from famus.registry import UnknownNameError

from .meta.conftest import TinyResNet, make_batches
from .meta.test_exactness import _fd_check

COUNTS = torch.tensor([5000, 2997, 1796, 1077, 645, 387, 232, 139, 83, 50])  # CIFAR-10-LT, imbalance 100


def _batch(seed=0, n=12, c=10, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g, dtype=dtype) * 3, torch.randint(0, c, (n,), generator=g)


def test_ldam_margins_proportional_to_inverse_fourth_root_with_largest_max_m():
    m = ldam_margins(COUNTS, max_m=0.5)
    ratio = m * COUNTS.double() ** 0.25  # m_j = K / n_j^(1/4): the same K for every class
    torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio[0])))
    assert float(m.max()) == pytest.approx(0.5)
    assert int(m.argmax()) == int(COUNTS.argmin())  # the rarest class gets the largest margin
    assert torch.all(m[1:] >= m[:-1])  # fewer examples, larger margin
    # the paper's constant: K chosen so that max_j m_j = 0.5, i.e. K = 0.5 * n_min^(1/4)
    torch.testing.assert_close(ratio[0], torch.tensor(0.5 * 50**0.25, dtype=torch.float64))


def test_ldam_loss_is_ce_of_scaled_logits_with_margin_on_the_true_class():
    z, y = _batch()
    loss = build_loss("ldam", COUNTS, max_m=0.5, s=30.0)
    m = ldam_margins(COUNTS, 0.5)
    shifted = z.clone()
    shifted[torch.arange(len(y)), y] -= m[y]
    torch.testing.assert_close(loss(z, y), F.cross_entropy(30.0 * shifted, y, reduction="none"))


def test_ldam_deferred_reweighting_switches_on_at_its_epoch():
    z, y = _batch()
    loss = build_loss("ldam", COUNTS, s=1.0, drw_epoch=160, beta=0.9999)
    plain = loss.unweighted(z, y)
    for epoch in (0, 159):
        loss.set_epoch(epoch)
        assert loss.class_weights is None
        torch.testing.assert_close(loss(z, y), plain)
    loss.set_epoch(160)
    w = class_balanced_weights(COUNTS, 0.9999)
    torch.testing.assert_close(loss(z, y), w[y] * plain)
    never = build_loss("ldam", COUNTS, s=1.0)
    never.set_epoch(10_000)
    assert never.class_weights is None


def test_class_balanced_weights_effective_number():
    w = class_balanced_weights(COUNTS, 0.9999)
    raw = (1 - 0.9999) / (1 - 0.9999 ** COUNTS.double())
    torch.testing.assert_close(w, raw * 10 / raw.sum())
    assert float(w.sum()) == pytest.approx(10.0)
    assert torch.all(w[1:] >= w[:-1])
    torch.testing.assert_close(class_balanced_weights(COUNTS, 0.0), torch.ones(10, dtype=torch.float64))
    with pytest.raises(ValueError, match="beta"):
        class_balanced_weights(COUNTS, 1.0)


def test_cb_loss_weights_ce_or_focal():
    z, y = _batch()
    w = class_balanced_weights(COUNTS, 0.999)
    ce = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(build_loss("cb", COUNTS, beta=0.999)(z, y), w[y] * ce)
    p = torch.exp(-ce)
    focal = build_loss("cb", COUNTS, beta=0.999, base="focal", gamma=2.0)
    torch.testing.assert_close(focal(z, y), w[y] * (1 - p) ** 2 * ce)


def test_focal_loss():
    z, y = _batch()
    ce = F.cross_entropy(z, y, reduction="none")
    torch.testing.assert_close(build_loss("focal", COUNTS, gamma=0.0)(z, y), ce)
    p = torch.softmax(z, 1)[torch.arange(len(y)), y]
    torch.testing.assert_close(build_loss("focal", COUNTS, gamma=2.0)(z, y), (1 - p) ** 2 * ce)
    # gamma < 1 at a perfectly confident prediction: finite gradient, not nan
    zc = torch.tensor([[80.0, -80.0]], dtype=torch.float64, requires_grad=True)
    build_loss("focal", torch.tensor([5, 5]), gamma=0.5)(zc, torch.tensor([0])).sum().backward()
    assert torch.isfinite(zc.grad).all()


def test_ce_loss_and_registry_errors():
    z, y = _batch()
    torch.testing.assert_close(build_loss("ce", COUNTS)(z, y), F.cross_entropy(z, y, reduction="none"))
    assert set(LOSSES.names()) == {"ce", "cb", "focal", "ldam", "gce", "sce"}
    with pytest.raises(UnknownNameError, match="valid loss functions: cb, ce, focal, gce, ldam, sce"):
        build_loss("nope", COUNTS)
    with pytest.raises(TypeError, match="unknown option.*gama.*valid options: gamma"):
        build_loss("focal", COUNTS, gama=2)


# options that switch on each loss's non-default parts (every registered loss is tested; {} for the others)
NON_DEFAULT = {"focal": {"gamma": 2.0}, "cb": {"base": "focal"}, "ldam": {"s": 30.0, "drw_epoch": 0},
               "gce": {"q": 0.5}, "sce": {"alpha": 0.5, "beta": 2.0, "A": -6.0}}


@pytest.mark.parametrize("name", LOSSES.names())
def test_losses_support_forward_mode_and_double_backward(name):
    """The jvp/fd engines take forward-mode derivatives and differentiate grad_z l once more."""
    z, y = _batch()
    loss = build_loss(name, COUNTS, **NON_DEFAULT.get(name, {}))
    tangent = torch.randn_like(z)
    _, jvp = torch.func.jvp(lambda t: loss(t, y), (z,), (tangent,))
    zr = z.clone().requires_grad_()
    (g,) = torch.autograd.grad(loss(zr, y).sum(), zr, create_graph=True)
    torch.testing.assert_close(jvp, (g * tangent).sum(1))
    (h,) = torch.autograd.grad((g * tangent).sum(), zr)
    assert torch.isfinite(h).all()
    # and the forward-mode derivative is the loss's: a central difference in float64
    eps = 1e-6
    fd = (loss(z + eps * tangent, y) - loss(z - eps * tangent, y)) / (2 * eps)
    torch.testing.assert_close(jvp, fd, rtol=1e-6, atol=1e-8)


# logits log([1, 3]): p = (0.25, 0.75) exactly, so the expected values below are by hand from p
Z_QUARTER = torch.log(torch.tensor([[1.0, 3.0], [1.0, 3.0]], dtype=torch.float64))
Y_QUARTER = torch.tensor([0, 1])


def test_gce_values_by_hand():
    gce = build_loss("gce", COUNTS)
    assert gce.q == 0.7  # the paper's default
    expected = [(1 - 0.25**0.7) / 0.7, (1 - 0.75**0.7) / 0.7]
    torch.testing.assert_close(gce(Z_QUARTER, Y_QUARTER), torch.tensor(expected, dtype=torch.float64))
    # q = 1 is MAE on p_y; q -> 0 tends to cross-entropy; a uniform prediction over 2 classes at q = 0.5
    torch.testing.assert_close(build_loss("gce", COUNTS, q=1.0)(Z_QUARTER, Y_QUARTER),
                               torch.tensor([0.75, 0.25], dtype=torch.float64))
    torch.testing.assert_close(build_loss("gce", COUNTS, q=1e-6)(Z_QUARTER, Y_QUARTER),
                               torch.tensor([math.log(4), -math.log(0.75)], dtype=torch.float64), rtol=1e-5, atol=0)
    uniform = build_loss("gce", COUNTS, q=0.5)(torch.zeros(1, 2, dtype=torch.float64), torch.tensor([1]))
    torch.testing.assert_close(uniform, torch.tensor([2 * (1 - math.sqrt(0.5))], dtype=torch.float64))


def test_gce_gradient_is_ce_gradient_scaled_by_p_y_to_the_q():
    z, y = _batch()
    zr = z.clone().requires_grad_()
    (g,) = torch.autograd.grad(build_loss("gce", COUNTS, q=0.7)(zr, y).sum(), zr)
    zc = z.clone().requires_grad_()
    (g_ce,) = torch.autograd.grad(F.cross_entropy(zc, y, reduction="sum"), zc)
    p_y = torch.softmax(z, 1).gather(1, y.unsqueeze(1))
    torch.testing.assert_close(g, p_y**0.7 * g_ce)


def test_sce_values_by_hand_and_against_the_authors_clamped_form():
    sce = build_loss("sce", COUNTS)
    assert (sce.alpha, sce.beta, sce.A) == (0.1, 1.0, -4.0)  # the paper's CIFAR-10 values and A
    # y = 0: CE = ln 4, RCE = -A (1 - p_y) = 4 * 0.75; y = 1: CE = -ln 0.75, RCE = 4 * 0.25
    expected = [0.1 * math.log(4) + 3.0, 0.1 * -math.log(0.75) + 1.0]
    torch.testing.assert_close(sce(Z_QUARTER, Y_QUARTER), torch.tensor(expected, dtype=torch.float64))
    # the authors' code: -sum_k clamp(p_k, 1e-7, 1) log clamp(onehot_k, e^A, 1), plus alpha * CE
    z, y = _batch()
    for alpha, beta, a in ((0.1, 1.0, -4.0), (6.0, 0.1, -4.0), (0.0, 1.0, -9.0)):
        p = torch.softmax(z, 1).clamp(1e-7, 1.0)
        onehot = F.one_hot(y, z.shape[1]).to(z.dtype).clamp(math.exp(a), 1.0)
        reference = alpha * F.cross_entropy(z, y, reduction="none") + beta * -(p * onehot.log()).sum(1)
        got = build_loss("sce", COUNTS, alpha=alpha, beta=beta, A=a)(z, y)
        torch.testing.assert_close(got, reference, rtol=0, atol=z.shape[1] * 1e-7 * abs(a) * beta + 1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", ["gce", "sce"])
def test_robust_losses_have_finite_gradients_at_confident_predictions(name, dtype):
    """p_y -> 1 (label agrees) and p_y -> 0 (a confidently contradicted label, e.g. a noisy one)."""
    loss = build_loss(name, COUNTS)
    for big in (40.0, 1000.0):  # 1000: p_y underflows to exactly 0 or 1
        z = torch.tensor([[big, -big], [big, -big]], dtype=dtype, requires_grad=True)
        y = torch.tensor([0, 1])  # p_y -> 1, then p_y -> 0
        value = loss(z, y)
        (g,) = torch.autograd.grad(value.sum(), z)
        assert torch.isfinite(value).all() and torch.isfinite(g).all(), (big, value, g)
        _, jvp = torch.func.jvp(lambda t, y=y: loss(t, y), (z.detach(),), (torch.ones_like(z),))
        assert torch.isfinite(jvp).all()
    # bounded where CE is not: at p_y -> 0 GCE is 1/q and SCE's RCE part is -A
    z = torch.tensor([[1000.0, -1000.0]], dtype=dtype)
    bound = 1 / 0.7 if name == "gce" else 0.1 * 2000.0 + 4.0
    torch.testing.assert_close(loss(z, torch.tensor([1])), torch.tensor([bound], dtype=dtype))


@pytest.mark.parametrize("name,options,match", [
    ("gce", {"q": 0.0}, "q must be in"), ("gce", {"q": 1.5}, "q must be in"), ("gce", {"q": -0.7}, "q must be in"),
    ("sce", {"alpha": -0.1}, "alpha and beta"), ("sce", {"alpha": 0.0, "beta": 0.0}, "alpha and beta"),
    ("sce", {"A": 0.0}, "A"), ("sce", {"A": 4.0}, "A")])
def test_robust_loss_option_errors(name, options, match):
    with pytest.raises(ValueError, match=match):
        build_loss(name, COUNTS, **options)
    with pytest.raises(TypeError, match="unknown option.*k.*valid options"):
        build_loss(name, COUNTS, k=0.5)


def _meta_learner(method, engine="exact", loss_fn=None, engine_options=None):
    torch.manual_seed(0)
    model = TinyResNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return famus.MetaLearner(model, opt, method, engine, method_options={"loss_fn": loss_fn} if loss_fn else None,
                             engine_options=engine_options)


@pytest.mark.parametrize("name,options", [("ldam", {"s": 5.0, "drw_epoch": 0}), ("focal", {"gamma": 1.0}),
                                          ("gce", {"q": 0.7}), ("sce", {})])
def test_mwnet_on_a_per_example_loss_matches_central_differences(name, options):
    counts = torch.tensor([30, 8, 2])
    batch = make_batches()
    learner = _meta_learner("mwnet", loss_fn=build_loss(name, counts, **options))
    grads = learner.meta_gradient(*batch)
    theta = {k: v.detach().clone() for k, v in learner.meta_model.named_parameters()}
    _fd_check(learner, batch, theta, grads)
    # the per-example loss really is the one the meta model sees
    plain = _meta_learner("mwnet").meta_gradient(*batch)
    assert any(not torch.allclose(grads[k], plain[k]) for k in grads)


def test_l2r_on_ldam_matches_central_differences():
    batch = make_batches()
    learner = _meta_learner("l2r", loss_fn=build_loss("ldam", torch.tensor([30, 8, 2]), s=5.0))
    grads = learner.meta_gradient(*batch)
    # a small step: with s=5 the virtual step is large enough that a wider one crosses ReLU kinks
    _fd_check(learner, batch, {"eps": torch.zeros_like(grads["eps"])}, grads, eps=1e-6)


def _engine_options(engine):
    """Constructor options an engine cannot do without: ``block``'s layers (``""`` selects every layer)."""
    return {"layers": [""]} if "layers" in inspect.signature(famus.ENGINES.get(engine)).parameters else {}


def _is_finite_difference(engine):
    """Engines with a finite-difference step (``fd_eps``) match ``exact`` to ~1e-7 only."""
    return "fd_eps" in inspect.signature(famus.ENGINES.get(engine)).parameters


@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_every_engine_agrees_with_exact_on_ldam(engine):
    """With every layer contributing, each engine's meta gradient on LDAM is ``exact``'s."""
    batch = make_batches()
    learner = _meta_learner("mwnet", engine, loss_fn=build_loss("ldam", torch.tensor([30, 8, 2]), s=5.0),
                            engine_options=_engine_options(engine))
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    got = learner.meta_gradient(*batch, layers=famus.layers(learner.model))
    tol = 1e-6 if _is_finite_difference(engine) else 1e-9
    for k in exact:
        torch.testing.assert_close(got[k], exact[k], rtol=tol, atol=tol * float(exact[k].abs().max()))
