"""Mixed precision: under the user's bfloat16 autocast every engine stays finite and close to float32."""

import pytest
import torch

import famus
from famus.models import build_model

from .conftest import AllLayers, engines, make_batches
from .test_training import PlainResNet, _data

ENGINE_OPTS = {"block": {"layers": ["layer3_0", "fc"]}, "random": {"s": 2}}
METHOD_OPTS = {"mwnet": {}, "l2r": {}, "mlc": {"num_classes": 3}}
# ||g_bf16 - g_f32|| / ||exact f32 meta gradient||, same state and batch; measured at most 0.07
# (exact, jvp and fd: the full gradient; the restricted engines' pieces are smaller, so are their errors)
BF16_TOL = 0.15


def _norm(g: dict) -> float:
    return sum(float(v.norm() ** 2) for v in g.values()) ** 0.5


@pytest.mark.parametrize("method", sorted(METHOD_OPTS))
@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_bf16_meta_gradient_is_within_tolerance_of_float32(engine, method):
    torch.manual_seed(0)
    model = build_model("small-resnet", 3, in_channels=1, width=8)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learner = famus.MetaLearner(model, opt, method, engine, method_options=METHOD_OPTS[method],
                                engine_options=ENGINE_OPTS.get(engine, {}))
    for s in range(3):
        learner.step(*make_batches(seed=10 + s, n=32, m=16, size=8, dtype=torch.float32))
    batch = make_batches(seed=3, n=32, m=16, size=8, dtype=torch.float32)
    f32 = learner.meta_gradient(*batch)
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        b16 = learner.meta_gradient(*batch, include_samplers=True)
    assert all(torch.isfinite(v).all() for v in b16.values())
    assert all(v.dtype == torch.float32 for v in b16.values())
    err = _norm({k: b16[k] - f32[k] for k in f32})
    assert 0 < err < BF16_TOL * _norm(exact)  # > 0: the passes really ran in bfloat16
    if engine in engines(policy=AllLayers):  # the full gradient
        flat = [torch.cat([g[k].flatten() for k in f32]) for g in (b16, f32)]
        assert float(torch.nn.functional.cosine_similarity(*flat, dim=0)) > 0.99


@pytest.mark.parametrize("engine", famus.ENGINES.names())
def test_every_engine_trains_finite_under_bf16_autocast(engine):
    """The issue's case: 60 MW-Net steps under CPU bfloat16 autocast (famus went NaN at step ~40)."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = PlainResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    opts = {"block": {"layers": ["block", "head"]}, "random": {"s": 2}}.get(engine, {})
    learner = famus.MetaLearner(model, opt, "mwnet", engine, engine_options=opts)
    xt, yt = _data(256, gen)
    xm, ym = _data(30, gen)
    skipped = torch.zeros(())
    for i in range(60):
        sl = slice((i * 32) % 256, (i * 32) % 256 + 32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            stats = learner.step(xt[sl], yt[sl], xm, ym)
        skipped += stats.meta_skipped
        assert torch.isfinite(stats.train_loss) and torch.isfinite(stats.meta_loss)
    tensors = [*model.parameters(), *learner.meta_model.parameters(), *learner.engine.parameters()]
    assert all(torch.isfinite(t).all() for t in tensors)
    assert float(skipped) == 0.0
    assert all(p.dtype == torch.float32 for p in [*learner.meta_model.parameters(), *learner.engine.parameters()])
    model.eval()
    with torch.no_grad():
        assert float((model(xt).argmax(1) == yt).float().mean()) > 0.6


def test_own_loop_under_autocast_with_clipping_matches_step():
    """The README's loop under autocast: meta_update, loss on the reused logits, backward, clip, step."""
    learners = []
    for _ in range(2):
        torch.manual_seed(0)
        model = build_model("small-resnet", 3, in_channels=1, width=4)
        learners.append(famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "famus-fd"))
        torch.manual_seed(1)  # the same samplers
        learners[-1].bind(make_batches(size=8, dtype=torch.float32)[0])
    a, b = learners
    for s in range(3):
        x, y, xm, ym = make_batches(seed=s, n=16, m=8, size=8, dtype=torch.float32)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            a.step(x, y, xm, ym)
            update = b.meta_update(x, y, xm, ym)
            loss = update.loss(update.logits())
        assert loss.dtype == torch.float32
        b.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(b.model.parameters(), 1e9)  # no-op clip: the same step
        b.optimizer.step()
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
