"""A plain torch model trains with every method and engine; bad input fails clearly."""

import pytest
import torch
from torch import nn

import famus
from famus.registry import UnknownNameError

from .conftest import methods


class PlainResNet(nn.Module):
    """A ResNet-style net with BN and residual connections; no famus import involved."""

    def __init__(self, classes=3):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                                   nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8))
        self.head = nn.Linear(8, classes)

    def forward(self, x):
        h = self.stem(x)
        h = torch.relu(h + self.block(h))
        return self.head(h.mean((2, 3)))


def _data(n, gen):
    y = torch.randint(0, 3, (n,), generator=gen)
    x = torch.randn(n, 1, 6, 6, generator=gen) * 0.5 + y.view(-1, 1, 1, 1).float() - 1
    return x, y


ENGINE_OPTS = {
    "auto": {},
    "exact": {}, "famus": {}, "random": {"s": 2}, "block": {"layers": ["block", "head"]},
    "jvp": {}, "fd": {}, "famus-jvp": {}, "famus-fd": {},
}


@pytest.mark.parametrize("method", methods())
@pytest.mark.parametrize("engine", sorted(ENGINE_OPTS))
def test_plain_model_trains_with_every_method_and_engine(method, engine):
    assert set(ENGINE_OPTS) == set(famus.ENGINES.names())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = PlainResNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learner = famus.MetaLearner(model, opt, method, engine, engine_options=ENGINE_OPTS[engine])
    xt, yt = _data(256, gen)
    xm, ym = _data(30, gen)

    def acc():
        model.eval()
        with torch.no_grad():
            a = float((model(xt).argmax(1) == yt).float().mean())
        model.train()
        return a

    start = acc()
    for i in range(25):
        sl = slice((i * 32) % 256, (i * 32) % 256 + 32)
        stats = learner.step(xt[sl], yt[sl], xm, ym)
        assert torch.isfinite(stats.train_loss) and torch.isfinite(stats.meta_loss)
        assert set(stats.times) == set(famus.meta.STAGES)
    assert acc() > max(start, 0.6)


def _setup():
    torch.manual_seed(0)
    model = PlainResNet()
    gen = torch.Generator().manual_seed(0)
    x, y = _data(8, gen)
    return model, torch.optim.SGD(model.parameters(), lr=0.1), (x, y, x[:4], y[:4])


def test_mismatched_batch_sizes():
    model, opt, (x, y, xm, ym) = _setup()
    learner = famus.MetaLearner(model, opt)
    with pytest.raises(ValueError, match="inputs have 8 examples but labels have 7"):
        learner.step(x, y[:7], xm, ym)
    with pytest.raises(ValueError, match="mismatched meta batch"):
        learner.meta_gradient(x, y, xm, ym[:3])


def test_labels_out_of_range():
    model, opt, (x, y, xm, ym) = _setup()
    learner = famus.MetaLearner(model, opt)
    bad = y.clone()
    bad[0] = 7
    with pytest.raises(ValueError, match=r"labels out of range.*7.*3 classes"):
        learner.step(x, bad, xm, ym)
    with pytest.raises(ValueError, match="out of range"):
        learner.meta_loss(x, y, xm, -ym - 1)
    with pytest.raises(TypeError, match="int64"):
        learner.step(x, y.float(), xm, ym)


def test_model_with_no_parameters():
    with pytest.raises(ValueError, match="no trainable parameters"):
        famus.MetaLearner(nn.Flatten(), torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1))


def test_unknown_method_engine_and_option_list_valid_names():
    model, opt, _ = _setup()
    with pytest.raises(UnknownNameError, match=r"unknown method 'mw'.*l2r, .*mwnet"):
        famus.MetaLearner(model, opt, "mw")
    valid = "block, exact, famus, famus-fd, famus-jvp, fd, jvp, random"
    with pytest.raises(UnknownNameError, match=rf"unknown engine 'fast'.*{valid}"):
        famus.MetaLearner(model, opt, "mwnet", "fast")
    with pytest.raises(TypeError, match=r"unknown engine option\(s\) \['kk'\].*temperature"):
        famus.MetaLearner(model, opt, "mwnet", "famus", engine_options={"kk": 3})
    with pytest.raises(ValueError, match="unknown block entry 'nope'; valid layers"):
        famus.MetaLearner(model, opt, "mwnet", "block", engine_options={"layers": ["nope"]}).step(*_setup()[2])


def test_l2r_weights_are_normalized_and_nonnegative():
    model, opt, batch = _setup()
    stats = famus.MetaLearner(model, opt, "l2r").step(*batch)
    w = stats.weights
    assert (w >= 0).all()
    assert abs(float(w.sum()) - 1) < 1e-6 or float(w.sum()) == 0


def test_mwnet_normalization_switch():
    model, opt, batch = _setup()
    on = famus.MetaLearner(model, opt, "mwnet").step(*batch)
    assert abs(float(on.weights.sum()) - 1) < 1e-5
    off = famus.MetaLearner(model, opt, "mwnet", method_options={"normalize": False}).step(*batch)
    assert float(off.weights.sum()) < 1.0  # mean of sigmoid outputs / n... each in (0, 1/n)
    assert (off.weights > 0).all()
