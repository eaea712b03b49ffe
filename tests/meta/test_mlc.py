"""MLC: the corrected loss, an exact meta gradient, a transition matrix that stays stochastic, every engine."""

import pytest
import torch
import torch.nn.functional as F

import famus
from famus.meta.methods.mlc import MLC, corrected_nll, diagonal_logit

from .conftest import TinyResNet, make_batches
from .test_exactness import _fd_check

C = 3  # the tiny model's classes


def _learner(model, engine="exact", lr=0.5, **method_options):
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    engine_options = {"layers": ["conv3", "bn3", "fc"]} if engine == "block" else {}
    method_options = {"num_classes": C, **method_options}  # T exists from construction (else: from bind)
    return famus.MetaLearner(model, opt, "mlc", engine, method_options=method_options, engine_options=engine_options)


def _random_theta(seed=3):
    g = torch.Generator().manual_seed(seed)
    return {"T_logits": torch.randn(C, C, generator=g, dtype=torch.float64)}


def test_corrected_nll_is_minus_log_of_p_times_t():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(7, 4, generator=g, dtype=torch.float64)
    t_logits = torch.randn(4, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (7,), generator=g)
    q = torch.softmax(z, 1) @ torch.softmax(t_logits, 1)
    torch.testing.assert_close(corrected_nll(z, y, t_logits), -torch.log(q[torch.arange(7), y]))
    # identity T (up to float64 precision) is plain cross-entropy
    eye = torch.eye(4, dtype=torch.float64) * 60.0
    torch.testing.assert_close(corrected_nll(z, y, eye), F.cross_entropy(z, y, reduction="none"))
    # log space: no inf for a confident wrong prediction and a tiny transition probability
    assert torch.isfinite(corrected_nll(torch.tensor([[200.0, -200.0]]), torch.tensor([1]), torch.eye(2) * 50)).all()


def test_initial_transition_matrix_has_the_requested_diagonal():
    method = MLC(num_classes=10, init_diag=0.9)
    T = method.T
    torch.testing.assert_close(T.diagonal(), torch.full((10,), 0.9))
    torch.testing.assert_close(T.sum(1), torch.ones(10))
    assert diagonal_logit(10, 0.9) == pytest.approx(torch.log(torch.tensor(0.9 * 9 / 0.1)).item())


def test_mlc_takes_the_class_count_from_bind():
    model = TinyResNet()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mlc")
    assert learner.meta_model is None  # T is C x C: built when the learner knows the model
    learner.bind(make_batches(dtype=torch.float32)[0])
    assert learner.meta_model.T_logits.shape == (C, C) and learner.method.meta_optimizer is not None
    given = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mlc",
                              method_options={"num_classes": 5})
    with pytest.raises(ValueError, match="built for 5 classes but the model has 3"):
        given.bind(make_batches(dtype=torch.float32)[0])


def test_mlc_takes_no_loss_fn_but_a_regularizer():
    with pytest.raises(ValueError, match="own training loss.*cannot be combined"):
        MLC(loss_fn=lambda z, y: z.sum(1))
    assert not MLC.takes_loss_fn and famus.METHODS.get("mwnet").takes_loss_fn
    z, y = torch.randn(4, C, dtype=torch.float64), torch.tensor([0, 1, 2, 0])
    plain, with_reg = MLC(num_classes=C), MLC(num_classes=C, regularizer=lambda logits: logits.pow(2).sum())
    theta = {"T_logits": plain.meta_model.T_logits}
    torch.testing.assert_close(with_reg.loss(z, y, theta)[0], plain.loss(z, y, theta)[0] + z.pow(2).sum())


def test_exact_mlc_matches_central_differences(tiny):
    model, batch = tiny
    learner = _learner(model)
    grads = learner.meta_gradient(*batch)
    assert set(grads) == {"T_logits"} and grads["T_logits"].shape == (C, C)
    assert grads["T_logits"].abs().max() > 0
    theta = {"T_logits": learner.method.meta_model.T_logits.detach().clone()}
    _fd_check(learner, batch, theta, grads)


def test_exact_mlc_matches_central_differences_away_from_init(tiny):
    """Also at a generic (non-diagonal) T, where every entry of the gradient matters."""
    model, batch = tiny
    learner = _learner(model)
    theta = _random_theta()
    with torch.no_grad():
        learner.method.meta_model.T_logits.copy_(theta["T_logits"])
    grads = learner.meta_gradient(*batch)
    _fd_check(learner, batch, theta, grads, seed=4)


def test_transition_matrix_stays_row_stochastic_under_large_steps(tiny):
    model, batch = tiny
    learner = _learner(model, lr=0.1, meta_lr=50.0, meta_optimizer="sgd", meta_momentum=0.0)
    before = learner.method.T.clone()
    for _ in range(5):
        learner.step(*batch)
        T = learner.method.T
        assert (T >= 0).all() and (T <= 1).all()
        torch.testing.assert_close(T.sum(1), torch.ones(C, dtype=T.dtype), rtol=0, atol=1e-12)
    assert not torch.allclose(T, before)  # the meta step really moved it


def test_actual_step_uses_the_updated_matrix(tiny):
    model, batch = tiny
    x, y, xm, ym = batch
    learner = _learner(model, lr=0.0)  # alpha = 0: w does not move, so the loss shows which T was used
    stats = learner.step(*batch)
    T_logits = learner.method.meta_model.T_logits.detach()
    logits = model(x)
    torch.testing.assert_close(stats.train_loss, corrected_nll(logits, y, T_logits).mean())
    torch.testing.assert_close(stats.weights, torch.full((x.shape[0],), 1 / x.shape[0], dtype=torch.float64))


def _engines():
    return famus.ENGINES.names()


@pytest.mark.parametrize("engine", _engines())
def test_mlc_runs_with_every_engine(engine):
    torch.manual_seed(0)
    model = TinyResNet().double()
    batch = make_batches()
    learner = _learner(model, engine)
    for _ in range(2):
        stats = learner.step(*batch)
        assert torch.isfinite(stats.train_loss) and torch.isfinite(stats.meta_loss)
    torch.testing.assert_close(learner.method.T.sum(1), torch.ones(C, dtype=torch.float64))
    # with every layer contributing, each engine's gradient is the exact one
    exact = learner.meta_gradient(*batch, meta_grad="exact")["T_logits"]
    full = learner.meta_gradient(*batch, layers=famus.layers(model))["T_logits"]
    tol = 1e-6 if engine.endswith("fd") or engine == "auto" else 1e-9  # central differences in float64: O(h^2) error
    torch.testing.assert_close(full, exact, rtol=tol, atol=tol * float(exact.abs().max()))


def test_mlc_state_round_trip(tiny):
    model, batch = tiny
    learner = _learner(model)
    learner.step(*batch)
    state = learner.state_dict()
    other = _learner(TinyResNet().double())
    other.load_state_dict(state)
    torch.testing.assert_close(other.method.T, learner.method.T)
    a, b = learner.method.meta_optimizer.state_dict(), other.method.meta_optimizer.state_dict()
    assert a["state"].keys() == b["state"].keys()


def test_meta_gradient_and_meta_loss_change_no_state(tiny):
    model, batch = tiny
    learner = _learner(model, "famus")
    learner.step(*batch)
    param = learner.method.meta_model.T_logits
    T = param.detach().clone()
    opt_state = {k: v.clone() for k, v in learner.method.meta_optimizer.state[param].items() if torch.is_tensor(v)}
    learner.meta_gradient(*batch)
    learner.meta_loss(*batch, meta_params=_random_theta())
    assert torch.equal(param, T)
    for k, v in learner.method.meta_optimizer.state[param].items():
        if torch.is_tensor(v):
            assert torch.equal(v, opt_state[k]), k


def test_mlc_learns_the_pair_noise_direction():
    """Meta-learned T puts mass where the noise goes (k -> k+1), not on the other off-diagonal entries."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    classes, dim, n = 4, 8, 2000
    centers = torch.randn(classes, dim, generator=g) * 3
    clean = torch.randint(0, classes, (n,), generator=g)
    x = centers[clean] + torch.randn(n, dim, generator=g)
    flip = torch.rand(n, generator=g) < 0.4
    noisy = torch.where(flip, (clean + 1) % classes, clean)
    ym = torch.arange(classes).repeat(10)
    xm = centers[ym] + torch.randn(ym.numel(), dim, generator=g)
    model = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.ReLU(), torch.nn.Linear(32, classes))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learner = famus.MetaLearner(model, opt, "mlc", "exact", method_options={"meta_lr": 0.05})
    for _ in range(150):
        idx = torch.randint(0, n, (100,), generator=g)
        learner.step(x[idx], noisy[idx], xm, ym)
    T = learner.method.T
    pair = T[torch.arange(classes), (torch.arange(classes) + 1) % classes]
    other = T.clone()
    other[torch.arange(classes), torch.arange(classes)] = 0
    other[torch.arange(classes), (torch.arange(classes) + 1) % classes] = 0
    assert pair.mean() > 2 * other.sum(1).mean() / (classes - 2), T
    with torch.no_grad():
        acc = (model(xm).argmax(1) == ym).float().mean()
    assert acc > 0.9
