"""Where does the meta gradient come from? Per-layer contributions (the paper's Eq. 7).

The exact meta gradient is the sum over layers of each layer's second-order term:
``dL_c/dtheta = sum_l -alpha <d w_hat_l / d theta, dL_c/d w_hat_l>``. Restricting it to a group of
layers (what FaMUS and the ``block`` engine do) keeps only that group's terms. For each group this
module measures, on one batch and without changing any state:

* ``cosine``: the group's meta gradient against the exact one;
* ``norm_ratio``: its norm over the exact one's;
* ``slope_effect`` (MW-Net): the first-order change of ``V(hi) - V(lo)`` per unit step of the
  meta optimizer along ``-g`` (``< grad_theta [V(hi) - V(lo)], -g >``): negative means the step
  makes the weight fall with the loss, which is what down-weighting noisy labels needs;
  ``slope_share`` is the group's effect over the exact gradient's.

>>> rows = layer_contributions(learner, x, y, x_meta, y_meta)  # doctest: +SKIP
>>> rows["layer1"]["slope_share"]  # doctest: +SKIP
"""

from __future__ import annotations

import torch
from torch import Tensor

from famus.meta.learner import MetaLearner


def default_groups(learner: MetaLearner) -> dict[str, list[str]]:
    """The model's layers grouped by their top-level module (``stem``, ``layer1_0``, ..., ``fc``)."""
    if learner.layer_infos is None:
        raise RuntimeError("call learner.bind(x) (or one step) first")
    groups: dict[str, list[str]] = {}
    for info in learner.layer_infos:
        groups.setdefault(info.name.split(".")[0], []).append(info.name)
    return groups


def _flat(g: dict[str, Tensor]) -> Tensor:
    return torch.cat([v.detach().reshape(-1).double() for v in g.values()])


def slope_effect(meta_model: torch.nn.Module, grads: dict[str, Tensor], lo: float = 0.3, hi: float = 3.0) -> float:
    """``< grad_theta [V(hi) - V(lo)], -g >``: how one unit step along ``-g`` tilts MW-Net's ``V(loss)``."""
    params = dict(meta_model.named_parameters())
    p = next(iter(params.values()))
    x = torch.tensor([[lo], [hi]], dtype=p.dtype, device=p.device)
    with torch.enable_grad():
        v = torch.func.functional_call(meta_model, params, (x,)).reshape(-1)
        dv = torch.autograd.grad(v[1] - v[0], list(params.values()))
    return -float(sum((a.double() * grads[n].double()).sum() for a, n in zip(dv, params)))


def layer_contributions(
    learner: MetaLearner, x: Tensor, y: Tensor, x_meta: Tensor, y_meta: Tensor,
    groups: dict[str, list[str]] | None = None,
) -> dict[str, dict[str, float | None]]:
    """Each layer group's share of the exact meta gradient on one batch (no state changes).

    Args:
        groups: name -> layer names or module prefixes (default :func:`default_groups`).

    Returns:
        ``{"exact": {...}, group: {"cosine", "norm_ratio", "slope_effect", "slope_share"}}``; the
        slope entries are ``None`` without an MW-Net-style meta model.
    """
    learner.bind(x)
    groups = groups or default_groups(learner)
    exact = learner.meta_gradient(x, y, x_meta, y_meta, meta_grad="exact")
    fe = _flat(exact)
    meta = learner.meta_model
    ref = slope_effect(meta, exact) if meta is not None else None
    out: dict[str, dict[str, float | None]] = {
        "exact": {"cosine": 1.0, "norm_ratio": 1.0, "slope_effect": ref, "slope_share": 1.0 if ref else None}}
    for name, layers in groups.items():
        g = learner.meta_gradient(x, y, x_meta, y_meta, meta_grad="exact", layers=layers)
        f = _flat(g)
        denom = float(f.norm() * fe.norm())
        eff = slope_effect(meta, g) if meta is not None else None
        out[name] = {"cosine": float(f @ fe) / denom if denom > 0 else None,
                     "norm_ratio": float(f.norm() / fe.norm()) if float(fe.norm()) > 0 else None,
                     "slope_effect": eff, "slope_share": eff / ref if eff is not None and ref else None}
    return out
