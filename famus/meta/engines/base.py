"""The one small interface every meta-gradient engine implements, and what goes in and out of it.

An engine is a layer policy (which layers contribute: all, a fixed block, random ones, FaMUS's
samplers) over a :class:`Backend` (how the meta gradient is computed: second-order backprop, a
forward-mode JVP or a finite difference). Every registered engine is one such pair (:func:`over`).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import torch
from torch import Tensor, nn

from famus.meta.inputs import Inputs
from famus.meta.layers import LayerInfo
from famus.meta.methods import MetaMethod
from famus.meta.options import build, option_names
from famus.meta.precision import master_dtype
from famus.registry import Registry

ENGINES: Registry[Callable[..., Engine]] = Registry("engine")
# the engine of famus train and MetaLearner when none is named: the meta gradient of ``exact`` by
# ``exact`` or ``fd`` (one extra forward pass instead of a second-order backward, to a finite-difference
# error of ~1e-6), whichever the first meta step times faster (:mod:`.auto`); docs/learning-quality.md
# measures that fd learns the weighting as exact does
DEFAULT_ENGINE = "auto"

STAGES = (
    "virtual_forward",
    "virtual_backward",
    "meta_forward",
    "meta_backward",
    "actual_forward",
    "actual_backward",
)


class StageTimer:
    """Wall time between marks; synchronizes CUDA so GPU stages are timed honestly."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"
        self.times: dict[str, float] = {}
        self._sync()
        self._t = time.perf_counter()

    def _sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize()

    def mark(self, stage: str) -> None:
        """Charge the time since the last mark to ``stage`` (accumulating)."""
        self._sync()
        now = time.perf_counter()
        self.times[stage] = self.times.get(stage, 0.0) + now - self._t
        self._t = now


@dataclass
class MetaBatch:
    """Everything an engine needs for one meta step.

    Attributes:
        model: the base model (its live parameters are in ``params``).
        params: parameter name -> live parameter (requires grad).
        buffers: buffer name -> CLONED buffer; engines may let BN write into them.
        lrs: parameter name -> the virtual step's size: ``w_hat = w - lrs[name] * g``. A number (alpha,
            the learning rate: SGD) or a tensor of the parameter's shape (elementwise, e.g. Adam's
            preconditioned ``lr / (sqrt(v_hat) + eps)``); a constant for theta either way.
        x, y: training batch ``(n, ...)`` (a tensor, or a tuple or dict of tensors: see
            :mod:`famus.meta.inputs`), ``(n,)``.
        x_meta, y_meta: meta batch ``(m, ...)``, ``(m,)``.
        method: the meta-learning method.
        theta: meta parameters (leaf tensors) the meta gradient is taken for.
        layers: parameterised layers in forward order.
        keep_virtual: the learner will backprop the Actual-Train loss through the Virtual-Train
            graph (Actual-Train reuse): keep that graph alive and return its logits.
    """

    model: nn.Module
    params: dict[str, Tensor]
    buffers: dict[str, Tensor]
    lrs: dict[str, float | Tensor]
    x: Inputs
    y: Tensor
    x_meta: Inputs
    y_meta: Tensor
    method: MetaMethod
    theta: dict[str, Tensor]
    layers: list[LayerInfo]
    keep_virtual: bool = False

    @property
    def device(self) -> torch.device:
        """The model's device."""
        return next(iter(self.params.values())).device

    @property
    def dtype(self) -> torch.dtype:
        """The dtype the meta step computes in: the parameters' (float32 for 16-bit ones, see :mod:`.precision`)."""
        return master_dtype(next(iter(self.params.values())).dtype)

    def one(self) -> Tensor:
        """A 0-d ``1.0`` in the model's dtype, on its device (a pinned layer's gate)."""
        p = next(iter(self.params.values()))
        return torch.ones((), dtype=p.dtype, device=p.device)


@dataclass
class VirtualTrain:
    """What the Virtual-Train stage produced that Actual-Train may reuse (one field of :class:`MetaResult`).

    Attributes:
        logits: ``(n, C)`` Virtual-Train logits at w: still in their autograd graph when ``reusable``,
            else detached. The learner computes the Actual-Train weights at them.
        loss: 0-d, the Virtual-Train weighted loss (the union batch's in a process group), detached.
        weights: ``(n,)`` Virtual-Train coefficients ``c``, detached.
        grads: parameter name -> Virtual-Train gradient ``grad_w sum_i c_i L_i`` at the old meta
            parameters (``None`` for unused parameters): what the lagged mode steps with. Detached in a
            :class:`MetaResult`; in the graph (``create_graph``) inside a backend.
        buffers: buffer name -> value after the Virtual-Train forward alone (the running statistics
            an Actual-Train forward on the same batch would produce).
        reusable: ``batch.keep_virtual`` and the forward drew no random numbers (no dropout), so
            ``logits`` equal an Actual-Train forward's and the learner may backpropagate through them.
    """

    logits: Tensor
    loss: Tensor
    weights: Tensor
    grads: dict[str, Tensor | None]
    buffers: dict[str, Tensor]
    reusable: bool = False

    def detached(self) -> VirtualTrain:
        """The record a :class:`MetaResult` carries: gradients detached, logits kept only if reusable."""
        return VirtualTrain(
            logits=self.logits if self.reusable else self.logits.detach(),
            loss=self.loss,
            weights=self.weights,
            grads={n: None if g is None else g.detach() for n, g in self.grads.items()},
            buffers=self.buffers,
            reusable=self.reusable,
        )


@dataclass
class MetaResult:
    """What an engine returns.

    In a ``torch.distributed`` process group (data parallel, see :mod:`famus.distributed`), an
    engine reduces what the union batch needs inside the step (the Virtual-Train gradient and loss,
    summed over ranks; the meta-set gradient, averaged) and returns per-rank ``meta_grads``,
    ``sampler_grads`` and ``meta_loss`` whose mean over ranks is the union's; the learner averages them.

    Attributes:
        meta_grads: meta parameter name -> gradient (same shapes as ``theta``).
        sampler_grads: sampler parameter name -> gradient, for engines with samplers.
        gates: layer name -> 0-d tensor, 1.0 where the layer contributed (samplers' layers and pinned ones).
        meta_loss: ``L_c``, 0-d, detached.
        aux: other detached scalars (``loss_r``, ``loss_g``).
        times: stage name -> seconds, for the four meta stages.
        virtual: the Virtual-Train record (Actual-Train reuse, lagged mode, the Virtual-Train loss and
            weights); ``None`` from an engine that keeps none.
    """

    meta_grads: dict[str, Tensor]
    sampler_grads: dict[str, Tensor] | None = None
    gates: dict[str, Tensor] | None = None
    meta_loss: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    virtual: VirtualTrain | None = None


class Sampler(Protocol):
    """One step's gate draw (FaMUS): which of its layers contribute, given the Virtual-Train gradients.

    ``sampler(grads)`` returns ``(gates, extra_loss, sampler_params)``: layer name -> 0-d
    straight-through gate in {0, 1}, a term added to the meta objective (L_r) or ``None``, and the
    sampler parameters to differentiate. ``layers``: every layer it may switch on.
    """

    layers: set[str]

    def __call__(self, grads: dict[str, Tensor | None]) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]:
        ...


class Backend(Protocol):
    """How the meta gradient is computed: second order, ``jvp`` or ``fd`` (one signature for all)."""

    def __call__(self, batch: MetaBatch, contributing: set[str] | None, sampler: Sampler | None = None,
                 lambda_g: float = 0.0, lg_target: str = "differentiated") -> MetaResult:
        """One Virtual-Train and Meta-Train.

        Args:
            batch: the step's data, parameters and method.
            contributing: layers whose meta-gradient path is kept (``None``: all).
            sampler: FaMUS's gates; its layers keep the path only when their gate is 1.
            lambda_g: weight of L_g on the last layer (0 disables it).
            lg_target: ``"differentiated"`` (L_g's meta-batch gradient is differentiated too) or
                ``"detached"`` (a constant, as in the FaMUS authors' code).
        """
        ...


class Engine:
    """Base class of meta-gradient engines: a layer policy over a :class:`Backend`.

    Subclasses implement :meth:`run`. Engines with learned state (FaMUS samplers) also implement
    :meth:`apply`, :meth:`parameters`, :meth:`optimizers`, :meth:`state_dict` and :meth:`load_state_dict`.

    Args:
        backend: the meta-gradient computation.
        name: the registry name (``"famus-fd"``); default: the class's, or with a backend of the
            caller's choice the class's and the backend's, e.g. ``"exact(FD)"``: a learner
            keys its engines by name, and ``AllLayers(FD())`` must not pass for ``exact``.
    Subclasses name their default backend in :attr:`default_backend`.
    """

    name = "base"
    default_backend: Callable[[], Backend] | None = None

    def __init__(self, backend: Backend | None = None, name: str | None = None) -> None:
        self.backend = backend if backend is not None else self.default_backend()
        if name is not None:
            self.name = name
        elif backend is not None:
            self.name = f"{type(self).name}({type(backend).__name__})"

    def bind(self, layers: list[LayerInfo], device: torch.device, dtype: torch.dtype) -> None:
        """Called once, when the learner knows the model's layers."""
        self.layer_infos = layers

    def compute(
        self, batch: MetaBatch, generator: torch.Generator, layers: list[str] | None = None
    ) -> MetaResult:
        """The meta gradient for one batch.

        Args:
            batch: the step's data, parameters and method.
            generator: CPU generator for any randomness (gates, layer draws).
            layers: when given, only these layers (names or module prefixes) contribute (fixed; no sampler).
        """
        return self.run(batch, generator, None if layers is None else select_layers(batch.layers, layers))

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        """:meth:`compute` with ``layers`` resolved to layer names (``None``: the engine's own choice)."""
        raise NotImplementedError

    def apply(self, result: MetaResult) -> None:
        """Update the engine's own learned state (FaMUS samplers) after a step."""

    def parameters(self) -> list[Tensor]:
        """Learned parameters of the engine (FaMUS samplers), if any."""
        return []

    def optimizers(self) -> list[torch.optim.Optimizer]:
        """The optimizers :meth:`apply` steps (FaMUS's sampler SGD), if any: a skipped step is undone on them."""
        return []

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass


def select_layers(infos: list[LayerInfo], wanted: list[str], what: str = "layers") -> set[str]:
    """Names of layers in ``infos`` matching ``wanted`` (exact names or module prefixes).

    ``"layer3.4"`` selects every layer inside the module ``layer3.4``; an unknown
    entry is an error listing the valid layer names.
    """
    names = [i.name for i in infos]
    out: set[str] = set()
    for w in wanted:
        hit = [n for n in names if n == w or n.startswith(w + ".") or w == ""]
        if not hit:
            raise ValueError(f"unknown {what} entry {w!r}; valid layers: {', '.join(names)}")
        out.update(hit)
    return out


def over(engine: type[Engine], backend: Callable[..., Backend], name: str) -> Callable[..., Engine]:
    """The registration ``name``: ``engine`` over ``backend``, taking the options of both.

    ``over(FaMUS, FD, "famus-fd")(k=2, fd_eps=1e-4)`` is ``FaMUS(FD(fd_eps=1e-4), "famus-fd", k=2)``.
    """
    own = option_names(backend)
    params = [p for p in inspect.signature(backend).parameters.values() if p.name in own]
    policy = [p for p in inspect.signature(engine).parameters.values()
              if p.name not in ("backend", "name") and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    clash = sorted(set(own) & {p.name for p in policy})
    if clash:  # each option has one owner: the factory must not guess between them
        raise TypeError(f"{name!r}: options {clash} are taken by both {engine.__name__} and {backend}")
    params += policy

    def factory(**options) -> Engine:
        return engine(backend(**{k: options.pop(k) for k in own if k in options}), name, **options)

    factory.__signature__ = inspect.Signature([p.replace(kind=p.KEYWORD_ONLY) for p in params])
    factory.__name__ = factory.__qualname__ = name.replace("-", "_")
    factory.__doc__ = f"The {name!r} engine: {engine.__name__} over {getattr(backend, '__name__', backend)}."
    return factory


def build_engine(name: str, **options) -> Engine:
    """An engine by registry name, e.g. ``build_engine("famus", k=4)``; unknown options list the valid ones."""
    return build(ENGINES, name, options)
