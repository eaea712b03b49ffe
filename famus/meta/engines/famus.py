"""FaMUS: a learned gradient sampler per layer decides which layers feed the meta gradient.

``famus`` runs over second-order backprop (the paper's algorithm); ``famus-jvp`` and ``famus-fd``
run the same samplers, gates and losses over the forward-mode engines, which give the same
meta and sampler gradients for the same gates (see :mod:`.directional`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from famus import distributed as dist
from famus.meta.engines.base import ENGINES, Engine, MetaBatch, MetaResult, select_layers
from famus.meta.engines.directional import FD, JVP
from famus.meta.engines.second_order import second_order
from famus.meta.layers import LayerInfo
from famus.meta.sampler import GradientSampler, gumbel_gates, pooled_gradient


def default_candidates(layers: list[LayerInfo], top_tensors: int) -> list[str]:
    """Layers holding the last ``top_tensors`` parameter tensors (reference code: 15)."""
    out, count = [], 0
    for info in reversed(layers):
        if count >= top_tensors:
            break
        out.append(info.name)
        count += len(info.params)
    return out[::-1]


def sampler_key(layer: str) -> str:
    """ModuleDict keys may not contain '.', so module paths use '/'."""
    return layer.replace(".", "/")


@ENGINES.register("famus")
class FaMUS(Engine):
    """FaMUS over second-order backprop (the paper's algorithm).

    Args:
        k: expected number of sampled layers switched on (L_r target, paper: 4).
        lambda_r: weight of L_r = (sum_l r_l - K)^2.
        lambda_g: weight of L_g, the last layer's gradient matching loss.
        sampler_lr: SGD learning rate of the samplers (paper: 0.1; long-tailed 1e-2).
        sampler_momentum: SGD momentum of the samplers.
        hidden: sampler hidden width (paper: 128).
        temperature: Gumbel-softmax temperature (reference code: 5).
        candidates: ``"default"`` (layers holding the last ``top_tensors`` tensors), ``"all"``,
            or a list of layer names / module prefixes.
        top_tensors: see ``candidates``.
        pin_last: the final layer (classifier) always contributes and gets no sampler.
    """

    name = "famus"

    def __init__(
        self,
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
    ) -> None:
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.k, self.lambda_r, self.lambda_g = k, lambda_r, lambda_g
        self.sampler_lr, self.sampler_momentum = sampler_lr, sampler_momentum
        self.hidden, self.temperature = hidden, temperature
        self.candidates, self.top_tensors, self.pin_last = candidates, top_tensors, pin_last

    def bind(self, layers, device, dtype):
        super().bind(layers, device, dtype)
        if self.candidates == "default":
            cand = set(default_candidates(layers, self.top_tensors))
        elif self.candidates == "all":
            cand = {i.name for i in layers}
        else:
            cand = select_layers(layers, list(self.candidates), "candidates")
        self.pinned = {layers[-1].name} if self.pin_last else set()
        self.sampled = [i for i in layers if i.name in cand and i.name not in self.pinned]
        self.samplers = nn.ModuleDict(
            {sampler_key(i.name): GradientSampler(i.sampler_dim, self.hidden) for i in self.sampled}
        ).to(device=device, dtype=dtype)
        self.optimizer = torch.optim.SGD(
            self.samplers.parameters(), lr=self.sampler_lr, momentum=self.sampler_momentum
        )

    def gate_fn(self, batch: MetaBatch, generator: torch.Generator):
        """The closure :func:`second_order` calls with the Virtual-Train gradients."""

        def fn(grads: dict[str, Tensor | None]):
            live = [i for i in self.sampled if grads[i.params[0]] is not None]
            if not live:
                return {}, None, {}
            inputs = {i.name: pooled_gradient(grads[i.params[0]]) for i in live}
            logits = torch.stack([self.samplers[sampler_key(i.name)](inputs[i.name]) for i in live])
            uniform = torch.rand(logits.shape, generator=generator).to(logits.device, logits.dtype)
            r = gumbel_gates(logits, uniform, self.temperature)
            # in a process group every rank has the same inputs (the summed gradient), samplers and
            # random stream, so the same gates; rank 0's are imposed anyway, since the graph's shape
            # (hence the sequence of collectives) depends on them
            r = dist.same_on_all_ranks(r)
            loss_r = self.lambda_r * (r.sum() - self.k) ** 2
            return {i.name: r[j] for j, i in enumerate(live)}, loss_r, dict(self.samplers.named_parameters())

        return fn

    def run(self, batch: MetaBatch, contributing: set[str] | None, gate_fn=None, lambda_g: float = 0.0) -> MetaResult:
        """The meta-gradient backend: second-order backprop here, forward mode in the subclasses."""
        return second_order(batch, contributing, gate_fn, lambda_g)

    def compute(self, batch, generator, layers=None):
        if layers is not None:  # fixed layers: Eq. 9's g' for that set, no sampler, no L_g
            return self.run(batch, select_layers(batch.layers, layers))
        res = self.run(batch, self.pinned, self.gate_fn(batch, generator), lambda_g=self.lambda_g)
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


@ENGINES.register("famus-jvp")
class FaMUSJVP(FaMUS):
    """FaMUS over the ``jvp`` engine: the direction is restricted to the sampled (and pinned) layers.

    Args:
        stages: see :class:`~famus.meta.engines.directional.Directional`.
        **options: the options of :class:`FaMUS` (``k``, ``lambda_r``, ``lambda_g``, ...).
    """

    name = "famus-jvp"

    def __init__(self, stages: str | list[str] | None = "auto", **options) -> None:
        super().__init__(**options)
        self.backend = JVP(stages)

    def run(self, batch, contributing, gate_fn=None, lambda_g=0.0):
        return self.backend.run(batch, contributing, gate_fn, lambda_g, gated={i.name for i in self.sampled})


@ENGINES.register("famus-fd")
class FaMUSFD(FaMUS):
    """FaMUS over the ``fd`` engine (finite differences from the cached activations).

    Args:
        fd_eps: relative finite-difference step (see :class:`~famus.meta.engines.directional.FD`).
        scheme: ``"forward"`` (one extra pass, the default) or ``"central"`` (two).
        stages: see :class:`~famus.meta.engines.directional.Directional`.
        **options: the options of :class:`FaMUS`.
    """

    name = "famus-fd"

    def __init__(self, fd_eps: float | None = None, scheme: str = "forward",
                 stages: str | list[str] | None = "auto", **options) -> None:
        super().__init__(**options)
        self.backend = FD(fd_eps, scheme, stages)

    def run(self, batch, contributing, gate_fn=None, lambda_g=0.0):
        return self.backend.run(batch, contributing, gate_fn, lambda_g, gated={i.name for i in self.sampled})
