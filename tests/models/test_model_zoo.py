"""Every registered model: builds, trains one step, is a staged nn.Sequential, has the published size."""

from __future__ import annotations

import functools

import pytest
import torch
from torch import nn

from famus.models import MODELS, StagedNet, build_model

GRAY = {"small-resnet", "lenet", "mlp"}  # 28x28x1 models; the rest take 32x32x3
SMALL_KWARGS = {"wrn": {"depth": 10, "widen_factor": 1}, "resnet": {"depth": 8}}
HEAVY = {"wrn-28-10", "wrn-16-8", "preact-resnet18", "resnet110"}
# 36M parameters, over 4 s on 2 busy cores: left out of the quick run (pytest -m "not slow")
SLOW = {"wrn-28-10"}


def input_shape(name: str) -> tuple[int, int, int]:
    return (1, 28, 28) if name in GRAY else (3, 32, 32)


@functools.cache
def built(name: str, num_classes: int = 7) -> nn.Module:
    torch.manual_seed(0)
    return build_model(name, num_classes, in_channels=input_shape(name)[0], **SMALL_KWARGS.get(name, {}))


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in MODELS.names()])
def test_forward_backward_and_stages(name: str) -> None:
    model = built(name)
    batch = 2 if name in HEAVY else 3
    x = torch.randn(batch, *input_shape(name))

    model.train()
    model.zero_grad(set_to_none=True)
    out = model(x)
    assert out.shape == (batch, 7)
    out.logsumexp(1).sum().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"{name}: parameters without finite gradients: {missing}"

    # structure: an nn.Sequential of stages ending in the classifier, the last parameterised layer
    assert isinstance(model, nn.Sequential) and isinstance(model, StagedNet)
    assert isinstance(model[-1], nn.Linear) and model[-1].out_features == 7
    assert [n for n, _ in model.named_parameters()][-2:] == [
        f"{model.stage_names()[-1]}.weight",
        f"{model.stage_names()[-1]}.bias",
    ]
    model.eval()
    with torch.no_grad():
        expected = model(x)
        h = x
        for stage in model:
            h = stage(h)
        torch.testing.assert_close(h, expected)
        features = model.forward_stages(x, 0, -1)
        assert features.shape == (batch, model.feature_dim)
        torch.testing.assert_close(model.forward_stages(features, len(model) - 1), expected)


@pytest.mark.parametrize(
    ("name", "published"),
    [("resnet32", 0.464e6), ("wrn-28-10", 36.48e6), ("wrn-40-2", 2.24e6), ("preact-resnet18", 11.17e6)],
)
def test_published_parameter_counts(name: str, published: float) -> None:
    model = build_model(name, num_classes=10)
    count = sum(p.numel() for p in model.parameters())
    assert abs(count - published) / published < 0.02, f"{name}: {count} parameters, published {published:.0f}"


@pytest.mark.parametrize(("depth", "count"), [(20, 269_722), (32, 464_154), (44, 658_586), (56, 853_018)])
def test_resnet_depths(depth: int, count: int) -> None:
    model = build_model(f"resnet{depth}", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == count
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 1 == depth


def test_generic_names_take_architecture_kwargs() -> None:
    wrn = build_model("wrn", num_classes=10, depth=40, widen_factor=2)
    assert sum(p.numel() for p in wrn.parameters()) == sum(
        p.numel() for p in build_model("wrn-40-2", num_classes=10).parameters()
    )
    assert len(build_model("resnet", num_classes=10, depth=20)) == len(
        build_model("resnet20", num_classes=10)
    )
    with pytest.raises(TypeError, match="depth"):
        build_model("resnet32", num_classes=10, depth=20)


def test_functional_call_and_meta_style_restart() -> None:
    """The meta step runs models through torch.func.functional_call on parameter dicts."""
    model = built("small-resnet").eval()
    x = torch.randn(4, 1, 28, 28)
    params = {n: p.detach().clone().requires_grad_() for n, p in model.named_parameters()}
    out = torch.func.functional_call(model, params, (x,))
    torch.testing.assert_close(out, model(x))
    # restart from a cached stage output with only the later stages' parameters
    k = 3
    names = model.stage_names()
    cached = model.forward_stages(x, 0, k).detach()
    tail = {n: p for n, p in params.items() if n.split(".")[0] in names[k:]}
    out_tail = cached
    for i in range(k, len(model)):
        sub = {n.split(".", 1)[1]: p for n, p in tail.items() if n.split(".")[0] == names[i]}
        out_tail = torch.func.functional_call(model[i], sub, (out_tail,))
    torch.testing.assert_close(out_tail, out)
    out_tail.sum().backward()
    assert all(params[n].grad is not None for n in tail) and params["stem.0.weight"].grad is None


def test_wrn_dropout_and_in_channels() -> None:
    model = build_model("wrn", num_classes=5, in_channels=1, depth=10, widen_factor=2, dropout=0.3)
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3  # one per block
    x = torch.randn(2, 1, 32, 32)
    model.eval()
    torch.testing.assert_close(model(x), model(x))
    assert model(x).shape == (2, 5)


@pytest.mark.parametrize(("factory", "kwargs"), [("resnet", {"depth": 30}), ("wrn", {"depth": 27})])
def test_bad_depth(factory: str, kwargs: dict) -> None:
    with pytest.raises(ValueError, match="depth"):
        build_model(factory, num_classes=10, **kwargs)
