"""A non-finite meta gradient is skipped, never applied, without a host sync.

The meta optimizers (the meta model's, the FaMUS samplers') step as usual; where the meta gradient
was not finite, every parameter and optimizer-state tensor they touched is then put back as it was
(state the step created is zeroed, which is what a fresh state behaves like), all by ``torch.where``
on a 0-d flag, so the step never waits for the device.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor


def all_finite(tensors: Iterable[Tensor], like: Tensor) -> Tensor:
    """0-d bool on ``like``'s device: every entry of every tensor is finite (True for none)."""
    flags = [torch.isfinite(t).all() for t in tensors]
    return torch.stack(flags).all() if flags else torch.ones((), dtype=torch.bool, device=like.device)


def zero_where_not(ok: Tensor, grads: dict[str, Tensor]) -> dict[str, Tensor]:
    """The gradients where ``ok``, zeros (not NaN) elsewhere; the same tensors' values when ``ok``."""
    return {k: torch.where(ok, g, torch.zeros((), dtype=g.dtype, device=g.device)) for k, g in grads.items()}


def _state_tensors(optimizers: list[torch.optim.Optimizer]) -> dict[tuple[int, int, str], Tensor]:
    return {(i, id(p), k): v for i, o in enumerate(optimizers) for p, st in o.state.items()
            for k, v in st.items() if torch.is_tensor(v)}


def guarded(optimizers: list[torch.optim.Optimizer], ok: Tensor, step: Callable[[], None]) -> None:
    """Run ``step`` (the optimizers' steps); where ``ok`` is False, undo it on their parameters and state.

    Args:
        optimizers: the optimizers ``step`` steps.
        ok: 0-d bool; False means the step must leave no trace.
        step: the optimizer steps to guard.

    A state tensor on another device than ``ok`` (Adam's CPU step counter beside CUDA parameters)
    needs ``ok`` copied there: one small device-to-host copy. famus's own meta optimizers avoid it
    (Adam is ``capturable`` on CUDA, SGD keeps no counter).
    """
    params = [p for o in optimizers for g in o.param_groups for p in g["params"]]
    saved_params = [p.detach().clone() for p in params]
    saved_state = {k: v.clone() for k, v in _state_tensors(optimizers).items()}
    step()
    flags = {ok.device: ok}
    with torch.no_grad():
        for p, s in zip(params, saved_params):
            p.copy_(torch.where(ok, p, s))
        for key, v in _state_tensors(optimizers).items():
            if v.device not in flags:
                flags[v.device] = ok.to(v.device)
            before = saved_state.get(key)
            v.copy_(torch.where(flags[v.device], v, torch.zeros_like(v) if before is None else before))


class LateFlag:
    """A 0-d bool flag on a CUDA device, or-ed every step and read without ever waiting for the device.

    :meth:`add` ors a flag into a device accumulator. :meth:`poll` keeps one non-blocking copy of the
    accumulator to pinned host memory in flight and returns the value of the last copy that has
    completed: a flag set at step ``t`` is seen a step or two later, and no step waits for it.
    ``clean_until`` / ``copied_at``: the step numbers the last clean copy and the copy that found the
    flag set were started at (what :meth:`poll`'s ``True`` covers).
    """

    def __init__(self, device: torch.device) -> None:
        self.acc = torch.zeros((), dtype=torch.bool, device=device)
        self.host = torch.zeros((), dtype=torch.bool, pin_memory=True)
        self.event: torch.cuda.Event | None = None
        self.clean_until = self.copied_at = 0

    def add(self, flag: Tensor | None) -> None:
        if flag is not None:
            self.acc |= flag  # stream-ordered after any copy in flight: that copy reads the old value

    def poll(self, step: int) -> bool:
        """Whether a completed copy found the flag set; starts the next copy (as of ``step``) otherwise."""
        if self.event is not None:
            if not self.event.query():
                return False  # the copy has not arrived yet: look again next step
            if bool(self.host):  # a host tensor the copy has landed in: no device sync
                return True
            self.clean_until = self.copied_at
        self.host.copy_(self.acc, non_blocking=True)
        self.event = torch.cuda.Event()
        self.event.record(torch.cuda.current_stream(self.acc.device))  # the stream the copy went to
        self.copied_at = step
        return False
