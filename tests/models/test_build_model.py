"""build_model: registry names, 'package.module:function' specs, and clear errors."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from famus.models import MODELS, ModelSpecError, build_model
from famus.registry import UnknownNameError

NOT_A_MODEL = 42


def my_factory(num_classes: int, in_channels: int = 3, hidden: int = 8) -> nn.Module:
    """A user model factory taking in_channels."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_channels * 4, hidden), nn.ReLU(), nn.Linear(hidden, num_classes)
    )


def no_channels_factory(num_classes: int) -> nn.Module:
    """A user model factory that does not take in_channels."""
    return nn.Sequential(nn.Flatten(), nn.Linear(12, num_classes))


def returns_tensor(num_classes: int, in_channels: int) -> torch.Tensor:
    return torch.zeros(num_classes, in_channels)


class Factories:
    @staticmethod
    def make(num_classes: int, **kwargs: object) -> nn.Module:
        return nn.Linear(3, num_classes)


class TimmStyleNet(nn.Module):
    """A timm-style model class: the channel count is ``in_chans``."""

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, width: int = 4) -> None:
        super().__init__()
        self.in_chans = in_chans
        self.net = nn.Sequential(nn.Conv2d(in_chans, width, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                                 nn.Linear(width, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def timm_style_factory(pretrained: bool = False, **kwargs: object) -> nn.Module:
    """Like ``timm.models.resnet.resnet18``: every option passed on to the model class."""
    assert not pretrained
    return TimmStyleNet(**kwargs)


def test_registered_names() -> None:
    expected = {
        "small-resnet",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "preact-resnet18",
        "wrn-28-10",
        "wrn-40-2",
        "wrn",
        "lenet",
        "mlp",
    }
    assert expected <= set(MODELS.names())


def test_user_factory_in_this_module() -> None:
    model = build_model(f"{__name__}:my_factory", num_classes=5, in_channels=1, hidden=16)
    assert model(torch.randn(2, 1, 2, 2)).shape == (2, 5)
    assert model[1].out_features == 16


def test_user_factory_without_in_channels() -> None:
    model = build_model(f"{__name__}:no_channels_factory", num_classes=4, in_channels=3)
    assert model(torch.randn(2, 3, 2, 2)).shape == (2, 4)


def test_dotted_attribute_and_var_kwargs() -> None:
    model = build_model(f"{__name__}:Factories.make", num_classes=6, in_channels=3)
    assert model.out_features == 6


@pytest.mark.parametrize("name", ["timm_style_factory", "TimmStyleNet"])
def test_timm_style_factories_get_in_chans(name: str) -> None:
    """A factory passing ``**kwargs`` on (timm's model functions) and a class naming ``in_chans``."""
    model = build_model(f"{__name__}:{name}", num_classes=5, in_channels=1, width=6)
    assert model.in_chans == 1 and model(torch.randn(2, 1, 4, 4)).shape == (2, 5)
    with pytest.raises(TypeError, match="bogus"):  # the factory's own errors still propagate
        build_model(f"{__name__}:{name}", num_classes=5, in_channels=1, bogus=1)


def test_spec_pointing_into_the_zoo() -> None:
    model = build_model("famus.models.resnet:small_resnet", num_classes=10, in_channels=1, width=8)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert model.stem[0].out_channels == 8


def test_spec_factory_errors_propagate() -> None:
    with pytest.raises(TypeError, match="bogus"):
        build_model(f"{__name__}:my_factory", num_classes=5, bogus=1)


@pytest.mark.parametrize(
    ("spec", "match"),
    [
        ("no_such_pkg_xyz.models:net", "cannot import module 'no_such_pkg_xyz.models'"),
        ("famus.models.resnet:no_such_fn", "has no attribute 'no_such_fn'"),
        (":small_resnet", "package.module:function"),
        ("famus.models.resnet:", "package.module:function"),
        ("a:b:c", "package.module:function"),
        (f"{__name__}:NOT_A_MODEL", "not callable"),
        (f"{__name__}:returns_tensor", "not an nn.Module"),
    ],
)
def test_bad_specs(spec: str, match: str) -> None:
    with pytest.raises(ModelSpecError, match=match):
        build_model(spec, num_classes=3)


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(UnknownNameError) as info:
        build_model("resnet-9000", num_classes=10)
    message = str(info.value)
    assert "resnet-9000" in message
    for name in ("resnet32", "wrn-28-10", "small-resnet", "preact-resnet18"):
        assert name in message
    assert "module:function" in message
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_non_string_name() -> None:
    with pytest.raises(TypeError):
        build_model(None, num_classes=10)  # type: ignore[arg-type]
