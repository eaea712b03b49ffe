"""Co-teaching (``--method coteaching``): which examples each network keeps and trains on, the forget-rate
schedule and estimate, a whole run (two networks, evaluation, checkpoints) and exact resume."""

import json
import math

import pytest
import torch
from torch import nn

import famus.train.coteaching as coteaching
import famus.train.loop as loop
from famus.cli import main
from famus.train import TrainConfig, train
from famus.train.batches import Batch
from famus.train.checkpoint import load_checkpoint
from famus.train.coteaching import CoTeachingSource, estimate_forget_rate, small_loss
from famus.train.data import prepare_data
from famus.train.methods import CoTeachingOptions
from famus.train.nets import Net, build_net
from famus.train.step import Precision
from tests.train.test_run_folder import _interrupt_after, assert_same_run

COMMON = dict(dataset="digits", model="mlp", method="coteaching", meta_per_class=10, batch_size=64, lr=0.05,
              progress=False, threads=1, noise="symmetric", noise_rate=0.4)
ITERS = (1437 - 100) // 64  # digits' training set after the 10-per-class trusted set


def _rows(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _net(margins):
    """A network whose logit for example ``i`` (input: the one-hot ``e_i``) is ``(0, margins[i])``: with label 0
    its loss is ``softplus(margins[i])``, so the ranking is the margins'; SGD at lr 1 changes column ``i`` of
    its weight only if example ``i`` is in its update."""
    model = nn.Linear(len(margins), 2, bias=False).double()
    with torch.no_grad():
        model.weight.zero_()
        model.weight[1] = torch.tensor(margins, dtype=torch.float64)
    return Net(model, torch.optim.SGD(model.parameters(), lr=1.0))


@pytest.fixture(scope="module")
def source():
    cfg = TrainConfig(**COMMON, epochs=1)
    return CoTeachingSource(cfg, prepare_data(cfg), torch.Generator(), 64, ITERS)


@pytest.mark.parametrize("forget, keep", [(0.5, 3), (0.3, 4), (0.0, 6), (0.9, 1)])
def test_each_network_trains_on_the_small_loss_examples_of_the_other(source, forget, keep):
    """A keeps its ``int((1 - R) n)`` smallest-loss examples, and B trains on exactly those; and the reverse."""
    a = _net([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0])  # A's losses grow with the row: A keeps the first rows
    b = _net([2.5, 1.5, 0.5, -0.5, -1.5, -2.5])  # B's fall: B keeps the last rows
    before = [net.model.weight.detach().clone() for net in (a, b)]
    x, y = torch.eye(6, dtype=torch.float64), torch.zeros(6, dtype=torch.int64)
    corrupted = torch.tensor([False, True, False, True, False, True])
    source.forget = forget
    source._sums.zero_()
    loss = source.step(0, Batch(x, y, torch.arange(6), corrupted, None), [a, b], Precision(torch.device("cpu")))
    kept_a, kept_b = set(range(keep)), set(range(6 - keep, 6))
    changed = [set((net.model.weight.detach() != w).any(0).nonzero().flatten().tolist()) for net, w in
               zip((a, b), before)]
    assert changed == [kept_b, kept_a]  # A learned from B's choice, B from A's
    losses_a = nn.functional.softplus(torch.tensor([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0], dtype=torch.float64))
    losses_b = nn.functional.softplus(torch.tensor([2.5, 1.5, 0.5, -0.5, -1.5, -2.5], dtype=torch.float64))
    expected = (losses_a[sorted(kept_b)].mean() + losses_b[sorted(kept_a)].mean()) / 2
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    clean = sum(not corrupted[i] for i in kept_a) + sum(not corrupted[i] for i in kept_b)
    assert source._sums.tolist() == [clean, 2 * keep]  # the kept labels' precision: reporting only


def test_small_loss_breaks_ties_by_row():
    kept = small_loss([torch.tensor([1.0, 0.5, 0.5, 2.0]), torch.tensor([0.0, 0.0, 0.0, 0.0])], 2)
    assert [k.tolist() for k in kept] == [[1, 2], [0, 1]]


def test_forget_schedule():
    """R(e) = tau * min(e / T_k, 1) from the second epoch; T_k defaults to the paper's 10 epochs, ending by the
    run's last epoch."""
    opts = CoTeachingOptions(forget_rate=0.4, forget_epochs=4)
    assert [opts.forget_at(e, 0.4, 30) for e in range(7)] == pytest.approx([0, 0.1, 0.2, 0.3, 0.4, 0.4, 0.4])
    assert [CoTeachingOptions().ramp_epochs(n) for n in (1, 2, 5, 11, 24, 200)] == [1, 1, 4, 10, 10, 10]
    assert [CoTeachingOptions().forget_at(e, 0.5, 5) for e in range(5)] == pytest.approx([0, 0.125, 0.25, 0.375, 0.5])
    assert CoTeachingOptions().forget_at(3, None, 24) == 0.0  # tau not known (yet): nothing dropped


def test_estimate_is_the_high_loss_share_of_each_networks_gmm(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    clean = 0.2 + 0.05 * torch.randn(700, generator=gen)
    noisy = 3.0 + 0.3 * torch.randn(300, generator=gen)
    shares = {"a": torch.cat([clean, noisy]), "b": torch.cat([clean[:600], noisy, 3.0 + torch.rand(100)])}
    monkeypatch.setattr(coteaching, "eval_losses", lambda model, data, bs: shares[model])
    nets = [Net("a", None), Net("b", None)]
    assert estimate_forget_rate(nets, None, 100, seed=1) == pytest.approx((0.3 + 0.4) / 2, abs=0.005)


def test_a_run_trains_two_networks_estimates_tau_and_evaluates_both(tmp_path):
    out = tmp_path / "r"
    summary = train({**COMMON, "epochs": 2, "out": str(out)})  # the Python API, a dict of config keys
    rows = _rows(out)
    assert rows[0]["forget_rate"] is None and rows[0]["keep_rate"] == 1.0  # the first epoch keeps everything
    tau = rows[1]["forget_rate"]
    assert rows[1]["forget_rate_estimated"] and 0.2 < tau < 0.6  # realised noise 0.35
    assert rows[1]["keep_rate"] == pytest.approx(1 - tau)  # T_k = 1 for a 2-epoch run
    assert rows[1]["label_precision"] > rows[0]["label_precision"]  # small-loss examples are cleaner
    assert all({"test_acc", "test_acc_net1", "test_acc_net2"} <= r.keys() for r in rows)
    ck = load_checkpoint(out / "checkpoint.pt")
    assert len(ck["nets"]) == 2 and ck["step"] == 2 * ITERS and ck["source"]["forget_rate"] == tau
    assert not torch.equal(ck["nets"][0]["model"]["fc.weight"], ck["nets"][1]["model"]["fc.weight"])
    assert len(load_checkpoint(out / "model_best.pt")["models"]) == 2
    assert summary["clean_score"] == "prob_given_label" and summary["label_issues"]["auroc"] > 0.8


def test_the_estimate_comes_from_the_networks_after_the_first_epoch(tmp_path):
    """Resumed after epoch 1, the run's tau is the estimate from the checkpoint's networks (no labels but the
    given ones), and the run equals an uninterrupted one."""
    cfg = dict(COMMON, epochs=2)
    ref = tmp_path / "ref"
    train(TrainConfig(**cfg, out=str(ref)))
    out = tmp_path / "cut"
    train(TrainConfig(**{**cfg, "epochs": 1}, out=str(out)))
    ck = load_checkpoint(out / "checkpoint.pt")
    c = TrainConfig(**cfg, out=str(out)).validate()
    data = prepare_data(c)
    nets = [build_net(c, data, torch.device("cpu"), seed_offset=100 * k) for k in range(2)]
    for net, state in zip(nets, ck["nets"]):
        net.model.load_state_dict(state["model"])
    tau = estimate_forget_rate(nets, data, c.eval_batch_size, c.seed)
    train(TrainConfig(**cfg, out=str(out), resume=True))
    assert _rows(out)[1]["forget_rate"] == tau
    assert_same_run(out, ref)


def test_mid_epoch_resume_equals_uninterrupted(tmp_path, monkeypatch):
    cfg = dict(COMMON, epochs=3, checkpoint_every=7, method_options={"forget_epochs": 2})
    ref = tmp_path / "ref"
    train(TrainConfig(**{**cfg, "checkpoint_every": None}, out=str(ref)))
    out = tmp_path / "cut"
    seen = _interrupt_after(monkeypatch, loop, lambda s: s["epoch"] == 2 and s["position"] is not None)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**cfg, out=str(out)))
    assert seen == [42]  # in the third epoch (20 steps an epoch: one step trains both networks)
    monkeypatch.undo()
    train(TrainConfig(**cfg, out=str(out), resume=True))
    assert_same_run(out, ref)
    rows = _rows(out)
    assert [r["keep_rate"] for r in rows] == pytest.approx([1, 1 - rows[1]["forget_rate"] / 2,
                                                            1 - rows[1]["forget_rate"]])


def test_a_given_forget_rate_is_used_and_not_estimated(tmp_path, monkeypatch):
    monkeypatch.setattr(coteaching, "estimate_forget_rate", lambda *a: pytest.fail("estimated a given rate"))
    out = tmp_path / "r"
    train(TrainConfig(**COMMON, epochs=2, method_options={"forget_rate": 0.25}, out=str(out)))
    rows = _rows(out)
    assert [(r["forget_rate"], r["forget_rate_estimated"], r["keep_rate"]) for r in rows] == \
        [(0.25, False, 1.0), (0.25, False, 0.75)]
    assert all(math.isfinite(r["train_loss"]) for r in rows)


ARGS = ["train", "--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--epochs", "1", "--no-progress",
        "--method", "coteaching"]


@pytest.mark.parametrize("extra, needle", [
    (["--set", "method_options.forget_rate=1.0"], "forget_rate must be in [0, 1)"),
    (["--set", "method_options.forget_rate=-0.1"], "forget_rate must be in [0, 1)"),
    (["--set", "method_options.forget_epochs=0"], "forget_epochs must be >= 1"),
    (["--set", "method_options.forget_epochs=1.5"], "forget_epochs must be an int or null"),
    (["--set", "method_options.meta_lr=0.1"], "unknown method_options ['meta_lr']; valid: forget_epochs, forget_rate"),
    (["--meta-set", "pseudo", "--meta-per-class", "0"], "--method coteaching cannot"),
    (["--track-every", "5"], "--method coteaching has none"),
])
def test_bad_options_one_line_nothing_written(tmp_path, capsys, extra, needle):
    out = tmp_path / "r"
    assert main([*ARGS, *extra, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0], err
    assert not out.exists()
