"""Model selection without test labels: the epoch with the best validation accuracy.

The run's "chosen" model (``model_best.pt``) is the one of the epoch with the highest validation
accuracy (ties: the later epoch); without validation data it is the last epoch's, and the run says
so. Its test accuracy is ``val_chosen_acc``. The paper's "best test accuracy" (the maximum over
epochs of the test accuracy, i.e. chosen on the test labels) is kept as ``best_test_acc``, for
comparison with published tables only.
"""

from __future__ import annotations

from typing import Any

NO_VALIDATION = "last epoch (no validation data)"
ON_VALIDATION = "best validation accuracy"


class ModelSelection:
    """Tracks the chosen epoch from per-epoch validation accuracies; reads test accuracies only to report them.

    Args:
        has_val: whether the run has validation data.
    """

    def __init__(self, has_val: bool) -> None:
        self.has_val = has_val
        self.best_val: float | None = None
        self.epoch: int | None = None
        self.test_acc: float | None = None

    @property
    def rule(self) -> str:
        """How the model is chosen, in words."""
        return ON_VALIDATION if self.has_val else NO_VALIDATION

    def update(self, epoch: int, val_acc: float | None, test_acc: float | None) -> bool:
        """Record one epoch; returns whether its model is now the chosen one (write ``model_best.pt``).

        The decision depends on ``val_acc`` alone (``test_acc`` is only remembered for the report).
        """
        if self.has_val and val_acc is None:
            raise ValueError("a run with validation data needs a validation accuracy every epoch")
        chosen = not self.has_val or self.best_val is None or val_acc >= self.best_val
        if chosen:
            self.best_val, self.epoch, self.test_acc = val_acc, epoch, test_acc
        return chosen

    def record(self) -> dict[str, Any]:
        """``val_chosen_acc`` (test accuracy of the chosen epoch) and ``val_chosen_epoch``, for metrics."""
        return {"val_chosen_acc": self.test_acc, "val_chosen_epoch": self.epoch}

    def state_dict(self) -> dict[str, Any]:
        return {"has_val": self.has_val, "best_val": self.best_val, "epoch": self.epoch, "test_acc": self.test_acc}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if state:
            self.best_val, self.epoch, self.test_acc = state["best_val"], state["epoch"], state["test_acc"]


def chosen_from_records(records: list[dict[str, Any]]) -> dict[str, Any]:
    """The chosen epoch of a run from its ``metrics.jsonl`` records (the same rule as :class:`ModelSelection`).

    Returns:
        ``{"val_chosen_acc", "val_chosen_epoch", "selection"}``; ``None`` values when there are no records.
    """
    sel = ModelSelection(any(isinstance(r.get("val_acc"), (int, float)) for r in records))
    for r in records:
        val = r.get("val_acc")
        if sel.has_val and not isinstance(val, (int, float)):
            continue  # a record without a validation number cannot be chosen
        sel.update(r.get("epoch"), val, r.get("test_acc"))
    return {**sel.record(), "selection": sel.rule}
