"""The Virtual-Train step ``w_hat = w - P * g`` follows the base model's optimizer.

``P`` is one step size per parameter, the same for every engine (:attr:`MetaBatch.lrs`):

- SGD (any momentum, Nesterov, weight decay): ``P = lr``, the paper's virtual step (Eq. 3).
- Adam and AdamW: ``P = lr / (sqrt(v_hat) + eps)`` elementwise, with ``v_hat = v / (1 - beta2^t)`` the
  optimizer's current bias-corrected second moment (``exp_avg_sq``; ``max_exp_avg_sq`` with
  ``amsgrad``). ``v`` is held constant in theta: it is the state before this step, not updated with
  this step's gradient. The approximation: the virtual step is Adam's step with its first moment
  replaced by this batch's gradient ``g(theta)`` (no momentum, as the SGD virtual step has none) and
  its weight decay left out (it does not depend on theta). Before the optimizer's first step there
  is no ``v``: the virtual step is then plain SGD at ``lr`` (``P = lr``), for that one step.
- Any other optimizer: plain SGD at its learning rate, with a one-time warning.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor

_WARNED: set[type] = set()


def is_adam(optimizer: torch.optim.Optimizer) -> bool:
    """Adam or AdamW (the optimizers whose preconditioner the virtual step follows)."""
    return isinstance(optimizer, (torch.optim.Adam, torch.optim.AdamW))


def warn_if_unsupported(optimizer: torch.optim.Optimizer) -> None:
    """Once per optimizer class: a warning that the virtual step is plain SGD for it."""
    kind = type(optimizer)
    if isinstance(optimizer, torch.optim.SGD) or is_adam(optimizer) or kind in _WARNED:
        return
    _WARNED.add(kind)
    warnings.warn(
        f"famus follows SGD and Adam/AdamW in the virtual step; for {kind.__name__} it is plain SGD at its "
        "learning rate (w_hat = w - lr * g), so the meta gradient's scale may not match the real step",
        UserWarning,
        stacklevel=3,
    )


def adam_preconditioner(group: dict, state: dict) -> Tensor | None:
    """``lr / (sqrt(v_hat) + eps)`` for one Adam/AdamW parameter (same shape), or ``None`` before its first step.

    Args:
        group: the parameter's ``param_groups`` entry (``lr``, ``betas``, ``eps``, ``amsgrad``).
        state: its ``optimizer.state[p]`` (``step``, ``exp_avg_sq``, ``max_exp_avg_sq``).
    """
    v = state.get("max_exp_avg_sq" if group.get("amsgrad") else "exp_avg_sq")
    if v is None or "step" not in state:
        return None
    step = state["step"]
    beta2 = group["betas"][1]
    with torch.no_grad():
        # as torch.optim.Adam: denom = sqrt(v) / sqrt(1 - beta2^t) + eps. A tensor t stays a tensor (no host
        # sync); a 0-d one on the CPU (Adam's default) combines with v on any device without a copy.
        t = step.to(torch.float64) if torch.is_tensor(step) else torch.tensor(float(step), dtype=torch.float64)
        denom = v.sqrt() / (1 - beta2**t).sqrt() + group["eps"]
        return group["lr"] / denom


def step_sizes(optimizer: torch.optim.Optimizer, params: dict[str, Tensor]) -> dict[str, float | Tensor]:
    """Parameter name -> the virtual step's size: a number (``lr``) or a tensor of the parameter's shape.

    Args:
        optimizer: the base model's optimizer.
        params: name -> parameter (those not in the optimizer take its first group's ``lr``).
    """
    group_of = {id(p): g for g in optimizer.param_groups for p in g["params"]}
    adam = is_adam(optimizer)
    out: dict[str, float | Tensor] = {}
    for name, p in params.items():
        group = group_of.get(id(p), optimizer.param_groups[0])
        pre = adam_preconditioner(group, optimizer.state.get(p, {})) if adam and id(p) in group_of else None
        out[name] = group["lr"] if pre is None else pre
    return out
