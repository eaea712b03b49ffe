"""method_options and engine_options go to their owner, and only to it."""

import pytest
import torch
import torch.nn.functional as F

import famus
from famus.meta import METHODS, build_engine, build_method
from famus.meta.layers import layer_infos
from famus.meta.options import option_names
from famus.train import TrainConfig, train

from .conftest import FD, FORWARD, FaMUS, SecondOrder, TinyResNet, engines, make_batches, methods


def _learner(**kw):
    """An MW-Net learner over FaMUS: both take ``hidden``."""
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


def test_flat_keywords_are_deprecated_and_go_to_their_one_owner():
    with pytest.warns(DeprecationWarning, match="method_options"):
        learner = _learner(k=2, meta_lr=0.5)
    assert learner.engine.k == 2 and learner.method.meta_optimizer.param_groups[0]["lr"] == 0.5
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="both the method and the engine take"):
        _learner(hidden=7)  # MW-Net's width or the samplers'? No guess: say which
    with pytest.warns(DeprecationWarning), pytest.raises(TypeError, match="unknown option 'kk'.*valid engine options"):
        _learner(kk=3)


def test_options_for_an_already_built_method_or_engine_are_an_error():
    model = TinyResNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(TypeError, match="method_options.*already built"):
        famus.MetaLearner(model, opt, famus.meta.MWNet(), "exact", method_options={"meta_lr": 1.0})
    with pytest.raises(TypeError, match="engine_options.*already built"):
        famus.MetaLearner(model, opt, "mwnet", build_engine("fd"), engine_options={"fd_eps": 1e-3})


@pytest.mark.parametrize("name", methods())
def test_every_method_takes_loss_fn_and_regularizer_at_construction(name):
    """What pseudo mode needs: its MixMatch loss and prior penalty passed in, not patched onto the method."""
    calls = []

    def loss_fn(z, y):
        calls.append(z.shape)
        return F.cross_entropy(z, y, reduction="none")

    takes = METHODS.get(name).takes_loss_fn
    method = build_method(name, loss_fn=loss_fn if takes else None, regularizer=lambda z: z.pow(2).sum())
    plain = build_method(name)
    n, c = 5, 3
    for m in (method, plain):
        m.bind(c, torch.device("cpu"), torch.float64)
    theta = plain.meta_params(n, torch.zeros((), dtype=torch.float64))
    z, y = torch.randn(n, c, dtype=torch.float64), torch.randint(0, c, (n,))
    got, _ = method.loss(z, y, theta)
    want, _ = plain.loss(z, y, theta)
    torch.testing.assert_close(got, want + z.pow(2).sum())
    assert calls == ([(n, c)] if takes else [])


def test_every_registered_factory_lists_its_options():
    for name in methods():
        assert {"loss_fn", "regularizer"} <= set(option_names(METHODS.get(name)))
    for name in engines(policy=FaMUS):  # one FaMUS engine, its backend's options first
        names = option_names(famus.ENGINES.get(name))
        assert {"k", "hidden", "lambda_g"} <= set(names), name
    fd_options = option_names(famus.ENGINES.get("fd"))
    for name in engines(backend=FD):
        assert option_names(famus.ENGINES.get(name))[: len(fd_options)] == fd_options
    with pytest.raises(TypeError, match=r"unknown engine option\(s\) \['kk'\] for 'famus-fd'; valid: fd_eps, scheme"):
        build_engine("famus-fd", kk=1)
    with pytest.raises(TypeError, match=r"unknown method option\(s\) \['k'\] for 'l2r'; valid: loss_fn, regularizer"):
        build_method("l2r", k=1)


def test_famus_is_one_engine_over_each_backend():
    built = {name: build_engine(name) for name in engines(policy=FaMUS)}
    assert {type(e) for e in built.values()} == {FaMUS}
    assert {type(e.backend) for e in built.values()} == {SecondOrder, *FORWARD}
    assert all(e.name == name for name, e in built.items())


def test_bench_runs_mlc_from_the_command_line(capsys):
    from famus.bench import main

    code = main(["--model", "small-resnet", "--input-shape", "1,8,8", "--batch-size", "8", "--num-classes", "3",
                 "--method", "mlc", "--engines", "exact,fd,famus", "--repeats", "1", "--warmup", "0", "--threads", "1"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert all(f"\n{e} " in out for e in ("exact", "fd", "famus")), out


def test_an_engine_over_a_backend_of_your_choice_is_not_named_as_the_default():
    """``AllLayers(FD())`` is the fd gradient: the learner must not file it as ``exact``."""
    from famus.meta.engines.fixed import AllLayers

    assert AllLayers().name == "exact" and AllLayers(FD()).name == "exact(FD)"
    assert FaMUS(FD()).name == "famus(FD)" and famus.build_engine("famus-fd").name == "famus-fd"


def test_famus_takes_one_candidate_layer_as_a_string():
    model = TinyResNet()
    engine = famus.build_engine("famus", candidates="conv2")
    engine.bind(layer_infos(model), torch.device("cpu"), torch.float32)
    assert [i.name for i in engine.sampled] == ["conv2"]
