"""Model adapters: inputs that are tensors, tuples or dicts of tensors; outputs that are tensors or hold ``.logits``.

The learner and the engines never call a model with anything but these helpers, so any model whose
``forward`` takes one tensor ``model(x)``, several ``model(*x)`` (a tuple or list) or keywords
``model(**x)`` (a dict, e.g. Hugging Face's ``input_ids`` and ``attention_mask``) works, and any output
that is the ``(n, C)`` logits tensor or an object carrying them as ``.logits`` (or a mapping with a
``"logits"`` key). Every tensor of an input has the batch dimension first.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

# a model input: one tensor, a tuple/list of tensors (positional arguments), or a dict (keyword arguments)
Inputs = Tensor | tuple | list | dict


def tensors(x: Inputs) -> list[Tensor]:
    """The tensors of an input, in order (dict values in insertion order)."""
    if isinstance(x, Tensor):
        return [x]
    values = x.values() if isinstance(x, Mapping) else x
    return [v for v in values if isinstance(v, Tensor)]


def tree_map(fn: Callable[[Tensor], Tensor], x: Inputs) -> Inputs:
    """``fn`` on every tensor of ``x``, keeping its structure (other values pass through)."""
    if isinstance(x, Tensor):
        return fn(x)
    if isinstance(x, Mapping):
        return {k: fn(v) if isinstance(v, Tensor) else v for k, v in x.items()}
    return type(x)(fn(v) if isinstance(v, Tensor) else v for v in x)


def check(x: Any, name: str) -> int:
    """Raise unless ``x`` is a usable input; returns its batch size (the shared first dimension)."""
    if isinstance(x, Tensor):
        if x.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension first, got a 0-d tensor")
        return x.shape[0]
    if not isinstance(x, (tuple, list, Mapping)):
        raise TypeError(f"{name} must be a torch.Tensor, a tuple of tensors or a dict of tensors, "
                        f"got {type(x).__name__}")
    ts = tensors(x)
    if not ts:
        raise TypeError(f"{name} holds no tensor")
    sizes = {t.shape[0] if t.dim() else None for t in ts}
    if len(sizes) != 1 or None in sizes:
        raise ValueError(f"every tensor of {name} needs the same batch dimension first, got first dimensions "
                         f"{[tuple(t.shape[:1]) for t in ts]}")
    return ts[0].shape[0]


def batch_size(x: Inputs) -> int:
    """``n``: the first dimension of the input's tensors."""
    return tensors(x)[0].shape[0]


def device_of(x: Inputs) -> torch.device:
    """The device of the input's first tensor."""
    return tensors(x)[0].device


def head(x: Inputs, n: int) -> Inputs:
    """The first ``n`` examples of ``x``."""
    return tree_map(lambda t: t[:n], x)


def version(x: Inputs) -> tuple[int, ...]:
    """The version counters of the input's tensors (to detect a later in-place change)."""
    return tuple(t._version for t in tensors(x))


def logits_of(out: Any) -> Tensor:
    """The ``(n, C)`` logits of a model output: the tensor itself, ``out.logits`` or ``out["logits"]``."""
    if isinstance(out, Tensor):
        return out
    if isinstance(out, Mapping) and "logits" in out:
        return out["logits"]
    logits = getattr(out, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    raise TypeError(f"the model returned {type(out).__name__}; famus needs the (n, C) logits as a tensor, "
                    "as .logits or under the key 'logits'")


def call(module: nn.Module, state: dict[str, Tensor] | None, x: Inputs) -> Any:
    """``module(x)`` / ``module(*x)`` / ``module(**x)``, with ``state`` swapped in when given (raw output)."""
    args, kwargs = ((), dict(x)) if isinstance(x, Mapping) else ((tuple(x), {}) if isinstance(x, (tuple, list))
                                                                  else ((x,), {}))
    if state is None:
        return module(*args, **kwargs)
    return functional_call(module, state, args, kwargs)


def forward(model: nn.Module, state: dict[str, Tensor] | None, x: Inputs) -> Tensor:
    """The model's ``(n, C)`` logits on ``x`` (with ``state`` swapped in when given)."""
    return logits_of(call(model, state, x))


def describe(x: Inputs) -> str:
    """The input's shapes, for messages: ``"shape (100, 28, 28)"``, ``"shapes (8, 16) and (8, 16)"`` (a tuple),
    ``"shapes input_ids (8, 16), attention_mask (8, 16)"`` (a dict)."""
    if isinstance(x, Tensor):
        return f"shape {tuple(x.shape)}"
    if isinstance(x, Mapping):
        return "shapes " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in x.items() if isinstance(v, Tensor))
    return "shapes " + " and ".join(str(tuple(t.shape)) for t in tensors(x))


def nonfinite(x: Inputs) -> Tensor | None:
    """0-d bool on the input's device: some value of a floating-point tensor of ``x`` is NaN or infinite
    (no host sync); ``None`` when ``x`` holds no floating-point tensor."""
    flags = [~torch.isfinite(t).all() for t in tensors(x) if t.is_floating_point()]
    if not flags:
        return None
    return flags[0] if len(flags) == 1 else torch.stack(flags).any()
