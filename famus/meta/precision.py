"""Mixed precision: what the meta step keeps in full precision under the user's ``torch.autocast``.

Under autocast (bfloat16 or float16) the model's forward and backward passes run in low precision,
as the user asked. These stay in the parameters' precision (float32 for a float32 model), with
autocast switched off around them:

- the method's losses, from logits upcast first: the per-example losses fed to the meta model, the
  meta model itself (MW-Net's MLP, MLC's transition matrix), the weighted sum and any regularizer;
- the meta loss ``L_c`` (cross-entropy on upcast logits) and FaMUS's ``L_g``;
- FaMUS's samplers and Gumbel gates (in bfloat16, ``1 - 1e-7`` rounds to 1 and the Gumbel noise
  becomes infinite: the samplers, then everything, turned NaN);
- the directional derivatives of the ``jvp`` and ``fd`` engines (a finite difference of bfloat16
  logits is rounding noise), re-run in full precision from the cached stage input.

The Virtual-Train gradient and ``w_hat`` are in the parameters' dtype anyway (autograd returns
gradients in the dtype of the leaves). Without autocast every helper here is the identity.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

LOW = (torch.float16, torch.bfloat16)


def master_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the meta step computes in for parameters of ``dtype``: float32 for 16-bit ones."""
    return torch.float32 if dtype in LOW else dtype


def autocast_on(device: torch.device) -> bool:
    """Whether autocast is active for ``device``'s type."""
    return torch.is_autocast_enabled(device.type)


def full_precision(device: torch.device) -> Any:
    """A context with autocast off for ``device`` (a no-op when it is off already)."""
    return torch.autocast(device.type, enabled=False) if autocast_on(device) else nullcontext()


def upcast(t: Tensor, dtype: torch.dtype) -> Tensor:
    """``t`` in ``master_dtype(dtype)`` when it is a 16-bit float tensor; else ``t`` itself."""
    return t.to(master_dtype(dtype)) if isinstance(t, Tensor) and t.dtype in LOW else t


def method_loss(method: Any, logits: Tensor, y: Tensor, theta: dict[str, Tensor],
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``method.loss`` (Virtual-Train) on ``(n, C)`` logits, in full precision."""
    with full_precision(logits.device):
        return method.loss(upcast(logits, dtype), y, theta)


def actual_loss(method: Any, logits: Tensor, y: Tensor, meta_grads: dict[str, Tensor],
                dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``method.actual_loss`` (Actual-Train) on ``(n, C)`` logits, in full precision."""
    with full_precision(logits.device):
        return method.actual_loss(upcast(logits, dtype), y, meta_grads)


def plain_loss(method: Any, logits: Tensor, y: Tensor, uniform: bool, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """``method.plain_loss`` (a step without a meta update) on ``(n, C)`` logits, in full precision."""
    with full_precision(logits.device):
        return method.plain_loss(upcast(logits, dtype), y, uniform)


def meta_ce(logits: Tensor, y: Tensor, dtype: torch.dtype) -> Tensor:
    """``L_c``: mean cross-entropy of ``(m, C)`` meta logits, in full precision."""
    with full_precision(logits.device):
        return F.cross_entropy(upcast(logits, dtype), y)
