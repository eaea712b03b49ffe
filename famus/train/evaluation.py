"""Accuracy of a run's networks on the test and validation splits, at each epoch's end.

A single network's record also holds the mean cross-entropy of each split (``test_loss``, ``val_loss``),
the validation per-class accuracy and, up to :data:`MAX_CONFUSION` classes, the confusion matrices
(``confusion``: ``{"test": [[...]], "val": [[...]]}``, rows the true class) that ``famus report`` shows.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from famus import distributed as dist
from famus.meta.inputs import logits_of
from famus.train.data import GROUPS, RunData


def group_accuracy(per_class: torch.Tensor, groups: dict[str, list[int]]) -> dict[str, float | None]:
    """Mean per-class test accuracy of each many/medium/few-shot group (``None`` for an empty group).

    The mean of per-class accuracies equals the group's accuracy on a class-balanced test set.
    """
    return {g: round(float(per_class[groups[g]].mean()), 6) if groups[g] else None for g in GROUPS}


def _split(data: RunData, split: str):
    return (data.test_x, data.test_y) if split == "test" else (data.val_x, data.val_y)


MAX_CONFUSION = 30  # classes up to which the epoch records hold confusion matrices


@torch.no_grad()
def split_stats(model: nn.Module, data: RunData, batch_size: int, split: str = "test") -> dict[str, Any] | None:
    """Accuracy, per-class accuracy ``(C,)``, mean cross-entropy and the confusion matrix ``(C, C)`` (rows: the
    true class, columns: the predicted one) on the ``test`` (or ``val``) split, in eval mode; ``None`` when the
    split is empty.

    With several processes each rank evaluates a contiguous part of the split (the ranks' models are
    identical) and the counts are summed over ranks.
    """
    xs, ys = _split(data, split)
    if ys is None or ys.numel() == 0:
        return None
    was = model.training
    model.eval()
    c = data.num_classes
    conf = torch.zeros(c * c, device=ys.device, dtype=torch.float64)
    loss = torch.zeros((), device=ys.device, dtype=torch.float64)
    n, w, r = xs.shape[0], dist.world_size(), dist.rank()
    for i in range(n * r // w, n * (r + 1) // w, batch_size):
        end = min(i + batch_size, n * (r + 1) // w)
        y = ys[i:end]
        logits = logits_of(model(data.augmenter.normalize(xs[i:end]))).float()
        conf += torch.bincount(y * c + logits.argmax(1), minlength=c * c).double()
        loss += F.cross_entropy(logits, y, reduction="sum").double()
    conf, loss = dist.sum_over_ranks([conf, loss])
    model.train(was)
    conf = conf.reshape(c, c).cpu()
    correct = conf.diagonal()
    counts = conf.sum(1).clamp(min=1)
    return {"acc": float(correct.sum() / ys.numel()), "per_class": (correct / counts).float(),
            "loss": float(loss) / ys.numel(), "confusion": conf.long()}


def evaluate(model: nn.Module, data: RunData, batch_size: int,
             split: str = "test") -> tuple[float | None, torch.Tensor | None]:
    """Accuracy and per-class accuracy ``(C,)`` on the ``test`` (or ``val``) split (:func:`split_stats`);
    ``(None, None)`` when the split is empty."""
    s = split_stats(model, data, batch_size, split)
    return (None, None) if s is None else (s["acc"], s["per_class"])


@torch.no_grad()
def ensemble_accuracies(models: list[nn.Module], data: RunData, batch_size: int, split: str = "test") -> list:
    """Accuracy of each model on the ``test`` (or ``val``) split, then of their ensemble (mean logits); one
    pass per model. ``None`` for each when the split is empty."""
    xs, ys = _split(data, split)
    if ys is None or ys.numel() == 0:
        return [None] * (len(models) + 1)
    for m in models:
        m.eval()
    correct = torch.zeros(len(models) + 1, dtype=torch.long)
    for i in range(0, xs.shape[0], batch_size):
        x = data.augmenter.normalize(xs[i : i + batch_size])
        y = ys[i : i + batch_size]
        logits = [logits_of(m(x)) for m in models]
        logits.append(sum(logits) / len(models))
        correct += torch.stack([(z.argmax(1) == y).sum().cpu() for z in logits])
    for m in models:
        m.train()
    return (correct.double() / ys.numel()).tolist()


def evaluate_models(models: list[nn.Module], data: RunData, batch_size: int,
                    groups: dict[str, list[int]] | None = None, group_rule: str | None = None) -> dict[str, Any]:
    """The epoch record's accuracies: ``test_acc`` and ``val_acc`` (of the ensemble when there are several
    models, then also ``test_acc_net1``, ...), per-class and group accuracies of a single model."""
    if len(models) > 1:
        *each, test = ensemble_accuracies(models, data, batch_size)
        val = ensemble_accuracies(models, data, batch_size, "val")[-1]
        return {"test_acc": test, "val_acc": val, **{f"test_acc_net{k + 1}": a for k, a in enumerate(each)}}
    test, val = (split_stats(models[0], data, batch_size, s) for s in ("test", "val"))
    out: dict[str, Any] = {"test_acc": test and test["acc"], "val_acc": val and val["acc"]}
    confusion = {}
    for name, s in (("test", test), ("val", val)):
        if s is None:
            continue
        out[f"{name}_loss"] = round(s["loss"], 6)
        if data.num_classes <= MAX_CONFUSION:  # (famus report: the chosen epoch's matrix)
            confusion[name] = s["confusion"].tolist()
    if test is not None:
        out["per_class_acc"] = [round(float(a), 6) for a in test["per_class"]]
        if groups is not None:
            out.update(group_acc=group_accuracy(test["per_class"], groups), group_rule=group_rule)
    if val is not None:
        out["val_per_class_acc"] = [round(float(a), 6) for a in val["per_class"]]
    if confusion:
        out["confusion"] = confusion
    return out
