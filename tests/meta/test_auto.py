"""``auto``: exact's or fd's backend, whichever times faster on the first meta step; the trials change nothing."""

import pytest
import torch

import famus
from famus.meta.engines.auto import Auto

from .conftest import TinyResNet, make_batches


def _learner(engine_options=None, seed=0):
    torch.manual_seed(seed)
    model = TinyResNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    return famus.MetaLearner(model, opt, "mwnet", "auto", seed=1, engine_options=engine_options)


def _rel(a, b):
    return max(float((a[k] - b[k]).norm() / b[k].norm()) for k in b)


@pytest.mark.parametrize("choice", ["exact", "fd"])
def test_a_pinned_choice_is_that_engines_meta_gradient(choice):
    batch = make_batches()
    learner = _learner({"choice": choice})
    got = learner.meta_gradient(*batch)
    want = learner.meta_gradient(*batch, meta_grad=choice)
    assert _rel(got, want) == 0.0
    assert learner.engine.state_dict() == {"choice": choice}


def test_the_timed_choice_is_one_candidate_and_the_trials_change_no_state():
    batch = make_batches()
    timed, pinned = _learner(), _learner()
    timed.bind(batch[0])
    buffers = {n: b.clone() for n, b in timed.model.named_buffers()}
    rng = torch.random.get_rng_state()
    res = timed.engine.compute(timed._batch(*batch), timed.generator)
    assert timed.engine.choice in ("exact", "fd") and set(timed.engine.timings) == {"exact", "fd"}
    assert all(t > 0 for t in timed.engine.timings.values())
    assert torch.equal(torch.random.get_rng_state(), rng)  # the trials ran under a forked random state
    for n, b in timed.model.named_buffers():  # the model's BN statistics are untouched by the trials
        assert torch.equal(b, buffers[n]), n
    # the real call after the trials is the chosen engine's, as if no trial had run
    pinned.bind(batch[0])
    want = pinned.engine.candidates[timed.engine.choice](pinned._batch(*batch), None)
    for k in want.meta_grads:
        assert torch.equal(res.meta_grads[k], want.meta_grads[k]), k


def test_the_choice_survives_a_state_round_trip():
    batch = make_batches()
    learner = _learner()
    learner.step(*batch)
    state = learner.state_dict()
    other = _learner()
    other.bind(batch[0])
    other.load_state_dict(state)
    assert other.engine.choice == learner.engine.choice
    assert other.engine.backend is other.engine.candidates[learner.engine.choice]


def test_bad_options_are_refused():
    with pytest.raises(ValueError, match="choice must be one of exact, fd"):
        Auto(choice="jvp")
    with pytest.raises(ValueError, match="trials must be an int >= 1"):
        Auto(trials=0)
