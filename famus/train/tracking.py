"""Meta-gradient tracking during training: one JSON line per tracked step in ``tracking.jsonl``.

Every tracked step, :class:`Tracker` evaluates the meta gradient twice on the step's own
batch, with the exact engine and with the run's engine, through
:meth:`famus.MetaLearner.meta_gradient` only (which changes no state), and records:

* ``meta_grad``: how well the run's engine matches the exact meta gradient: cosine
  similarity, relative error ``||g_engine - g_exact|| / ||g_exact||`` and both norms.
  ``g_engine`` is what the engine would update the meta model with: for FaMUS, the
  sampled layers' contribution plus ``lambda_g * dL_g/dtheta`` (freshly sampled gates).
* ``running``: for each of ``engine`` and ``exact``, Welford running moments of the
  flattened meta gradient ``g`` (``D`` entries, the meta parameters in the order the
  learner returns them): ``count``, ``mean_norm`` (``||mu||``), ``mean_entry`` (mean of
  the entries of ``mu``), ``total_var`` (trace of the running covariance, population
  form: sum over entries of ``M2 / count``) and the **scalar summary** plotted by
  ``famus report``: ``proj = <g, u>``, the projection of this step's gradient on the unit
  direction ``u = mu_exact / ||mu_exact||`` of the exact gradient's running mean (this step
  included), with its own running ``proj_mean`` and ``proj_var``. Both engines are projected
  on the same ``u``, so their means and spreads compare directly, as in the paper's Fig. 1c/4
  (one meta-gradient scalar's mean and variance over training). For L2R (``"eps"``, one entry
  per batch position) the running mean direction is close to the uniform direction, so
  ``proj`` is about ``sum_i dL_c/d eps_i / sqrt(n)``.
* ``gates``: layer -> 1.0/0.0, whether the layer contributed in the training step
  (``stats.gates``; layers the engine never gates count 0.0), or ``null`` for engines
  without gates (every layer contributes). Note the engine's meta gradient above draws its
  own gates (FaMUS samples them), these are the step's.
* ``weights``: the step's per-example coefficients ``stats.weights`` split by whether the
  example's label is corrupted: ``clean`` and ``noisy`` lists (histogram-ready), their
  ``sum``, ``n`` and ``clean_share`` (weight mass on clean examples); without a noise mask
  (your own data) one list ``all``, empty ``clean``/``noisy`` and no ``clean_share``.

Non-finite numbers are written as ``null``.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from famus.jsonl import truncate_jsonl

TRACKING_FILE = "tracking.jsonl"


def finite(x: float | Tensor | None) -> float | None:
    """``float(x)``, or ``None`` when it is missing, NaN or infinite (JSON has no NaN)."""
    if x is None:
        return None
    v = float(x)
    return v if math.isfinite(v) else None


def flatten(grads: dict[str, Tensor], keys: list[str]) -> Tensor:
    """Concatenate ``grads[k]`` for ``k`` in ``keys`` into one float64 CPU vector ``(D,)``."""
    if not keys:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([grads[k].detach().reshape(-1).to("cpu", torch.float64) for k in keys])


def compare(engine: Tensor, exact: Tensor) -> dict[str, float | None]:
    """Cosine similarity, relative error and norms of two flat gradients ``(D,)``.

    Returns:
        ``{"cosine", "rel_error", "norm_engine", "norm_exact"}``; ``cosine`` is ``None``
        when either norm is 0, ``rel_error`` when the exact norm is 0.
    """
    ne, nx = float(engine.norm()), float(exact.norm())
    cos = float(engine @ exact) / (ne * nx) if ne > 0 and nx > 0 else None
    rel = float((engine - exact).norm()) / nx if nx > 0 else None
    return {"cosine": finite(cos), "rel_error": finite(rel), "norm_engine": finite(ne), "norm_exact": finite(nx)}


class RunningMoments:
    """Welford's running mean and (population) variance of a vector, per entry, in float64.

    Attributes:
        count: number of vectors seen since the last reset.
        mean: ``(D,)`` running mean, ``None`` before the first update.
        m2: ``(D,)`` running sum of squared deviations.
    """

    def __init__(self) -> None:
        self.count = 0
        self.mean: Tensor | None = None
        self.m2: Tensor | None = None

    def update(self, v: Tensor) -> bool:
        """Add one vector ``(D,)``. Returns ``True`` when ``D`` changed, which restarts the moments."""
        v = v.detach().reshape(-1).to("cpu", torch.float64)
        reset = self.mean is not None and self.mean.numel() != v.numel()
        if self.mean is None or reset:
            self.count, self.mean, self.m2 = 0, torch.zeros_like(v), torch.zeros_like(v)
        self.count += 1
        delta = v - self.mean
        self.mean += delta / self.count
        self.m2 += delta * (v - self.mean)
        return reset

    @property
    def variance(self) -> Tensor:
        """``(D,)`` population variance ``M2 / count`` (zeros after one update)."""
        if self.mean is None:
            return torch.zeros(0, dtype=torch.float64)
        return self.m2 / self.count

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.count, self.mean, self.m2 = state["count"], state["mean"], state["m2"]


def _rounded(values: Tensor) -> list[float | None]:
    """``(n,)`` tensor -> list of floats with 6 significant digits (small, exact enough to plot)."""
    return [finite(float(f"{v:.6g}")) if math.isfinite(v) else None for v in values.tolist()]


class Tracker:
    """Records the meta gradient, gates and example weights every ``every`` steps.

    Args:
        run_dir: the run folder; records go to ``run_dir/tracking.jsonl``.
        every: track step 1 and every ``every``-th step (``step % every == 0``).
        layer_names: the model's layers in forward order (e.g. ``famus.layers(model)``);
            every record's ``gates`` lists them in this order.
        keep_until: ``None`` starts a new ``tracking.jsonl`` (an old one is replaced at the
            first record); on resume pass the checkpoint's step to keep the records with
            ``step <= keep_until`` and append after them. The running moments restart
            unless restored with :meth:`load_state_dict` (e.g. from the checkpoint).

    Usage in a training loop (``step`` counts finished iterations, from 1)::

        tracker = Tracker(run_dir, every=50, layer_names=famus.layers(model))
        stats = learner.step(x, y, xm, ym)
        if tracker.should_track(step):
            tracker.record(step, epoch, learner, x, y, xm, ym, stats, corrupted[idx])
        ...
        tracker.close()

    Called after ``learner.step``, the meta gradients are those at the updated parameters
    on the same batch; the gates and weights are the step's. Tracking costs two extra
    meta-gradient evaluations per tracked step and changes no training state.
    """

    def __init__(self, run_dir: str | Path, every: int, layer_names: list[str], keep_until: int | None = None) -> None:
        if int(every) < 1:
            raise ValueError(f"tracking interval must be >= 1 step, got {every}")
        self.path = Path(run_dir) / TRACKING_FILE
        self.every = int(every)
        self.layer_names = list(layer_names)
        self.moments = {"engine": RunningMoments(), "exact": RunningMoments()}
        self.projections = {"engine": RunningMoments(), "exact": RunningMoments()}
        self._fh = None
        self._mode = "w"
        if keep_until is not None:
            self._truncate(int(keep_until))
            self._mode = "a"

    def _truncate(self, step: int) -> None:
        truncate_jsonl(self.path, "step", step)

    def should_track(self, step: int) -> bool:
        """Whether ``step`` (finished iterations, from 1) is tracked: step 1 and multiples of ``every``."""
        return step == 1 or step % self.every == 0

    def record(
        self,
        step: int,
        epoch: int,
        learner,
        x: Tensor,
        y: Tensor,
        x_meta: Tensor,
        y_meta: Tensor,
        stats,
        corrupted: Tensor | None,
    ) -> dict[str, Any]:
        """Measure one step and append its record to ``tracking.jsonl``.

        Args:
            step: finished iterations (from 1); epoch: the epoch, from 1.
            learner: the :class:`famus.MetaLearner` (only ``meta_gradient`` and ``engine_name`` are used).
            x: training inputs ``(n, ...)``; y: their (noisy) labels ``(n,)`` int64.
            x_meta: meta inputs ``(m, ...)``; y_meta: meta labels ``(m,)`` int64.
            stats: the step's :class:`famus.StepStats` (``weights`` ``(n,)``, ``gates``, losses).
            corrupted: ``(n,)`` bool, True where the training label is not the true one; ``None`` when
                unknown (no injected noise): the weights are recorded unsplit, as ``all``.

        Returns:
            The record written (a JSON-ready dict).
        """
        t0 = time.perf_counter()
        weights = stats.weights.detach().reshape(-1).to("cpu", torch.float64)
        known = corrupted is not None  # no noise mask (your own data): the weights are not split
        bad = (torch.as_tensor(corrupted).detach().reshape(-1).to("cpu").bool() if known
               else torch.zeros(weights.numel(), dtype=torch.bool))
        if bad.shape != weights.shape:
            raise ValueError(
                f"corrupted has {bad.numel()} entries but the step weighted {weights.numel()} examples; "
                "pass the corrupted mask of the step's training batch"
            )
        exact = learner.meta_gradient(x, y, x_meta, y_meta, meta_grad="exact")
        own = learner.meta_gradient(x, y, x_meta, y_meta)
        keys = [k for k in exact if k in own]
        g = {"engine": flatten(own, keys), "exact": flatten(exact, keys)}

        reset = self.moments["exact"].update(g["exact"])
        reset |= self.moments["engine"].update(g["engine"])
        mu = self.moments["exact"].mean
        mu_norm = float(mu.norm())
        direction = mu / mu_norm if mu_norm > 0 else None
        running = {}
        for name, vec in g.items():
            mom, pm = self.moments[name], self.projections[name]
            proj = float(vec @ direction) if direction is not None else None
            if proj is not None and math.isfinite(proj):
                pm.update(torch.tensor([proj], dtype=torch.float64))
            running[name] = {
                "count": mom.count,
                "mean_norm": finite(mom.mean.norm()),
                "mean_entry": finite(mom.mean.mean()) if mom.mean.numel() else None,
                "total_var": finite(mom.variance.sum()),
                "proj": finite(proj),
                "proj_mean": finite(pm.mean[0]) if pm.count else None,
                "proj_var": finite(pm.variance[0]) if pm.count else None,
            }

        if stats.gates is None:
            gates = None
        else:
            on = {k: float(v) for k, v in stats.gates.items()}
            gates = {name: on.get(name, 0.0) for name in self.layer_names}
            gates.update({k: v for k, v in on.items() if k not in gates})

        total = float(weights.sum())
        clean_mass = float(weights[~bad].sum())
        record = {
            "step": int(step),
            "epoch": int(epoch),
            "engine": str(getattr(learner, "engine_name", "?")),
            "meta_params": {k: list(exact[k].shape) for k in keys},
            "meta_loss": finite(stats.meta_loss),
            "train_loss": finite(stats.train_loss),
            "meta_grad": compare(g["engine"], g["exact"]),
            "running": running,
            "running_reset": bool(reset),
            "gates": gates,
            "weights": {
                "n": int(weights.numel()),
                "sum": finite(total),
                "clean_share": finite(clean_mass / total) if total > 0 and known else None,
                "clean": _rounded(weights[~bad]) if known else [],
                "noisy": _rounded(weights[bad]) if known else [],
                **({} if known else {"all": _rounded(weights)}),
            },
        }
        record["tracking_time_s"] = round(time.perf_counter() - t0, 6)
        self._write(record)
        return record

    def _write(self, record: dict[str, Any]) -> None:
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open(self._mode)
            self._mode = "a"
        self._fh.write(json.dumps(record, allow_nan=False) + "\n")
        self._fh.flush()  # a crashed run keeps every finished record

    def state_dict(self) -> dict[str, Any]:
        """The running moments (small tensors), for the training checkpoint."""
        return {
            "moments": {k: m.state_dict() for k, m in self.moments.items()},
            "projections": {k: m.state_dict() for k, m in self.projections.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for k, m in self.moments.items():
            m.load_state_dict(state["moments"][k])
        for k, m in self.projections.items():
            m.load_state_dict(state["projections"][k])

    def close(self) -> None:
        """Close ``tracking.jsonl`` (a later :meth:`record` reopens it for appending)."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
