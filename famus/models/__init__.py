"""The model zoo: plain ``nn.Module`` classifiers, each an ``nn.Sequential`` of stages.

Models know nothing about meta-learning (the meta step runs them through
:func:`torch.func.functional_call`).  Every zoo model is a
:class:`~famus.models.base.StagedNet`: its top-level children are the stages in
forward order (``stem``, residual blocks, ``head``, ``fc``), and the last one is
the ``nn.Linear`` classifier, so an engine can cache stage outputs and restart
the forward pass from the middle.

>>> model = build_model("resnet32", num_classes=10)
>>> model[-1]
Linear(in_features=64, out_features=10, bias=True)

``build_model`` also takes ``"package.module:function"`` for your own factory,
called as ``function(num_classes=..., in_channels=..., **kwargs)``, or with timm's
``in_chans=...`` when the factory takes that (e.g. ``"timm.models.resnet:resnet18"``).
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from famus.models.base import StagedNet, kaiming_init
from famus.models.blocks import BasicBlock, PadShortcut, PreActBlock, WideBasic
from famus.models.resnet import preact_resnet18, resnet_cifar, small_resnet
from famus.models.tiny import lenet, mlp
from famus.models.wrn import wide_resnet
from famus.registry import Registry, UnknownNameError

__all__ = [
    "MODELS",
    "BasicBlock",
    "ModelSpecError",
    "PadShortcut",
    "PreActBlock",
    "StagedNet",
    "WideBasic",
    "build_model",
    "kaiming_init",
    "lenet",
    "mlp",
    "preact_resnet18",
    "resnet_cifar",
    "small_resnet",
    "wide_resnet",
]

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")
"""Model factories, each called as ``factory(num_classes=..., in_channels=..., **kwargs)``."""


class ModelSpecError(ValueError):
    """A bad ``"package.module:function"`` model spec (bad form, import failure, not a model)."""


def _fixed(factory: ModelFactory, **fixed: Any) -> ModelFactory:
    """``factory`` with some keyword arguments pinned (passing them again is an error)."""

    def build(num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
        clash = sorted(set(fixed) & set(kwargs))
        if clash:
            raise TypeError(f"{factory.__name__}{fixed} does not take {', '.join(clash)}; it is fixed")
        return factory(num_classes=num_classes, in_channels=in_channels, **fixed, **kwargs)

    pinned = ", ".join(f"{k}={v!r}" for k, v in fixed.items())
    build.__name__ = f"{factory.__name__}_{'_'.join(str(v) for v in fixed.values())}"
    build.__doc__ = f"``{factory.__name__}({pinned}, ...)``.\n\n{factory.__doc__ or ''}"
    return build


MODELS.add("small-resnet", small_resnet)
MODELS.add("resnet", resnet_cifar)
for _depth in (20, 32, 44, 56, 110):
    MODELS.add(f"resnet{_depth}", _fixed(resnet_cifar, depth=_depth))
MODELS.add("preact-resnet18", preact_resnet18)
MODELS.add("wrn", wide_resnet)
MODELS.add("wrn-28-10", _fixed(wide_resnet, depth=28, widen_factor=10))
MODELS.add("wrn-40-2", _fixed(wide_resnet, depth=40, widen_factor=2))
MODELS.add("wrn-16-8", _fixed(wide_resnet, depth=16, widen_factor=8))
MODELS.add("lenet", lenet)
MODELS.add("mlp", mlp)


def _import_factory(spec: str) -> ModelFactory:
    """Resolve ``"package.module:function"`` (the attribute may be dotted: ``module:Class.make``)."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ModelSpecError(f"model spec {spec!r} must have the form 'package.module:function'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ModelSpecError(f"model {spec!r}: cannot import module {module_name!r} ({e})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ModelSpecError(
                f"model {spec!r}: module {module_name!r} has no attribute {attr!r}"
            ) from None
    if not callable(obj):
        raise ModelSpecError(f"model {spec!r}: {attr!r} is not callable (got {type(obj).__name__})")
    return obj


CHANNEL_KEYWORDS = ("in_channels", "in_chans")  # ours, and timm's


def _channel_keywords(fn: Callable[..., Any]) -> list[str | None]:
    """The keywords to pass the channel count under, in the order to try them (``None``: without one).

    A factory naming ``in_channels`` or timm's ``in_chans`` gets that one; one taking only ``**kwargs``
    (timm's model functions pass them on to the model class) or with an unknown signature is tried
    with ``in_channels``, then ``in_chans``, then without; one naming neither is called without.
    """
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return [*CHANNEL_KEYWORDS, None]
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    named = [k for k in CHANNEL_KEYWORDS if k in params and params[k].kind in kinds]
    if named:
        return named[:1]
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return [*CHANNEL_KEYWORDS, None]
    return [None]


def _call_user_factory(
    factory: ModelFactory, num_classes: int, in_channels: int, kwargs: dict[str, Any]
) -> nn.Module:
    """Call with the channel count under the keyword the factory takes (``in_channels`` or ``in_chans``).

    A keyword that fails with a ``TypeError`` naming it moves on to the next candidate; any other
    error is the factory's own and propagates. A channel keyword in ``kwargs`` is passed as given.
    """
    options = [None] if set(CHANNEL_KEYWORDS) & set(kwargs) else _channel_keywords(factory)
    *first, last = options  # None (no channel keyword) can only come last
    for key in first:
        try:
            return factory(num_classes=num_classes, **{key: in_channels}, **kwargs)
        except TypeError as e:
            if key not in str(e):
                raise
    return factory(num_classes=num_classes, **({} if last is None else {last: in_channels}), **kwargs)


def build_model(name: str, num_classes: int, in_channels: int = 3, **kwargs: Any) -> nn.Module:
    """Build a classifier by registry name or ``"package.module:function"`` spec.

    Args:
        name: a registered name (see ``MODELS.names()``: ``"resnet32"``, ``"wrn-28-10"``,
            ``"small-resnet"``, ...), or ``"package.module:function"`` naming your own factory,
            which is called as ``function(num_classes=..., in_channels=..., **kwargs)`` (timm-style
            factories get ``in_chans=...`` instead; without either if it takes neither) and must
            return an ``nn.Module``.
        num_classes: number of output logits.
        in_channels: input image channels (1 for MNIST-like data, 3 for CIFAR).
        **kwargs: extra factory arguments (e.g. ``depth``/``widen_factor``/``dropout`` for ``"wrn"``).

    Returns:
        A model mapping ``(B, in_channels, H, W)`` to ``(B, num_classes)`` logits. Zoo models are
        :class:`StagedNet` (``nn.Sequential`` ending in the ``nn.Linear`` classifier).

    Raises:
        UnknownNameError: unknown registry name (the message lists the valid names).
        ModelSpecError: a bad ``module:function`` spec, or a factory that returned no ``nn.Module``.
    """
    if not isinstance(name, str):
        raise TypeError(f"model name must be a string, got {type(name).__name__}")
    if ":" in name:
        model = _call_user_factory(_import_factory(name), num_classes, in_channels, kwargs)
    else:
        try:
            factory = MODELS.get(name)
        except UnknownNameError as e:
            raise UnknownNameError(f"{e}; or give your own factory as 'package.module:function'") from None
        model = factory(num_classes=num_classes, in_channels=in_channels, **kwargs)
    if not isinstance(model, nn.Module):
        raise ModelSpecError(f"model {name!r}: factory returned {type(model).__name__}, not an nn.Module")
    return model
