"""The training-method registry: every ``--method`` name trains through the one API, and an unknown one
lists them all."""

import pytest

from famus.meta import METHODS
from famus.registry import UnknownNameError
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from famus.train.methods import TRAINING_METHODS, check_method, is_meta

COMMON = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, lr=0.05, progress=False, threads=1,
              noise="symmetric", noise_rate=0.4, epochs=1, train_subset=600)
OPTIONS = {"prune": {"folds": 2}}  # the fewest folds: a quick run


def test_the_registry_holds_erm_every_meta_method_and_the_baselines():
    assert set(TRAINING_METHODS) == {"erm", "coteaching", "prune", *METHODS.names()}
    assert [m for m in TRAINING_METHODS if is_meta(m)] == METHODS.names()
    with pytest.raises(UnknownNameError, match="unknown method 'nope'; valid methods: coteaching, erm, l2r, mlc"):
        check_method(TrainConfig(method="nope"))


@pytest.mark.parametrize("method", TRAINING_METHODS.names())
def test_every_method_trains_from_the_api(tmp_path, method):
    out = tmp_path / method
    summary = train({**COMMON, "method": method, "method_options": OPTIONS.get(method, {}), "out": str(out)})
    assert summary["epochs"] == 1 and 0.1 < summary["last_test_acc"] <= 1.0
    ck = load_checkpoint(out / "checkpoint.pt")
    assert len(ck["nets"]) == (2 if method == "coteaching" else 1)
    assert (ck["nets"][0]["learner"] is not None) == is_meta(method)


@pytest.mark.parametrize("method", ["coteaching", "prune"])
def test_baselines_refuse_several_processes(monkeypatch, method):
    import famus.distributed as fdist
    from famus.train.loop import _check_distributed

    monkeypatch.setattr(fdist, "world_size", lambda: 2)
    with pytest.raises(ValueError, match=f"--method {method} does not run on several processes"):
        _check_distributed(TrainConfig(dataset="digits", method=method))


def test_coteaching_takes_bf16_and_a_loss(tmp_path):
    summary = train({**COMMON, "method": "coteaching", "amp": "bf16", "loss": "focal", "epochs": 2,
                     "out": str(tmp_path / "r")})
    assert summary["epochs"] == 2 and summary["last_test_acc"] > 0.3


def test_unset_method_and_loss_take_the_recommended_recipe():
    from famus.train.config import TrainConfig
    from famus.train.methods import RECOMMENDED

    trusted = TrainConfig(dataset="digits").validate()  # meta_per_class 100: a trusted set is held out
    assert (trusted.method, trusted.loss) == (RECOMMENDED["trusted"]["method"], RECOMMENDED["trusted"]["loss"])
    none = TrainConfig(dataset="digits", meta_per_class=0).validate()
    assert (none.method, none.loss) == (RECOMMENDED["no trusted set"]["method"], RECOMMENDED["no trusted set"]["loss"])
    pseudo = TrainConfig(dataset="digits", meta_set="pseudo").validate()
    assert (pseudo.method, pseudo.loss) == (RECOMMENDED["pseudo"]["method"], RECOMMENDED["pseudo"]["loss"])
    # a method given keeps its plain loss; a loss given is kept
    assert TrainConfig(dataset="digits", method="erm", meta_per_class=0).validate().loss == "ce"
    assert TrainConfig(dataset="digits", meta_per_class=0, loss="gce").validate().loss == "gce"


def test_unset_meta_update_keys_take_the_default_recipe():
    from famus.meta.recipe import default_recipe
    from famus.train.config import TrainConfig

    for method in ("mwnet", "mlc", "l2r"):
        cfg = TrainConfig(dataset="digits", method=method).validate()
        r = default_recipe(method)
        assert (cfg.meta_grad, cfg.meta_every, cfg.meta_dense) == (r.engine, r.every, r.dense)
    assert default_recipe("l2r").engine == "auto" and default_recipe("mwnet").engine == "auto+lagged"
    given = TrainConfig(dataset="digits", method="mwnet", meta_grad="exact", meta_every=1).validate()
    assert (given.meta_grad, given.meta_every, given.meta_dense) == ("exact", 1, default_recipe("mwnet").dense)
    # a meta update on every step (the paper's algorithm) takes the recipe's engine unlagged
    every_step = TrainConfig(dataset="digits", method="mwnet", meta_every=1, meta_dense=0).validate()
    assert (every_step.meta_grad, every_step.meta_every) == ("auto", 1)
    assert TrainConfig(dataset="digits", method="mwnet", meta_every=3).validate().meta_grad == "auto+lagged"
