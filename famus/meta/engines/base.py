"""The one small interface every meta-gradient engine implements."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from famus.meta.inputs import Inputs
from famus.meta.layers import LayerInfo
from famus.meta.methods import MetaMethod
from famus.meta.precision import full_precision, master_dtype
from famus.registry import Registry

ENGINES: Registry[type[Engine]] = Registry("engine")
# the engine of famus train and MetaLearner when none is named: the meta gradient of ``exact`` (to
# a finite-difference error of ~1e-4) at the cost of one extra forward pass instead of a second-order
# backward; docs/learning-quality.md measures that it learns the weighting as ``exact`` does
DEFAULT_ENGINE = "fd"

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
        train_loss: the Virtual-Train weighted loss, 0-d, detached.
        weights: Virtual-Train coefficients ``c`` ``(n,)``, detached.
        aux: other detached scalars (``loss_r``, ``loss_g``).
        times: stage name -> seconds, for the four meta stages.
        virtual_logits: ``(n, C)`` Virtual-Train logits at w, still in their autograd graph; set only
            when ``batch.keep_virtual`` and the forward pass drew no random numbers (no dropout), so
            that they equal the Actual-Train forward's logits.
        virtual_buffers: buffer name -> value after the Virtual-Train forward alone (the running
            statistics an Actual-Train forward on the same batch would produce).
        train_grads: parameter name -> detached Virtual-Train gradient ``grad_w sum_i c_i L_i`` at the
            old meta parameters (what the lagged mode steps with); ``None`` for unused parameters.
        logits: ``(n, C)`` Virtual-Train logits, detached (always set by famus's engines): the learner
            computes the Actual-Train weights at them for :attr:`MetaUpdate.weights`.
    """

    meta_grads: dict[str, Tensor]
    sampler_grads: dict[str, Tensor] | None = None
    gates: dict[str, Tensor] | None = None
    meta_loss: Tensor | None = None
    train_loss: Tensor | None = None
    weights: Tensor | None = None
    aux: dict[str, Tensor] = field(default_factory=dict)
    times: dict[str, float] = field(default_factory=dict)
    virtual_logits: Tensor | None = None
    virtual_buffers: dict[str, Tensor] | None = None
    train_grads: dict[str, Tensor | None] | None = None
    logits: Tensor | None = None


class Engine:
    """Base class of meta-gradient engines.

    Subclasses implement :meth:`compute`. Engines with learned state (FaMUS samplers)
    also implement :meth:`bind`, :meth:`apply`, :meth:`state_dict` and
    :meth:`load_state_dict`.
    """

    name = "base"

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
            layers: when given, only these layers contribute (fixed; no sampler).
        """
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


def build_engine(name: str, **options) -> Engine:
    """An engine by registry name, e.g. ``build_engine("famus", k=4)``."""
    return ENGINES.get(name)(**options)


def run_gates(gate_fn, grads: dict[str, Tensor | None]):
    """Call FaMUS's ``gate_fn`` on the Virtual-Train gradients, if there is one.

    Returns:
        ``(gates, extra_loss, sampler_params, hard)``: straight-through gates by layer, the L_r
        term (or ``None``), the sampler parameters to differentiate, and each gate's 0/1 value
        as a Python bool (one host sync for all gates: the meta graph's shape depends on them).
    """
    if gate_fn is None:
        return {}, None, {}, {}
    device = next(g for g in grads.values() if g is not None).device
    with full_precision(device):  # samplers and Gumbel noise in full precision (famus.meta.precision)
        gates, extra, sampler_params = gate_fn(grads)
    hard = dict(zip(gates, torch.stack([g.detach() for g in gates.values()]).tolist())) if gates else {}
    return gates, extra, sampler_params, hard
