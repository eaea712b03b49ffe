"""A small Hugging Face-style text classifier, written without transformers (no dependency on it).

``forward(input_ids, attention_mask)`` returns an object with ``.logits``, as a
``transformers`` sequence classifier does; inputs come as a dict of ``(n, T)`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SequenceClassifierOutput:
    """The part of ``transformers.modeling_outputs.SequenceClassifierOutput`` famus reads."""

    logits: Tensor


class TinyTextClassifier(nn.Module):
    """Embedding, one pre-norm MLP block, masked mean pooling, linear classifier.

    Args:
        vocab: vocabulary size; token 0 is padding.
        dim: hidden width.
        classes: number of classes.
    """

    def __init__(self, vocab: int = 20, dim: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.classifier = nn.Linear(dim, classes)

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> SequenceClassifierOutput:
        """``input_ids``, ``attention_mask``: ``(n, T)`` int64; returns logits ``(n, C)`` in ``.logits``."""
        h = self.embed(input_ids)  # (n, T, D)
        h = h + self.mlp(self.norm(h))
        mask = attention_mask.unsqueeze(-1).to(h.dtype)  # (n, T, 1)
        pooled = (h * mask).sum(1) / mask.sum(1).clamp_min(1.0)  # (n, D)
        return SequenceClassifierOutput(logits=self.classifier(pooled))


def text_batch(n: int, gen: torch.Generator, vocab: int = 20, length: int = 6, classes: int = 3):
    """A learnable toy task: the label is the most frequent token class ``token % classes`` of a sequence.

    Returns:
        ``({"input_ids": (n, T), "attention_mask": (n, T)}, y (n,))``; padded positions hold token 0.
    """
    y = torch.randint(0, classes, (n,), generator=gen)
    ids = torch.randint(1, vocab, (n, length), generator=gen)
    signal = torch.rand(n, length, generator=gen) < 0.6
    base = (y.view(-1, 1) + classes * torch.randint(1, (vocab - 1) // classes, (n, length), generator=gen))
    ids = torch.where(signal, base.clamp(max=vocab - 1), ids)
    lengths = torch.randint(length // 2, length + 1, (n,), generator=gen)
    mask = (torch.arange(length).view(1, -1) < lengths.view(-1, 1)).long()
    return {"input_ids": ids * mask, "attention_mask": mask}, y
