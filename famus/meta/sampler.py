"""FaMUS's layer-wise gradient sampler (Eq. 8): FC - PReLU - FC - Gumbel-softmax (the authors': FC - PReLU twice)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class GradientSampler(nn.Module):
    """Maps a layer's pooled training gradient ``(D_out,)`` to two gate logits ``(2,)``.

    ``layers=2`` is the paper's FC(D_out, hidden) - PReLU - FC(hidden, 2); the authors' code has
    ``layers=3``: FC(D_out, hidden) - PReLU - FC(hidden, hidden) - PReLU - FC(hidden, 2). The linear
    layers are ``fc1 .. fc{layers}`` and the activations ``act``, ``act2``, ... (one PReLU each), so a
    two-layer sampler keeps the parameter names it always had (``fc1``, ``act``, ``fc2``).

    Args:
        dim: ``D_out`` of the gated parameter (the layer's first one when gating modules).
        hidden: hidden width (paper: 128).
        layers: number of linear layers, >= 2.
    """

    def __init__(self, dim: int, hidden: int = 128, layers: int = 2) -> None:
        super().__init__()
        if isinstance(layers, bool) or not isinstance(layers, int) or layers < 2:
            raise ValueError(f"sampler_layers must be an integer >= 2, got {layers!r}")
        self.layers = layers
        for j in range(1, layers + 1):  # registration order = the authors' (init draws in the same order)
            setattr(self, f"fc{j}", nn.Linear(dim if j == 1 else hidden, 2 if j == layers else hidden))
            if j < layers:
                setattr(self, "act" if j == 1 else f"act{j}", nn.PReLU())

    @property
    def out(self) -> nn.Linear:
        """The last linear layer (the gate logits)."""
        return getattr(self, f"fc{self.layers}")

    def forward(self, g: Tensor) -> Tensor:
        for j in range(1, self.layers):
            g = getattr(self, "act" if j == 1 else f"act{j}")(getattr(self, f"fc{j}")(g))
        return self.out(g)


def pooled_gradient(g: Tensor) -> Tensor:
    """Avg-Pool over every dimension but the first, then standardize (reference code).

    The authors' code sum-pools and divides by the unbiased std: after standardisation sum and mean
    pooling agree (but for the ``1e-9`` guard), and the unbiased std only scales the input by
    ``sqrt((D_out - 1) / D_out)`` (undefined for ``D_out = 1``, where this returns zeros).

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
