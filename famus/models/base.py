"""The common shape of every famus model: an ``nn.Sequential`` of stages.

Models know nothing about meta-learning.  A meta-gradient engine runs them with
:func:`torch.func.functional_call` on parameter dicts, and may cache the output
of any top-level child (a *stage*) and restart the forward pass from there.  So
every model is a :class:`StagedNet`: an ``nn.Sequential`` subclass whose children
are the stages in forward order, ending with the ``nn.Linear`` classifier, which
is also the last parameterised layer.  ``model(x)`` is the usual
``nn.Sequential`` forward.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn


class StagedNet(nn.Sequential):
    """An ``nn.Sequential`` of named stages whose last child is the ``nn.Linear`` classifier.

    Args:
        stages: ``name -> module`` in forward order; the last one must be an ``nn.Linear``.

    Input ``(B, *)`` (whatever the first stage takes); output ``(B, num_classes)`` logits.
    """

    def __init__(self, stages: OrderedDict[str, nn.Module]) -> None:
        super().__init__(stages)
        if len(self) == 0 or not isinstance(self[-1], nn.Linear):
            raise TypeError(f"{type(self).__name__}: the last stage must be an nn.Linear classifier")

    @property
    def classifier(self) -> nn.Linear:
        """The final ``nn.Linear`` (``feature_dim -> num_classes``)."""
        return self[-1]

    @property
    def feature_dim(self) -> int:
        """Width of the features fed to the classifier."""
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        """Number of output logits."""
        return self.classifier.out_features

    def stage_names(self) -> list[str]:
        """Names of the top-level children in forward order (``"stem"``, ..., ``"fc"``)."""
        return [name for name, _ in self.named_children()]

    def forward_stages(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run stages ``start .. stop-1`` only (``stop=None`` runs to the end).

        ``x`` is the input of stage ``start``; the result is the output of stage ``stop-1``,
        e.g. ``forward_stages(x, 0, -1)`` gives the ``(B, feature_dim)`` features.
        """
        for stage in list(self)[start:stop]:
            x = stage(x)
        return x


def kaiming_init(model: nn.Module) -> nn.Module:
    """Standard Kaiming initialisation, in place; returns ``model``.

    Conv weights: ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``; BatchNorm:
    weight 1, bias 0; Linear weights: ``kaiming_normal_`` (fan-in), bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d | nn.GroupNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def pool_head() -> nn.Sequential:
    """Global average pooling + flatten: ``(B, C, H, W) -> (B, C)``."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())


def preact_head(channels: int) -> nn.Sequential:
    """Final BN + ReLU of a pre-activation net, then pooling: ``(B, C, H, W) -> (B, C)``."""
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
