"""Per-layer contributions (Eq. 7): they add up to the exact meta gradient."""

import pytest
import torch

from famus import MetaLearner
from famus.meta.diagnostics import default_groups, layer_contributions, slope_effect

from .conftest import make_batches


def test_groups_partition_and_add_up_to_exact(tiny):
    model, batch = tiny
    learner = MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "exact",
                          method_options={"hidden": 8})
    learner.bind(batch[0])
    groups = default_groups(learner)
    assert sorted(n for layers in groups.values() for n in layers) == sorted(i.name for i in learner.layer_infos)
    rows = layer_contributions(learner, *batch, groups=groups)
    # additive: the groups' slope effects and gradients sum to the exact ones
    assert sum(rows[g]["slope_effect"] for g in groups) == pytest.approx(rows["exact"]["slope_effect"], rel=1e-9)
    assert sum(rows[g]["slope_share"] for g in groups) == pytest.approx(1.0, rel=1e-9)
    total = None
    for layers in groups.values():
        g = learner.meta_gradient(*batch, meta_grad="exact", layers=layers)
        total = g if total is None else {k: total[k] + g[k] for k in g}
    exact = learner.meta_gradient(*batch, meta_grad="exact")
    for k in exact:
        torch.testing.assert_close(total[k], exact[k], rtol=1e-9, atol=1e-12)
    assert all(-1.0 - 1e-12 <= rows[g]["cosine"] <= 1.0 + 1e-12 for g in groups)


def test_slope_effect_sign():
    meta = torch.nn.Sequential(torch.nn.Linear(1, 1), torch.nn.Sigmoid()).double()
    with torch.no_grad():
        meta[0].weight.fill_(0.0)
        meta[0].bias.fill_(0.0)
    # a gradient that lowers the slope weight: a descent step raises it, so V rises with the loss
    up = slope_effect(meta, {"0.weight": torch.tensor([[-1.0]], dtype=torch.float64),
                             "0.bias": torch.zeros(1, dtype=torch.float64)})
    assert up > 0
    down = slope_effect(meta, {"0.weight": torch.tensor([[1.0]], dtype=torch.float64),
                               "0.bias": torch.zeros(1, dtype=torch.float64)})
    assert down == pytest.approx(-up)


def test_l2r_has_no_slope(tiny):
    model, _ = tiny
    batch = make_batches(seed=1)
    learner = MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "l2r", "exact")
    rows = layer_contributions(learner, *batch)
    assert rows["exact"]["slope_effect"] is None and rows["fc"]["slope_share"] is None
    assert rows["fc"]["cosine"] is not None
