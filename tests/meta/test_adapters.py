"""Model adapters: dict and tuple inputs, outputs with ``.logits`` (a Hugging Face-style model, no transformers)."""

import pytest
import torch
from torch import nn

import famus
from famus.meta import inputs as io

from .conftest import FORWARD, engines
from .hf_model import TinyTextClassifier, text_batch

ENGINE_OPTS = {
    "auto": {},
    "exact": {}, "famus": {}, "random": {"s": 2}, "block": {"layers": ["mlp", "classifier"]},
    "jvp": {}, "fd": {}, "famus-jvp": {}, "famus-fd": {},
}
METHOD_OPTS = {"mwnet": {}, "l2r": {}, "mlc": {"num_classes": 3}}


def _rows(x: dict, sl: slice) -> dict:
    return {k: v[sl] for k, v in x.items()}


@pytest.mark.parametrize("method", sorted(METHOD_OPTS))
@pytest.mark.parametrize("engine", sorted(ENGINE_OPTS))
def test_dict_input_model_trains_with_every_method_and_engine(method, engine):
    assert set(ENGINE_OPTS) == set(famus.ENGINES.names())
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)
    model = TinyTextClassifier()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    learner = famus.MetaLearner(model, opt, method, engine, method_options=METHOD_OPTS[method],
                                engine_options=ENGINE_OPTS[engine])
    xt, yt = text_batch(256, gen)
    xm, ym = text_batch(30, gen)

    def acc():
        with torch.no_grad():
            return float((model(**xt).logits.argmax(1) == yt).float().mean())

    start = acc()
    for i in range(40):
        sl = slice((i * 32) % 256, (i * 32) % 256 + 32)
        stats = learner.step(_rows(xt, sl), yt[sl], xm, ym)
        assert torch.isfinite(stats.train_loss) and torch.isfinite(stats.meta_loss)
    assert learner.reused_forward
    assert acc() > max(start + 0.2, 0.7)


class TwoInputNet(nn.Module):
    """``forward(image, extra)``: a tuple input, plain logits out."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.extra = nn.Linear(2, 4)
        self.fc = nn.Linear(4, 3)

    def forward(self, image, extra):
        h = torch.relu(self.bn(self.conv(image))).mean((2, 3))
        return self.fc(h + self.extra(extra))


class AsDict(nn.Module):
    """The same net called with keywords, returning ``{"logits": ...}``."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, image, extra):
        return {"logits": self.net(image, extra)}


def _two_input_batches(dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(6, 1, 5, 5, generator=g, dtype=dtype), torch.randn(6, 2, generator=g, dtype=dtype))
    xm = (torch.randn(5, 1, 5, 5, generator=g, dtype=dtype), torch.randn(5, 2, generator=g, dtype=dtype))
    return x, torch.randint(0, 3, (6,), generator=g), xm, torch.randint(0, 3, (5,), generator=g)


@pytest.mark.parametrize("engine", engines(backend=FORWARD))
def test_tuple_and_dict_inputs_give_the_exact_meta_gradient(engine):
    """A tuple input and the same model called with a dict (output ``{"logits"}``) agree with exact."""
    torch.manual_seed(0)
    net = TwoInputNet().double()
    x, y, xm, ym = _two_input_batches()
    for model, xs, xms in ((net, x, xm), (AsDict(net), dict(zip(("image", "extra"), x)),
                                          dict(zip(("image", "extra"), xm)))):
        learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.5), "mwnet", engine)
        layers = famus.layers(model, xs)  # every layer, in forward order
        assert [n.removeprefix("net.") for n in layers] == ["conv", "bn", "extra", "fc"]
        exact = learner.meta_gradient(xs, y, xms, ym, meta_grad="exact", layers=layers)
        got = learner.meta_gradient(xs, y, xms, ym, layers=layers)
        for k in exact:
            torch.testing.assert_close(got[k], exact[k], rtol=1e-6, atol=1e-12, msg=k)
        stats = learner.step(xs, y, xms, ym)
        assert learner.reused_forward and stats.weights.shape == (6,)


def test_bad_inputs_fail_clearly():
    torch.manual_seed(0)
    model = TinyTextClassifier()
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = text_batch(8, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="same batch dimension first"):
        learner.step({"input_ids": x["input_ids"], "attention_mask": x["attention_mask"][:5]}, y, x, y)
    with pytest.raises(TypeError, match="tuple of tensors or a dict of tensors"):
        learner.step("text", y, x, y)
    with pytest.raises(ValueError, match="inputs have 8 examples but labels have 7"):
        learner.step(x, y[:7], x, y)
    with pytest.raises(TypeError, match=r"\.logits"):
        io.logits_of(("not", "logits"))
