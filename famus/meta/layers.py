"""The unit FaMUS samples: a module that owns parameters directly.

``layers(model)`` lists them in forward order; a :class:`LayerInfo` ties each
layer to the names of its parameters in ``model.named_parameters()``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from famus.meta.inputs import Inputs, call


@dataclass(frozen=True)
class LayerInfo:
    """One parameterised layer.

    Attributes:
        name: the module's qualified name in the model ("" for the root module).
        params: full names of the parameters it owns directly, as in ``named_parameters()``.
        sampler_dim: length of its Avg-Pooled gradient (``D_out`` of its first parameter).
        dims: ``D_out`` of each parameter in ``params`` (1 for a 0-d one): FaMUS's per-tensor gates.
    """

    name: str
    params: tuple[str, ...]
    sampler_dim: int
    dims: tuple[int, ...] = ()


def _owning_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    seen: set[int] = set()
    for mname, mod in model.named_modules():
        own = [p for p in mod.parameters(recurse=False) if p.requires_grad]
        if own and id(mod) not in seen:
            seen.add(id(mod))
            out.append((mname, mod))
    return out


def _forward_order(model: nn.Module, modules: list[tuple[str, nn.Module]], example: Inputs) -> list[str]:
    """Names of ``modules`` sorted by the first time each one runs on ``example``."""
    order: list[str] = []
    hooks = []
    for mname, mod in modules:

        def hook(_m, _inp, _out, mname=mname):
            if mname not in order:
                order.append(mname)

        hooks.append(mod.register_forward_hook(hook))
    # Run on cloned buffers without grad so the trace changes no BN statistics,
    # and on a forked RNG so dropout does not move the training stream.
    state = {n: b.clone() for n, b in model.named_buffers()}
    state.update(dict(model.named_parameters()))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            call(model, state, example)
    finally:
        for h in hooks:
            h.remove()
    # Modules never called keep registration order, after the called ones.
    return order + [m for m, _ in modules if m not in order]


def layer_infos(model: nn.Module, example: Inputs | None = None) -> list[LayerInfo]:
    """Parameterised layers of ``model`` with their parameter names.

    Args:
        model: any ``nn.Module``.
        example: optional input batch ``(B, ...)`` (or a tuple or dict of such tensors); when given,
            layers are sorted in the
            order the forward pass first uses them, else in registration order.
    """
    modules = _owning_modules(model)
    if not modules:
        raise ValueError(f"{type(model).__name__} has no trainable parameters; famus needs a model to train")
    names = [m for m, _ in modules]
    if example is not None:
        names = _forward_order(model, modules, example)
    by_name = dict(modules)
    param_name = {id(p): n for n, p in model.named_parameters()}
    infos = []
    for mname in names:
        mod = by_name[mname]
        own = dict(mod.named_parameters(recurse=False))
        kept = [p for p in own.values() if p.requires_grad and id(p) in param_name]
        full = tuple(param_name[id(p)] for p in kept)
        if not full:
            continue
        first = own.get("weight", next(iter(own.values())))
        dims = tuple(int(p.shape[0]) if p.dim() > 0 else 1 for p in kept)
        infos.append(LayerInfo(mname, full, int(first.shape[0]) if first.dim() > 0 else 1, dims))
    return infos


def layers(model: nn.Module, example: Inputs | None = None) -> list[str]:
    """The model's layers in forward order: modules that own parameters directly.

    Args:
        model: any ``nn.Module`` (conv, linear and norm layers are the usual layers).
        example: optional input batch ``(B, ...)`` (or a tuple or dict of tensors) used to trace the true forward order;
            without it, registration order is used (the same for ordinary models).

    Returns:
        Qualified module names, e.g. ``["conv1", "bn1", ..., "fc"]``.
    """
    return [info.name for info in layer_infos(model, example)]
