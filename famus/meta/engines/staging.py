"""Run a model as a sequence of stages, so a pass can restart from a cached activation.

A forward-mode engine needs the logits' directional derivative along a direction that
is zero below some layer. When the model is a chain of stages (an ``nn.Sequential``,
or declared split points), the input of the stage holding that layer is the same as in
the Virtual-Train forward pass, so the extra passes start there from the cached input
instead of re-running the network below it.

Every pass goes through :func:`torch.func.functional_call` on each stage with a subset
of a global ``name -> tensor`` state, so the model's own parameters and buffers are
never touched.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from torch.func import functional_call

from famus.meta import inputs as io
from famus.meta.inputs import Inputs


def rng_state(device: torch.device) -> tuple[Tensor, Tensor | None]:
    """The global CPU generator's state, and the CUDA one when ``device`` is a GPU."""
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return torch.get_rng_state(), cuda


def set_rng_state(state: tuple[Tensor, Tensor | None], device: torch.device) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state[0])
    if state[1] is not None:
        torch.cuda.set_rng_state(state[1], device)


def same_rng_state(a: tuple[Tensor, Tensor | None], b: tuple[Tensor, Tensor | None]) -> bool:
    """Whether no random number was drawn between the two snapshots."""
    return torch.equal(a[0], b[0]) and (a[1] is None or torch.equal(a[1], b[1]))


@dataclass
class Trace:
    """What a recorded forward pass saw at each stage boundary.

    Attributes:
        inputs: stage index -> the stage's input (``(B, ...)``, still in the autograd graph; stage 0's
            is the model's input, which may be a tuple or dict of tensors).
        versions: stage index -> the input's version counters when it was recorded, to detect
            a later in-place change (e.g. ``ReLU(inplace=True)`` in the next stage).
        rng: stage index -> RNG state just before the stage ran, to replay dropout masks.
        start: inputs are kept for stage 0 (the model's input, free) and stages ``>= start`` only,
            so activations no later pass can start from are not held alive.
    """

    start: int = 0
    inputs: dict[int, Inputs] = field(default_factory=dict)
    versions: dict[int, tuple[int, ...]] = field(default_factory=dict)
    rng: dict[int, tuple[Tensor, Tensor | None]] = field(default_factory=dict)

    def usable_start(self, start: int) -> int:
        """The highest stage ``<= start`` whose cached input is still intact."""
        for s in range(start, -1, -1):
            if s in self.inputs and io.version(self.inputs[s]) == self.versions[s]:
                return s
        raise RuntimeError("the model's input itself was modified in place; cannot replay the forward pass")


class Stages:
    """A model as stages ``0 .. S-1`` whose composition in order is ``model.forward``.

    Build with :meth:`from_model`. A model that is not a chain is one stage (no caching).

    Attributes:
        modules: the stage modules in forward order.
        names: their names (``""`` for the whole model).
        stage_of: global parameter name -> index of the stage that holds it.
    """

    def __init__(self, model: nn.Module, modules: list[tuple[str, nn.Module]]) -> None:
        self.names = [n for n, _ in modules]
        self.modules = [m for _, m in modules]
        # by identity, so a weight tied across stages maps to its one global name
        pname = {id(p): n for n, p in model.named_parameters()}
        bname = {id(b): n for n, b in model.named_buffers()}
        self._pmap: list[dict[str, str]] = []
        self._bmap: list[dict[str, str]] = []
        self.stage_of: dict[str, int] = {}
        for i, mod in enumerate(self.modules):
            pm = {ln: pname[id(p)] for ln, p in mod.named_parameters(remove_duplicate=False)}
            bm = {ln: bname[id(b)] for ln, b in mod.named_buffers(remove_duplicate=False) if id(b) in bname}
            self._pmap.append(pm)
            self._bmap.append(bm)
            for g in pm.values():
                self.stage_of.setdefault(g, i)

    def __len__(self) -> int:
        return len(self.modules)

    @classmethod
    def from_model(cls, model: nn.Module, spec: str | list[str] | None = "auto", example: Inputs | None = None):
        """Split ``model`` into stages.

        Args:
            model: the base model.
            spec: ``"auto"`` (the children of an ``nn.Sequential`` that keeps ``Sequential.forward``,
                else the whole model), ``None`` (the whole model: no caching), or a list of top-level
                child names whose composition in this order is the model's forward (declared split
                points; checked on ``example``).
            example: an input batch ``(B, ...)`` (or a tuple or dict of tensors) for checking declared split points.
        """
        if spec is None:
            return cls(model, [("", model)])
        if spec == "auto":
            if isinstance(model, nn.Sequential) and type(model).forward is nn.Sequential.forward:
                return cls(model, list(model.named_children()))
            return cls(model, [("", model)])
        if isinstance(spec, str):
            raise ValueError(f"stages must be 'auto', None or a list of child module names, got {spec!r}")
        children = dict(model.named_children())
        unknown = [s for s in spec if s not in children]
        if unknown:
            raise ValueError(f"unknown stage {unknown[0]!r}; the model's children are: {', '.join(children)}")
        out = cls(model, [(s, children[s]) for s in spec])
        missing = {n for n, _ in model.named_parameters()} - set(out.stage_of)
        if missing:
            raise ValueError(f"declared stages leave parameters out: {sorted(missing)[:5]}")
        if example is not None:
            out.check(model, example)
        return out

    def check(self, model: nn.Module, example: Inputs) -> None:
        """Raise unless running the stages reproduces ``model(example)`` (same RNG, cloned buffers)."""
        state = {**dict(model.named_parameters()), **{n: b.clone() for n, b in model.named_buffers()}}
        device = io.device_of(example)
        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.no_grad(), torch.random.fork_rng(devices=devices):
            torch.manual_seed(0)
            want = io.forward(model, state, example)
            state.update({n: b.clone() for n, b in model.named_buffers()})
            torch.manual_seed(0)
            try:
                got = self.run(state, state, example)
            except (RuntimeError, TypeError, ValueError) as e:
                raise ValueError(f"declared stages {self.names} do not reproduce the model's forward pass: {e}") from e
        if want.shape != got.shape or not torch.allclose(want, got, rtol=1e-5, atol=1e-6):
            raise ValueError(f"declared stages {self.names} do not reproduce the model's forward pass")

    def params_from(self, start: int) -> set[str]:
        """Global parameter names used by stages ``start ..``."""
        return {g for pm in self._pmap[start:] for g in pm.values()}

    def buffers_from(self, start: int) -> set[str]:
        """Global buffer names used by stages ``start ..``."""
        return {g for bm in self._bmap[start:] for g in bm.values()}

    def run(
        self,
        params: dict[str, Tensor],
        buffers: dict[str, Tensor],
        h: Inputs,
        start: int = 0,
        record: Trace | None = None,
        grad_from: int = 0,
    ) -> Tensor:
        """Stages ``start .. S-1`` on ``h`` (the input of stage ``start``).

        Args:
            params: global name -> tensor for at least the parameters of these stages.
            buffers: global name -> tensor; train-mode BN writes into these, so pass clones.
            h: ``(B, ...)`` input of stage ``start`` (stage 0: the model's input, see :mod:`famus.meta.inputs`).
            record: when given, stores each stage's input and the RNG state before it.
            grad_from: stages below this index run without autograd (nothing below needs a gradient).

        Returns:
            The last stage's output, ``(B, C)`` logits for a classifier (taken from ``.logits`` when
            the model returns an object).
        """
        device = io.device_of(h)
        for i in range(start, len(self.modules)):
            if record is not None and (i == 0 or i >= record.start):
                record.inputs[i], record.versions[i], record.rng[i] = h, io.version(h), rng_state(device)
            state = {ln: params[g] for ln, g in self._pmap[i].items()}
            state.update({ln: buffers[g] for ln, g in self._bmap[i].items()})
            with torch.set_grad_enabled(torch.is_grad_enabled() and i >= grad_from):
                h = io.call(self.modules[i], state, h) if i == 0 else functional_call(self.modules[i], state, (h,))
        return io.logits_of(h)
