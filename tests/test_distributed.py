"""Data-parallel training over torch.distributed: 2 gloo processes on the CPU reproduce one process
on the union batch; a rank that fails stops the whole job. The 2-process runs start here
(``torch.multiprocessing.spawn`` and ``torchrun``); the helpers they run are in ``dist_helpers``."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from torch import nn

import famus
from famus import distributed as fdist
from famus.data import Augmenter
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from tests import dist_helpers as H

pytestmark = pytest.mark.skipif(
    not (torch.distributed.is_available() and torch.distributed.is_backend_available("gloo")),
    reason="needs torch.distributed with gloo",
)

ROOT = Path(__file__).resolve().parents[1]
# a famus.train run inside a process group the caller made (ERM: the DDP-style gradient average)
ERM_RUN = dict(dataset="digits", model="mlp", model_options={"hidden": 32}, method="erm", epochs=1, batch_size=64,
               train_subset=700, meta_per_class=10, lr=0.05, progress=False, threads=1, noise="symmetric",
               noise_rate=0.4)


@pytest.fixture(autouse=True)
def _single_thread(one_thread):
    """Every test here runs on one thread (the shared ``one_thread`` fixture in tests/conftest.py)."""


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """Every case of ``dist_helpers.CASES`` (and an ERM ``famus.train`` run) on 2 spawned gloo ranks."""
    d = tmp_path_factory.mktemp("two_ranks")
    config = dict(ERM_RUN, out=str(d / "erm"))
    mp.spawn(H.spawn_worker, args=(str(d / "store"), str(d), list(H.CASES), config), nprocs=2, join=True)
    return [torch.load(d / f"rank{r}.pt", weights_only=False) for r in range(2)], d


# ---------------------------------------------------------------------- the meta step, 2 ranks vs 1 process
TIGHT = dict(rtol=1e-9, atol=1e-12)
META = dict(rtol=1e-8, atol=1e-10)  # Adam divides by sqrt(v): near-zero gradient entries amplify rounding
FD = dict(rtol=1e-7, atol=1e-9)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(H.CASES))
def test_two_ranks_equal_one_process_on_the_union_batch(two_ranks, name):
    """K steps on 2 ranks (each on its shard) = K steps of one process on the union batch: model, meta
    model, samplers, losses, weights and gates. BN: SyncBatchNorm vs plain BN (``-sync``), or per-rank
    statistics vs a BN normalizing each half of the batch apart (``-rank``)."""
    (ranks, _), ref = two_ranks, H.run_case(name)
    r0, r1 = ranks[0][name], ranks[1][name]
    tight, meta = (FD, FD) if H.CASES[name].get("fd") else (TIGHT, META)
    init = {k: v.detach() for k, v in H.make_model().named_parameters()}
    assert max(float((ref["params"][k] - init[k]).abs().max()) for k in init) > 1e-3  # it trained
    for k, want in ref["params"].items():
        assert torch.equal(r0["params"][k], r1["params"][k]), k  # the replicas stay identical
        torch.testing.assert_close(r0["params"][k], want, **tight, msg=lambda m, k=k: f"{name} {k}: {m}")
    for k, want in ref.get("meta", {}).items():
        assert torch.equal(r0["meta"][k], r1["meta"][k]), k
        torch.testing.assert_close(r0["meta"][k], want, **meta, msg=lambda m, k=k: f"{name} meta {k}: {m}")
    assert ("samplers" in ref) == ("samplers" in r0)
    for a, b, want in zip(r0.get("samplers", []), r1.get("samplers", []), ref.get("samplers", [])):
        assert torch.equal(a, b)
        torch.testing.assert_close(a, want, **meta)
    for step, (sa, sb, want) in enumerate(zip(r0["stats"], r1["stats"], ref["stats"])):
        for key in ("train_loss", "meta_loss"):  # meta_loss is NaN on steps without a meta update
            assert torch.equal(sa[key], sb[key]) or bool(sa[key].isnan() & sb[key].isnan())
            torch.testing.assert_close(sa[key], want[key], **tight, equal_nan=True,
                                       msg=lambda m, s=step, k=key: f"step {s} {k}: {m}")
        torch.testing.assert_close(torch.cat([sa["weights"], sb["weights"]]), want["weights"], **tight)
        assert sa["gates"] == sb["gates"] == want["gates"], step
    assert r0["meta_loss"] == r1["meta_loss"] == pytest.approx(ref["meta_loss"], rel=1e-9)
    for k, want in ref["meta_gradient"].items():  # L2R's eps: each rank has its shard's slice
        got = torch.cat([r0["meta_gradient"][k], r1["meta_gradient"][k]]) if k == "eps" else r0["meta_gradient"][k]
        torch.testing.assert_close(got, want, **tight, msg=lambda m, k=k: f"{name} meta_gradient {k}: {m}")


def test_the_compared_cases_cover_every_engine():
    """A newly registered engine needs a 2-rank case above before it can be called data-parallel."""
    assert {case["engine"] for case in H.CASES.values()} == set(famus.ENGINES.names())


@pytest.mark.slow
def test_famus_gates_vary_in_the_compared_runs(two_ranks):
    """The FaMUS comparisons are not trivial: gates switch layers on and off across steps."""
    ranks, _ = two_ranks
    gates = [s["gates"] for s in ranks[0]["mwnet-famus-sync"]["stats"]]
    assert {v for g in gates for v in g.values()} == {0.0, 1.0}


@pytest.mark.slow
def test_helpers_on_two_ranks(two_ranks):
    ranks, _ = two_ranks
    for res in ranks:
        h = res["helpers"]
        assert torch.equal(h["averaged"], torch.full((2,), 0.5))
        assert torch.equal(h["sums"][0], torch.tensor([2.0, 1.0])) and h["sums"][1] is None
        assert float(h["sums"][2]) == 1.0
        assert float(h["broadcast"]) == 5.0  # rank 0's value
        assert torch.equal(h["draw"], ranks[0]["helpers"]["draw"])  # the same random stream
    assert ranks[1]["helpers"]["agree"] == "ValueError: bad input on rank 1"
    assert ranks[0]["helpers"]["agree"] == "RuntimeError: rank 1 failed: ValueError: bad input on rank 1"


@pytest.mark.slow
def test_famus_train_inside_a_process_group_equals_one_process(two_ranks, tmp_path):
    """``famus.train`` called on 2 ranks of a group the caller initialized (ERM, per-rank shards of
    each batch, sharded evaluation): rank 0 writes the run folder, both return its summary, and the
    model equals one process's on the same global batches."""
    ranks, d = two_ranks
    assert ranks[0]["train"] == ranks[1]["train"]
    rows = (d / "erm" / "metrics.jsonl").read_text().splitlines()
    assert len(rows) == 1 and json.loads(rows[0])["epoch"] == 1  # written once, by rank 0
    info = json.loads((d / "erm" / "run.json").read_text())
    assert info["world_size"] == 2 and info["backend"] == "gloo"
    one = train(TrainConfig(**ERM_RUN, out=str(tmp_path / "one")))
    assert ranks[0]["train"]["best_test_acc"] == pytest.approx(one["best_test_acc"], abs=1e-6)
    a, b = load_checkpoint(d / "erm" / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert a["step"] == b["step"] > 0
    a_model, b_model = a["nets"][0]["model"], b["nets"][0]["model"]
    for k in b_model:
        torch.testing.assert_close(a_model[k], b_model[k], rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- torchrun -m famus train
def torchrun(args: list[str], timeout: float, **env) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m famus train ARGS`` (a free port is picked)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "famus", "train", *args]
    # PYTHONHASHSEED 0: the interpreter's teardown order under which a rank used to abort at exit ("terminate
    # called without an active exception") while the group's store outlived destroy_process_group
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0", **env}
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


CLI = ["--dataset", "digits", "--model", "lenet", "--set", "model_options.width=4", "--set", "model_options.hidden=16",
       "--train-subset", "700", "--meta-per-class", "10", "--batch-size", "64", "--method", "mwnet",
       "--meta-grad", "exact", "--lr", "0.05", "--threads", "1", "--no-progress", "--noise", "symmetric",
       "--noise-rate", "0.4"]


@pytest.mark.slow
def test_torchrun_sync_bn_with_resume_equals_one_process(tmp_path):
    """2 processes under torchrun (SyncBatchNorm), 1 epoch, then --resume to 2 epochs: the same model
    and metrics as one process running 2 epochs on the same global batches.

    float32 over two epochs: summation order differs between 1 and 2 processes, so discrete
    outcomes (FaMUS gate near-ties, test predictions) are compared in the float64 step tests
    instead, and test accuracy here to within two test examples."""
    out = tmp_path / "two"
    for epochs, more in (("1", []), ("2", ["--resume"])):
        p = torchrun([*CLI, "--set", "sync_bn=true", "--epochs", epochs, "--out", str(out), *more], timeout=120)
        assert p.returncode == 0, p.stderr[-3000:]
        assert p.stdout.count("best test accuracy") == 1  # rank 0 reports
    train(TrainConfig(dataset="digits", model="lenet", model_options={"width": 4, "hidden": 16}, train_subset=700,
                      meta_per_class=10, batch_size=64, method="mwnet", meta_grad="exact", lr=0.05, threads=1,
                      progress=False, epochs=2, noise="symmetric", noise_rate=0.4, out=str(tmp_path / "one")))
    a, b = load_checkpoint(out / "checkpoint.pt"), load_checkpoint(tmp_path / "one" / "checkpoint.pt")
    assert a["step"] == b["step"] > 0
    a_model, b_model = a["nets"][0]["model"], b["nets"][0]["model"]
    for k in b_model:
        torch.testing.assert_close(a_model[k].double(), b_model[k].double(), rtol=1e-4, atol=1e-5)
    rows_a = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows_a] == [1, 2]
    for ra, rb in zip(rows_a, rows_b):
        for key in ("train_loss", "meta_loss", "clean_weight_share"):
            assert ra[key] == pytest.approx(rb[key], rel=1e-4, abs=1e-6), key
        assert ra["test_acc"] == pytest.approx(rb["test_acc"], abs=2 / 360)
    # the clean scores (running means of the meta weights, each rank scoring its shards) match one process
    scores = [[r.split(",")[-1] for r in (d / "example_scores.csv").read_text().splitlines()[1:]]
              for d in (out, tmp_path / "one")]
    seen = [[s != "" for s in run] for run in scores]  # examples never visited (ragged last batches) score ""
    assert seen[0] == seen[1] and sum(seen[0]) > 0.9 * len(seen[0])
    np.testing.assert_allclose(*(np.array([float(s) for s in run if s]) for run in scores), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
def test_torchrun_a_failing_rank_fails_the_job(tmp_path):
    """Rank 1 raises mid-run: the job exits non-zero with the error, and nothing waits forever."""
    t0 = time.perf_counter()
    p = torchrun(["--dataset", "digits", "--model", "tests.dist_helpers:failing_model", "--meta-per-class", "10",
                  "--batch-size", "64", "--epochs", "2", "--method", "mwnet", "--meta-grad", "exact", "--no-progress",
                  "--set", "dist_timeout_s=30", "--out", str(tmp_path / "run")], timeout=90, FAMUS_TEST_FAIL_AT="5")
    assert p.returncode != 0
    assert time.perf_counter() - t0 < 60
    assert "injected failure on rank 1 at forward pass 5" in p.stdout + p.stderr
    assert not (tmp_path / "run" / "checkpoint.pt").exists()  # it failed within the first epoch


# ---------------------------------------------------------------------- one process: nothing changes
def test_helpers_are_the_identity_without_a_process_group():
    assert not fdist.is_distributed() and fdist.world_size() == 1 and fdist.rank() == 0 and fdist.is_main()
    t = torch.randn(3)
    assert fdist.all_reduce_sum(t) is t and fdist.global_sum(t) is t
    out = fdist.sum_over_ranks([t, None])
    assert out[0] is t and out[1] is None
    assert fdist.mean_over_ranks([t])[0] is t
    assert fdist.same_on_all_ranks(t) is t
    assert fdist.shard(10) == slice(0, 10)
    assert fdist.broadcast_object({"a": 1}) == {"a": 1}
    with pytest.raises(ValueError, match="plain"), fdist.agree_on_errors():
        raise ValueError("plain")
    assert fdist.to_union([t, None], "mean") == [t, None]
    with pytest.raises(ValueError, match="reduction rule"):
        fdist.to_union([t], "max")


def test_sync_batchnorm_alone_is_batchnorm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 2),
                          nn.BatchNorm1d(2, momentum=None))
    ref = copy.deepcopy(model)
    params = {id(p) for p in model.parameters()}
    conv = fdist.convert_sync_batchnorm(model)
    assert isinstance(conv[1], fdist.SyncBatchNorm) and isinstance(conv[4], fdist.SyncBatchNorm)
    assert {id(p) for p in conv.parameters()} == params  # the optimizer's tensors are kept
    assert list(conv.state_dict()) == list(ref.state_dict())
    x = torch.randn(5, 2, 6, 6)
    for mode in (True, False):
        conv.train(mode)
        ref.train(mode)
        torch.testing.assert_close(conv(x), ref(x))
    for k, v in ref.state_dict().items():
        torch.testing.assert_close(conv.state_dict()[k], v)


def test_augmenter_rows_give_the_shard_of_the_whole_batch():
    aug = Augmenter([0.5], [0.25], crop=6, padding=2, flip=True)
    x = torch.randint(0, 256, (8, 1, 6, 6), dtype=torch.uint8)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    whole = aug(x, g1)
    part = aug(x, g2, rows=slice(4, 8))
    assert torch.equal(part, whole[4:8])
    assert torch.equal(g1.get_state(), g2.get_state())


def test_distributed_config_keys():
    cfg = TrainConfig()
    assert cfg.sync_bn is False and cfg.dist_timeout_s > 0
    with pytest.raises(ValueError, match="dist_timeout_s"):
        TrainConfig(dist_timeout_s=0).validate()
