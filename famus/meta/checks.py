"""The learner's checks of what a user hands it, with messages in terms of the user's own objects.

- :func:`check_optimizer`: the optimizer must hold the model's trainable parameters (one built over
  another model never changes this one's weights).
- :func:`model_output`: the model is called once on the first examples of the user's batch; if it
  fails, the error names the user's batch shape, the layer that failed and, where it can tell, the fix
  (a missing channel dimension, channels last, a flatten, a dtype or a device).
- :func:`check_labels` and :func:`check_finite`: class indices within the model's class count, and
  no NaN or infinite input values.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import torch
from torch import Tensor, nn

from famus.meta import inputs as io

_CONV = {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}


def check_optimizer(model: nn.Module, optimizer: Any) -> None:
    """Refuse an optimizer that holds none of ``model``'s trainable parameters; warn if it holds only some."""
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    trainable = {id(p): n for n, p in model.named_parameters() if p.requires_grad}
    held = {id(p) for g in optimizer.param_groups for p in g["params"]}
    missing = [n for i, n in trainable.items() if i not in held]
    what = type(model).__name__
    if len(missing) == len(trainable):
        raise ValueError(f"the optimizer holds none of the {len(trainable)} trainable parameters of this {what} "
                         "(was it built over another model, or a copy of it?), so it would never change the "
                         f"model's weights; build it over this model: torch.optim.SGD(model.parameters(), lr=...)")
    if missing:
        names = ", ".join(missing[:3]) + (", ..." if len(missing) > 3 else "")
        warnings.warn(f"the optimizer holds {len(trainable) - len(missing)} of the {len(trainable)} trainable "
                      f"parameters of this {what}; the other {len(missing)} ({names}) move in the virtual step but "
                      "never in the actual one. Freeze them with requires_grad_(False), or give them to the "
                      "optimizer", UserWarning, stacklevel=3)


def model_output(model: nn.Module, state: dict[str, Tensor], x: io.Inputs, n: int = 2) -> Tensor:
    """``model`` on the first ``n`` examples of ``x`` (with ``state`` swapped in): the ``(n, C)`` logits.

    Raises:
        ValueError: the model failed on them, or returned no ``(n, C)`` logits; the message speaks of
            the user's whole batch ``x`` and, where it can tell, what to change.
    """
    example = io.head(x, n)
    try:
        raw = io.call(model, state, example)
    except Exception as e:  # whatever the model raises: torch errors are RuntimeErrors, user code anything
        raise ValueError(_call_failed(model, state, x, example, e)) from e
    out = io.logits_of(raw)
    rows = io.batch_size(example)
    if out.dim() != 2 or out.shape[0] != rows:
        why = "one row per example" if out.dim() == 2 else f"2-d, got {out.dim()}-d"
        raise ValueError(f"model(x) returned shape {tuple(out.shape)} for the first {rows} examples of your batch "
                         f"x of {io.describe(x)}; famus needs (n, C) logits, {why}"
                         + ("; does the model reshape the batch with view(-1, ...)? use x.flatten(1)"
                            if out.dim() == 2 else ""))
    return out


def _call_failed(model: nn.Module, state: dict[str, Tensor], x: io.Inputs, example: io.Inputs, err: Exception) -> str:
    """The message for a model that failed on ``example`` (the first examples of ``x``)."""
    name, layer, shape = _failing_layer(model, state, example)
    where = f" in layer {name or type(model).__name__} ({layer}, given shape {shape})" if layer is not None else ""
    text = " ".join(str(err).split())
    hint = _hint(model, x, layer, shape)
    return (f"model(x) failed for your batch x of {io.describe(x)}{where}: {type(err).__name__}: {text}"
            f" (famus first calls the model on the batch's first {io.batch_size(example)} examples)"
            + (f"; {hint}" if hint else ""))


def _failing_layer(model: nn.Module, state: dict[str, Tensor], example: io.Inputs
                   ) -> tuple[str, nn.Module | None, tuple[int, ...] | None]:
    """The innermost module the forward had entered when it failed, and the shape of its first input."""
    entered: list[tuple[str, nn.Module, tuple[int, ...] | None]] = []
    hooks = []
    for name, mod in model.named_modules():
        if next(mod.children(), None) is not None:
            continue  # leaves only: the layer that computes, not its container

        def pre(m, args, name=name):
            entered.append((name, m, tuple(args[0].shape) if args and isinstance(args[0], Tensor) else None))

        hooks.append(mod.register_forward_pre_hook(pre))
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            io.call(model, state, example)  # state's buffers are the caller's copies
    except Exception:
        if entered:
            return entered[-1]
    finally:
        for h in hooks:
            h.remove()
    return "", None, None


def _hint(model: nn.Module, x: io.Inputs, layer: nn.Module | None, shape: tuple[int, ...] | None) -> str:
    """What to change, where the input and the failing layer say it clearly; ``""`` otherwise."""
    ts = io.tensors(x)
    param = next(model.parameters(), None)
    if param is None or len(ts) != 1:
        return ""
    t = ts[0]
    if t.device != param.device:
        return f"x is on {t.device} and the model on {param.device}: move x with x.to({str(param.device)!r})"
    hint = _shape_hint(t, layer, shape) if layer is not None and shape is not None else ""
    if hint:
        return hint
    if not t.is_floating_point() and not any(isinstance(m, nn.Embedding) for m in model.modules()):
        return f"x is {t.dtype}; the model computes in {param.dtype}: convert with x.float()" + (
            " / 255" if t.dtype == torch.uint8 else "")
    if t.is_floating_point() and t.dtype != param.dtype:
        return f"x is {t.dtype} and the model's parameters {param.dtype}: convert x with x.to({param.dtype})"
    return ""


def _shape_hint(x: Tensor, layer: nn.Module, shape: tuple[int, ...]) -> str:
    """A shape mistake the failing ``layer`` (given ``shape``) shows, in terms of the user's ``x``."""
    first = tuple(x.shape[1:]) == shape[1:]  # the failing layer sees the user's input itself
    for kind, dims in _CONV.items():
        if not isinstance(layer, kind):
            continue
        c = layer.in_channels
        layout = f"(n, C{', L' if dims == 1 else ', H, W' if dims == 2 else ', D, H, W'})"
        if len(shape) == dims + 1 and first:
            fix = "x.unsqueeze(1)" if c == 1 else f"a dimension of {c} channels after the batch one"
            return f"a {kind.__name__} expects {layout} with C = {c}: add the channel dimension with {fix}"
        if len(shape) == dims + 2 and shape[1] != c:
            if first and dims == 2 and shape[-1] == c:
                return f"a Conv2d expects {layout} with C = {c}, and x looks channels-last: use x.permute(0, 3, 1, 2)"
            return f"the {kind.__name__} expects {c} input channels, its input has {shape[1]}"
    if isinstance(layer, nn.Linear) and shape[-1] != layer.in_features:
        k = layer.in_features
        if first and len(shape) > 2 and math.prod(shape[1:]) == k:
            return f"a Linear expects (n, {k}) features: flatten the examples with x.flatten(1)"
        if first:
            return f"the model's first Linear expects {k} features per example, x has {shape[-1]}"
        return (f"its Linear expects {k} features and gets {shape[-1]}: was the model built for inputs of "
                f"another size than x's {tuple(x.shape[1:])}?")
    return ""


def check_labels(y: Tensor, y_meta: Tensor, num_classes: int) -> None:
    """Class indices in ``[0, num_classes)`` (one host read); soft targets ``(n, C)`` are checked for ``C``."""
    c = num_classes
    if y.dim() == 2 and y.shape[1] != c:
        raise ValueError(f"your soft targets y have {y.shape[1]} columns but model(x) returns {c} classes")
    hard = [(name, t) for name, t in (("y", y), ("y_meta", y_meta)) if t.dim() == 1]
    bad = torch.stack([((t < 0) | (t >= c)).any() for _, t in hard]).cpu()
    for (name, t), b in zip(hard, bad.tolist()):
        if not b:
            continue
        wrong = t[(t < 0) | (t >= c)]
        lo, hi = int(t.min()), int(t.max())
        fix = ("; if they count from 1, subtract 1" if lo >= 1 and hi == c else
               f"; if there are {hi + 1} classes, give the model {hi + 1} outputs" if lo >= 0 else "")
        raise ValueError(f"labels out of range: {name} holds {wrong[:5].tolist()} but the model outputs {c} classes "
                         f"(labels 0..{c - 1}){fix}")


def check_finite(x: io.Inputs, name: str, refuse: bool = True) -> None:
    """Refuse (``refuse=False``: warn about) NaN or infinite values in ``x``'s floating-point tensors; one host read."""
    bad = io.nonfinite(x)
    if bad is None or not bool(bad):
        return
    n = io.batch_size(x)
    rows = torch.zeros(n, dtype=torch.bool, device=io.device_of(x))
    count = 0
    for t in io.tensors(x):
        if t.is_floating_point():
            wrong = ~torch.isfinite(t)
            count += int(wrong.sum())
            rows |= wrong.reshape(n, -1).any(1)
    what = (f"{name} holds {count} NaN or infinite values, in {int(rows.sum())} of the batch's {n} examples (the "
            f"first: example {int(rows.nonzero()[0, 0])})")
    if refuse:
        raise ValueError(f"{what}; they would make the loss NaN and the model's weights with it. Replace or drop "
                         "them before training (e.g. impute missing features)")
    warnings.warn(f"{what}; the meta gradient of such a batch is not finite, so its meta update is skipped "
                  "(counted in meta_skipped). Replace or drop them", UserWarning, stacklevel=4)
