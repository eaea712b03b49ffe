"""FaMUS: a learned gradient sampler per layer decides which layers feed the meta gradient.

One engine, a composition of the samplers and a backend: ``famus`` runs over second-order backprop
(the paper's algorithm); ``famus-jvp`` and ``famus-fd`` are registrations of the same engine over the
forward-mode backends, which give the same meta and sampler gradients for the same gates (see
:mod:`.directional`).

Where the authors' code (github.com/youjiangxu/FaMUS) differs from the defaults, an option selects
its choice: ``lg_target="detached"``, ``gate_unit="tensor"``, ``lr_gates="last"``, ``sampler_layers=3``,
``sampler_nesterov=True``. docs/famus-fidelity.md lists every difference and its measured effect.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta.engines.base import ENGINES, Backend, Engine, MetaBatch, MetaResult, over, select_layers
from famus.meta.engines.directional import FD, JVP
from famus.meta.engines.second_order import SecondOrder
from famus.meta.layers import LayerInfo
from famus.meta.sampler import GradientSampler, gumbel_gates, pooled_gradient

LG_TARGETS = ("differentiated", "detached")
GATE_UNITS = ("module", "tensor")
LR_GATES = ("all", "last")


def default_candidates(layers: list[LayerInfo], top_tensors: int) -> list[str]:
    """Layers holding the last ``top_tensors`` parameter tensors (reference code: 15)."""
    out, count = [], 0
    for info in reversed(layers):
        if count >= top_tensors:
            break
        out.append(info.name)
        count += len(info.params)
    return out[::-1]


def tensor_units(layers: list[LayerInfo], split: set[str]) -> list[LayerInfo]:
    """``layers`` with each parameter tensor of the layers in ``split`` as a unit of its own (per-tensor gates).

    A unit is named after its parameter (``"conv1.weight"``) and samples from that tensor's gradient
    (``sampler_dim``: its ``D_out``). Forward order is kept; inside a layer, the parameters' order.
    """
    out = []
    for info in layers:
        if info.name not in split:
            out.append(info)
            continue
        dims = info.dims or (info.sampler_dim,) * len(info.params)
        out.extend(LayerInfo(p, (p,), d, (d,)) for p, d in zip(info.params, dims))
    return out


def _choice(name: str, value, valid: tuple[str, ...]) -> str:
    if value not in valid:
        raise ValueError(f"{name} must be one of {', '.join(repr(v) for v in valid)}; got {value!r}")
    return value


def sampler_key(layer: str) -> str:
    """ModuleDict keys may not contain '.', so module paths use '/'."""
    return layer.replace(".", "/")


@dataclass
class GateDraw:
    """One step's draw of FaMUS's gates: the :class:`~famus.meta.engines.base.Sampler` a backend calls.

    Attributes:
        engine: the FaMUS engine (samplers, temperature, ``k``, ``lambda_r``).
        generator: the learner's CPU generator (the Gumbel noise).
        layers: the gated units' names (layers, or tensors with ``gate_unit="tensor"``; they may switch on).
    """

    engine: FaMUS
    generator: torch.Generator
    layers: set[str]

    def __call__(self, grads: dict[str, Tensor | None]) -> tuple[dict[str, Tensor], Tensor | None, dict[str, Tensor]]:
        """Gates ``{layer: 0-d}`` from the pooled Virtual-Train gradients, L_r, and the sampler parameters."""
        eng = self.engine
        live = [i for i in eng.sampled if grads[i.params[0]] is not None]  # units: layers or tensors
        if not live:
            return {}, None, {}
        inputs = {i.name: pooled_gradient(grads[i.params[0]]) for i in live}
        logits = torch.stack([eng.samplers[sampler_key(i.name)](inputs[i.name]) for i in live])
        uniform = torch.rand(logits.shape, generator=self.generator).to(logits.device, logits.dtype)
        r = gumbel_gates(logits, uniform, eng.temperature)
        # in a process group every rank has the same inputs (the summed gradient), samplers and
        # random stream, so the same gates; rank 0's are imposed anyway, since the graph's shape
        # (hence the sequence of collectives) depends on them
        r = dist.same_on_all_ranks(r)
        # Eq. 10 over every gate; the authors' code (lr_gates="last") counts only the last one
        loss_r = eng.lambda_r * ((r if eng.lr_gates == "all" else r[-1:]).sum() - eng.k) ** 2
        return {i.name: r[j] for j, i in enumerate(live)}, loss_r, dict(eng.samplers.named_parameters())


class FaMUS(Engine):
    """FaMUS: learned per-layer samplers over a backend (``famus``: second order, the paper's algorithm).

    Registered as ``famus``, ``famus-jvp`` and ``famus-fd`` (the backend's options come first:
    ``fd_eps``, ``scheme``, ``stages``; see :mod:`.directional`).

    Args:
        backend: the meta-gradient computation (default: second order).
        name: the registry name.
        k: expected number of gates on (L_r target, paper: 4): layers, or tensors with ``gate_unit="tensor"``.
        lambda_r: weight of L_r = (sum_l r_l - K)^2.
        lambda_g: weight of L_g, the last layer's gradient matching loss.
        sampler_lr: SGD learning rate of the samplers (paper: 0.1; long-tailed 1e-2).
        sampler_momentum: SGD momentum of the samplers.
        hidden: sampler hidden width (paper: 128).
        temperature: Gumbel-softmax temperature (reference code: 5).
        candidates: ``"default"`` (layers holding the last ``top_tensors`` tensors; with
            ``gate_unit="tensor"`` exactly those tensors), ``"all"``, or a list of layer names /
            module prefixes.
        top_tensors: see ``candidates``.
        pin_last: the final layer (classifier) always contributes and gets no sampler.
        lg_target: ``"differentiated"``: L_g is differentiated through the meta-batch gradient
            ``gbar_L^val(w_hat(theta))`` too (Eq. 11 as written); ``"detached"``: that gradient is a
            constant, as in the authors' code (no second-order pass through the meta batch for L_g,
            and L_g gives the samplers no gradient).
        gate_unit: ``"module"``: one gate per layer (module owning parameters); ``"tensor"``: one gate
            per parameter tensor, as in the authors' code (needs ``pin_last``).
        lr_gates: ``"all"``: L_r over every gate (Eq. 10); ``"last"``: over the last gate only, as in
            the authors' code (their ``acts.append`` sits after the loop).
        sampler_layers: linear layers per sampler (paper: 2; the authors' code: 3).
        sampler_nesterov: Nesterov momentum for the samplers' SGD (the authors' code: on).
    """

    name = "famus"
    default_backend = SecondOrder

    def __init__(
        self,
        backend: Backend | None = None,
        name: str | None = None,
        k: float = 4,
        lambda_r: float = 0.1,
        lambda_g: float = 0.1,
        sampler_lr: float = 0.1,
        sampler_momentum: float = 0.9,
        hidden: int = 128,
        temperature: float = 5.0,
        candidates: str | list[str] = "default",
        top_tensors: int = 15,
        pin_last: bool = True,
        lg_target: str = "differentiated",
        gate_unit: str = "module",
        lr_gates: str = "all",
        sampler_layers: int = 2,
        sampler_nesterov: bool = False,
    ) -> None:
        super().__init__(backend, name)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.lg_target = _choice("lg_target", lg_target, LG_TARGETS)
        self.gate_unit = _choice("gate_unit", gate_unit, GATE_UNITS)
        self.lr_gates = _choice("lr_gates", lr_gates, LR_GATES)
        if isinstance(sampler_layers, bool) or not isinstance(sampler_layers, int) or sampler_layers < 2:
            raise ValueError(f"sampler_layers must be an integer >= 2, got {sampler_layers!r}")
        if not isinstance(sampler_nesterov, bool):
            raise ValueError(f"sampler_nesterov must be true or false, got {sampler_nesterov!r}")
        if sampler_nesterov and not sampler_momentum > 0:
            raise ValueError(f"sampler_nesterov needs sampler_momentum > 0, got {sampler_momentum}")
        if gate_unit == "tensor" and not pin_last:
            # L_g matches the last layer's tensors together; split into per-tensor units it would see one
            raise ValueError("gate_unit='tensor' needs pin_last=True (the authors' code pins the classifier)")
        self.k, self.lambda_r, self.lambda_g = k, lambda_r, lambda_g
        self.sampler_lr, self.sampler_momentum = sampler_lr, sampler_momentum
        self.hidden, self.temperature = hidden, temperature
        self.candidates, self.top_tensors, self.pin_last = candidates, top_tensors, pin_last
        self.sampler_layers, self.sampler_nesterov = sampler_layers, sampler_nesterov

    def bind(self, layers, device, dtype):
        super().bind(layers, device, dtype)
        if self.candidates == "default":
            cand = set(default_candidates(layers, self.top_tensors))
        elif self.candidates == "all":
            cand = {i.name for i in layers}
        else:
            wanted = [self.candidates] if isinstance(self.candidates, str) else list(self.candidates)
            cand = select_layers(layers, wanted, "candidates")
        self.pinned = {layers[-1].name} if self.pin_last else set()
        gated = [i for i in layers if i.name in cand and i.name not in self.pinned]
        if self.gate_unit == "module":
            self.units, self.sampled = layers, gated
        else:  # every tensor of a gated layer is a unit; the pinned and other layers stay whole
            tensors = {p for i in gated for p in i.params}
            if self.candidates == "default":  # exactly the last top_tensors tensors (the authors' [-top_k:-2])
                tensors &= set([p for i in layers for p in i.params][-self.top_tensors:])
            self.units = tensor_units(layers, {i.name for i in gated})
            self.sampled = [u for u in self.units if u.name in tensors]
        self.sampled_names = {i.name for i in self.sampled}  # the gated units, once
        self.samplers = nn.ModuleDict(
            {sampler_key(i.name): GradientSampler(i.sampler_dim, self.hidden, self.sampler_layers)
             for i in self.sampled}
        ).to(device=device, dtype=dtype)
        self.optimizer = torch.optim.SGD(self.samplers.parameters(), lr=self.sampler_lr,
                                         momentum=self.sampler_momentum, nesterov=self.sampler_nesterov)

    def run(self, batch: MetaBatch, generator: torch.Generator, fixed: set[str] | None) -> MetaResult:
        if fixed is not None:  # fixed layers: Eq. 9's g' for that set, no sampler, no L_g
            return self.backend(batch, fixed)
        if self.gate_unit == "tensor":  # the backend keys gates by unit: here, parameter tensors
            batch = replace(batch, layers=self.units)
        draw = GateDraw(self, generator, self.sampled_names)
        res = self.backend(batch, self.pinned, draw, lambda_g=self.lambda_g, lg_target=self.lg_target)
        one = batch.one()
        gates = res.gates or {}
        res.gates = {i.name: gates.get(i.name, one) for i in batch.layers if i.name in gates or i.name in self.pinned}
        return res

    def apply(self, result: MetaResult) -> None:
        if not result.sampler_grads:
            return
        for n, p in self.samplers.named_parameters():
            p.grad = result.sampler_grads[n].detach().clone()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)

    def parameters(self):
        return list(self.samplers.parameters())

    def optimizers(self):
        return [self.optimizer]

    def state_dict(self) -> dict:
        return {"samplers": self.samplers.state_dict(), "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.samplers.load_state_dict(state["samplers"])
        self.optimizer.load_state_dict(state["optimizer"])


ENGINES.add("famus", over(FaMUS, SecondOrder, "famus"))
ENGINES.add("famus-jvp", over(FaMUS, JVP, "famus-jvp"))
ENGINES.add("famus-fd", over(FaMUS, FD, "famus-fd"))
