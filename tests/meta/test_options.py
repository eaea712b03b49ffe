"""method_options and engine_options go to their owner, and only to it."""

import pytest
import torch

import famus
from famus.train import TrainConfig, train

from .conftest import TinyResNet, make_batches


def _learner(**kw):
    torch.manual_seed(0)
    model = TinyResNet().double()
    return famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "famus", **kw)


def test_hidden_goes_to_its_owner():
    batch = make_batches()
    engine_side = _learner(engine_options={"hidden": 7})
    engine_side.bind(batch[0])
    assert engine_side.meta_model[0].out_features == 100  # MW-Net's default width, untouched
    assert {s.fc1.out_features for s in engine_side.engine.samplers.values()} == {7}
    method_side = _learner(method_options={"hidden": 9})
    method_side.bind(batch[0])
    assert method_side.meta_model[0].out_features == 9
    assert {s.fc1.out_features for s in method_side.engine.samplers.values()} == {128}


def test_unknown_explicit_option_lists_the_valid_ones():
    with pytest.raises(TypeError, match="unknown engine option.*kk.*valid: .*lambda_g"):
        _learner(engine_options={"kk": 3})
    with pytest.raises(TypeError, match="unknown method option.*meta_lrr"):
        _learner(method_options={"meta_lrr": 3})


def test_config_engine_options_reach_the_engine_only(tmp_path, one_thread):
    out = tmp_path / "run"
    train(TrainConfig(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, epochs=1, method="mwnet",
                      meta_grad="famus", engine_options={"hidden": 6}, progress=False, out=str(out)))
    from famus.train.checkpoint import load_checkpoint

    state = load_checkpoint(out / "checkpoint.pt")["nets"][0]["learner"]
    assert state["method"]["meta_model"]["0.weight"].shape == (100, 1)
    sampler = state["engine"]["samplers"]
    assert all(v.shape[0] == 6 for k, v in sampler.items() if k.endswith("fc1.weight"))


def test_meta_gradient_of_a_block_by_name():
    learner = _learner()
    batch = make_batches()
    got = learner.meta_gradient(*batch, meta_grad="block", layers=["fc"])
    want = learner.meta_gradient(*batch, meta_grad="exact", layers=["fc"])
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=1e-12, atol=1e-15)
