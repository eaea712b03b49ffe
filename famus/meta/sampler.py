"""FaMUS's layer-wise gradient sampler (Eq. 8): FC - PReLU - FC - Gumbel-softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradientSampler(nn.Module):
    """Maps a layer's pooled training gradient ``(D_out,)`` to two gate logits ``(2,)``.

    Args:
        dim: ``D_out`` of the layer's first parameter.
        hidden: hidden width (paper: 128).
    """

    def __init__(self, dim: int, hidden: int = 128) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.PReLU()
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, g: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(g)))


def pooled_gradient(g: Tensor) -> Tensor:
    """Avg-Pool over every dimension but the first, then standardize (reference code).

    Args:
        g: a parameter's gradient, e.g. conv ``(D_out, D_in, k, k)``, linear ``(D_out, D_in)``,
            bias or norm ``(D_out,)``.

    Returns:
        ``(D_out,)``, detached: the sampler's input carries no gradient.
    """
    g = g.detach()
    p = g.reshape(g.shape[0], -1).mean(1) if g.dim() >= 1 else g.reshape(1)
    return (p - p.mean()) / (p.std(unbiased=False) + 1e-9)


def gumbel_gates(logits: Tensor, uniform: Tensor, temperature: float) -> Tensor:
    """Hard Gumbel-softmax with a straight-through gradient.

    Args:
        logits: ``(L, 2)`` gate logits, index 1 = "on".
        uniform: ``(L, 2)`` U(0, 1) draws (from the learner's generator, for reproducibility).
        temperature: Gumbel-softmax temperature (reference code: 5).

    Returns:
        ``(L,)`` gates: exactly 0 or 1 in value, with the gradient of the soft probabilities.
    """
    tiny = torch.finfo(logits.dtype).tiny
    gumbel = -torch.log(-torch.log(uniform.clamp(tiny, 1.0 - 1e-7)))
    soft = F.softmax((logits + gumbel) / temperature, dim=-1)
    hard = F.one_hot(soft.argmax(-1), 2).to(soft.dtype)
    return (hard - soft.detach() + soft)[:, 1]
