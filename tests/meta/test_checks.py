"""MetaLearner's checks of what a user hands it: the optimizer, the batch's shape, labels and values."""

import warnings

import pytest
import torch
from torch import nn

import famus
from famus.meta import inputs as io


def _cnn(channels=1, classes=10):
    return nn.Sequential(nn.Conv2d(channels, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, classes))


def _learner(model, **kw):
    torch.manual_seed(0)
    return famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), **kw)


def _batch(shape, n=12, m=6, classes=10, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, *shape, generator=g), torch.randint(0, classes, (n,), generator=g),
            torch.randn(m, *shape, generator=g), torch.randint(0, classes, (m,), generator=g))


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


# --- the optimizer -------------------------------------------------------------------------------------------

def test_an_optimizer_over_another_model_is_refused():
    model, other = _cnn(), _cnn()
    with pytest.raises(ValueError, match="holds none of the 4 trainable parameters"):
        famus.MetaLearner(model, torch.optim.SGD(other.parameters(), lr=0.1))
    with pytest.raises(TypeError, match="torch.optim.Optimizer"):
        famus.MetaLearner(model, model.parameters())


def test_an_optimizer_over_part_of_the_model_warns_and_one_over_frozen_parameters_does_not():
    model = _cnn()
    with pytest.warns(UserWarning, match=r"holds 2 of the 4 trainable parameters.*0\.weight, 0\.bias"):
        famus.MetaLearner(model, torch.optim.SGD(model[4].parameters(), lr=0.1))
    model[0].requires_grad_(False)  # frozen on purpose: nothing to say
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        famus.MetaLearner(model, torch.optim.SGD(model[4].parameters(), lr=0.1))


# --- the model on the user's batch ---------------------------------------------------------------------------

def _fails(learner, batch):
    with pytest.raises(ValueError) as info:
        learner.step(*batch)
    assert info.value.__cause__ is not None  # the model's own error is chained
    return str(info.value)


def test_a_missing_channel_dimension_is_reported_with_the_users_shape():
    learner = _learner(_cnn())
    msg = _fails(learner, _batch((9, 9), n=12))
    assert msg.startswith("model(x) failed for your batch x of shape (12, 9, 9) in layer 0 (Conv2d(1, 4")
    assert msg.endswith("add the channel dimension with x.unsqueeze(1)")
    assert learner.layer_infos is None  # nothing was bound: the corrected batch binds afresh
    x, y, xm, ym = _batch((9, 9), n=12)
    learner.step(x.unsqueeze(1), y, xm.unsqueeze(1), ym)


@pytest.mark.parametrize("model,shape,hint", [
    (_cnn(3), (9, 9, 3), "x looks channels-last: use x.permute(0, 3, 1, 2)"),
    (_cnn(3), (1, 9, 9), "the Conv2d expects 3 input channels, its input has 1"),
    (nn.Sequential(nn.Linear(81, 8), nn.ReLU(), nn.Linear(8, 10)), (9, 9),
     "a Linear expects (n, 81) features: flatten the examples with x.flatten(1)"),
    (nn.Sequential(nn.Linear(81, 10)), (80,), "the model's first Linear expects 81 features per example, x has 80"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2 * 7 * 7, 10)), (1, 12, 12),
     "its Linear expects 98 features and gets 200: was the model built for inputs of another size than x's "
     "(1, 12, 12)?"),
])
def test_shape_mistakes_name_the_users_batch_and_the_fix(model, shape, hint):
    msg = _fails(_learner(model), _batch(shape))
    assert f"your batch x of shape (12, {', '.join(map(str, shape))})" in msg
    assert msg.endswith(hint)


def test_a_dtype_mistake_names_the_conversion():
    x, y, xm, ym = _batch((1, 9, 9))
    msg = _fails(_learner(_cnn()), ((x * 50).clamp(0, 255).to(torch.uint8), y, xm, ym))
    assert msg.endswith("x is torch.uint8; the model computes in torch.float32: convert with x.float() / 255")


class _Reshapes(nn.Module):
    """A model that folds the batch into its rows: ``view(-1, 9)`` on (n, 2, 9) inputs."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(9, 10)

    def forward(self, x):
        return self.fc(x.view(-1, 9))


def test_a_model_that_loses_the_batch_dimension_is_named():
    msg = _fails_plain(_learner(_Reshapes()), _batch((2, 9)))
    assert "model(x) returned shape (4, 10) for the first 2 examples of your batch x of shape (12, 2, 9)" in msg
    assert msg.endswith("use x.flatten(1)")
    msg = _fails_plain(_learner(nn.Sequential(nn.Linear(9, 10))), _batch((3, 9)))
    assert "returned shape (2, 3, 10)" in msg and "2-d, got 3-d" in msg


def _fails_plain(learner, batch):
    with pytest.raises(ValueError) as info:
        learner.step(*batch)
    return str(info.value)


def test_inputs_of_another_rank_than_the_meta_batch_are_refused():
    x, y, xm, ym = _batch((1, 9, 9))
    with pytest.raises(ValueError, match=r"x has shape \(12, 1, 9, 9\) but x_meta shape \(6, 9, 9\)"):
        _learner(_cnn()).step(x, y, xm[:, 0], ym)


def test_describe_names_every_tensor():
    assert io.describe(torch.zeros(3, 4)) == "shape (3, 4)"
    assert io.describe((torch.zeros(3, 4), torch.zeros(3))) == "shapes (3, 4) and (3,)"
    assert io.describe({"ids": torch.zeros(3, 5), "mask": torch.zeros(3, 5)}) == "shapes ids (3, 5), mask (3, 5)"


# --- labels --------------------------------------------------------------------------------------------------

def test_labels_counted_from_one_are_named_with_the_fix():
    x, _, xm, ym = _batch((1, 9, 9))
    y = torch.arange(12) % 10  # every class: labels 1..10 reach 10
    learner = _learner(_cnn())
    with pytest.raises(ValueError, match=r"y holds \[10.*outputs 10 classes \(labels 0\.\.9\); if they count from 1, "
                                         "subtract 1"):
        learner.step(x, y + 1, xm, ym)
    with pytest.raises(ValueError, match=r"y_meta holds \[14\].*give the model 15 outputs"):
        learner.step(x, y, xm, torch.cat([ym[:-1], torch.tensor([14])]))
    soft = torch.softmax(torch.randn(12, 7), 1)
    with pytest.raises(ValueError, match="soft targets y have 7 columns but model.x. returns 10 classes"):
        learner.step(x, soft, xm, ym)


def test_labels_are_checked_on_every_cpu_step():
    x, y, xm, ym = _batch((1, 9, 9))
    learner = _learner(_cnn())
    learner.step(x, y, xm, ym)
    bad = y.clone()
    bad[3] = -1
    with pytest.raises(ValueError, match=r"y holds \[-1\]"):
        learner.step(x, bad, xm, ym)


# --- non-finite inputs ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("first", [True, False])
def test_non_finite_inputs_are_refused_before_the_step(first):
    x, y, xm, ym = _batch((1, 9, 9))
    learner = _learner(_cnn())
    if not first:
        learner.step(x, y, xm, ym)
    before = _weights(learner.model)
    bad = x.clone()
    bad[5, 0, 2, 2], bad[7, 0, 0, 0], bad[7, 0, 1, 1] = float("nan"), float("inf"), -float("inf")
    with pytest.raises(ValueError, match=r"your batch x holds 3 NaN or infinite values, in 2 of the batch's 12 "
                                         r"examples \(the first: example 5\)"):
        learner.step(bad, y, xm, ym)
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(learner.model)))  # refused, not taken
    with pytest.raises(ValueError, match="NaN or infinite"):
        learner.plain_step(bad, y)


def test_a_non_finite_meta_batch_is_skipped_and_counted_not_refused():
    x, y, xm, ym = _batch((1, 9, 9))
    bad = xm.clone()
    bad[2, 0, 4, 4] = float("nan")
    learner = _learner(_cnn())
    with pytest.warns(UserWarning, match=r"x_meta holds 1 NaN or infinite values.*meta update is skipped"):
        stats = learner.step(x, y, bad, ym)
    assert float(stats.meta_skipped) == 1.0
    assert all(torch.isfinite(p).all() for p in learner.model.parameters())


def test_nonfinite_is_a_device_flag_over_floating_tensors():
    ok = {"ids": torch.arange(6).view(2, 3), "x": torch.zeros(2, 3)}
    flag = io.nonfinite(ok)
    assert isinstance(flag, torch.Tensor) and flag.dim() == 0 and not bool(flag)
    assert bool(io.nonfinite({**ok, "x": torch.tensor([[0.0, float("inf"), 0], [0, 0, 0]])}))
    assert io.nonfinite({"ids": torch.arange(6).view(2, 3)}) is None  # token ids only: nothing to check


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="the late check runs on CUDA devices only")


@needs_cuda
def test_on_a_gpu_later_batches_are_checked_without_a_host_sync():
    x, y, xm, ym = (t.cuda() for t in _batch((1, 9, 9)))
    learner = _learner(_cnn().cuda())
    learner.step(x, y, xm, ym)  # the first batch: checked at once
    learner._check_values(x, y, xm, ym)  # the late flag and its pinned host copy exist
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            learner._check_values(x, y, xm, ym)  # raises if anything waits for the device
    finally:
        torch.cuda.set_sync_debug_mode("default")


@needs_cuda
def test_on_a_gpu_a_later_non_finite_batch_is_refused_a_few_steps_late():
    x, y, xm, ym = (t.cuda() for t in _batch((1, 9, 9)))
    learner = _learner(_cnn().cuda())
    learner.step(x, y, xm, ym)
    bad = x.clone()
    bad[0, 0, 0, 0] = float("nan")
    learner.step(bad, y, xm, ym)  # step 2: taken, its flag on its way to the host
    with pytest.raises(ValueError, match=r"held NaN or infinite values in a step between steps \d+ and \d+"):
        for _ in range(20):
            torch.cuda.synchronize()  # the copy has landed by the next poll
            learner.step(x, y, xm, ym)
