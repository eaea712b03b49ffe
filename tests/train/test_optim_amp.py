"""`famus train --optimizer adamw --schedule cosine --lr-warmup-epochs --amp bf16`: schedules, runs, resume, errors."""

import json
import math

import pytest
import torch

from famus.cli import main
from famus.train import TrainConfig, train
from famus.train.checkpoint import load_checkpoint
from famus.train.nets import make_optimizer
from famus.train.step import lr_at

BASE = ["--dataset", "digits", "--model", "mlp", "--meta-per-class", "10", "--batch-size", "64", "--no-progress",
        "--threads", "1"]


def test_warmup_then_cosine_and_step_schedules():
    cfg = TrainConfig(lr=0.1, epochs=4, schedule="cosine", lr_warmup_epochs=0.5)
    iters = 10
    lrs = [lr_at(cfg, s // iters, s, iters) for s in range(40)]
    assert lrs[:5] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1])  # 5 warm-up iterations
    assert lrs[5] == pytest.approx(0.1)
    t = (39 - 5) / 35
    assert lrs[-1] == pytest.approx(0.05 * (1 + math.cos(math.pi * t))) and 0 < lrs[-1] < 1e-3
    assert all(a >= b for a, b in zip(lrs[5:], lrs[6:]))  # decreasing after the warm-up
    step = TrainConfig(lr=0.1, epochs=4, milestones=[2], gamma=0.1)
    assert [lr_at(step, e, e * iters, iters) for e in range(4)] == pytest.approx([0.1, 0.1, 0.01, 0.01])
    warm = TrainConfig(lr=0.1, epochs=4, milestones=[2], lr_warmup_epochs=1)
    assert lr_at(warm, 0, 4, iters) == pytest.approx(0.05) and lr_at(warm, 2, 20, iters) == pytest.approx(0.01)


def test_optimizer_choice():
    params = [torch.nn.Parameter(torch.zeros(2))]
    adamw = make_optimizer(TrainConfig(optimizer="adamw", lr=1e-3, weight_decay=0.05), params)
    assert isinstance(adamw, torch.optim.AdamW) and adamw.param_groups[0]["weight_decay"] == 0.05
    sgd = make_optimizer(TrainConfig(nesterov=True), params)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[0]["nesterov"]


@pytest.mark.parametrize("method,engine", [("mwnet", "famus-fd"), ("l2r", "exact"), ("erm", "exact")])
def test_adamw_cosine_bf16_run(tmp_path, method, engine):
    out = tmp_path / "run"
    rc = main(["train", *BASE, "--epochs", "2", "--method", method, "--meta-grad", engine, "--optimizer", "adamw",
               "--lr", "0.003", "--schedule", "cosine", "--lr-warmup-epochs", "0.5", "--amp", "bf16",
               "--out", str(out)])
    assert rc == 0
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["test_acc"] > 0.5  # chance is 0.1
    assert rows[-1]["lr"] < 0.003 * 0.1  # the cosine's last iteration
    if method != "erm":
        assert [r["meta_skipped"] for r in rows] == [0, 0]
        assert all(math.isfinite(r["meta_loss"]) for r in rows)
    cfg = load_checkpoint(out / "checkpoint.pt")["config"]
    assert (cfg["optimizer"], cfg["schedule"], cfg["amp"], cfg["lr_warmup_epochs"]) == ("adamw", "cosine", "bf16", 0.5)


def test_resume_under_bf16_and_adamw_equals_uninterrupted(tmp_path):
    """(A cosine schedule spans the run's epochs: a shorter first part would follow another curve.)"""
    common = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, method="mwnet", threads=1,
                  meta_grad="famus", lr=3e-3, optimizer="adamw", milestones=[1], amp="bf16", progress=False)
    train(TrainConfig(**common, epochs=2, out=str(tmp_path / "full")))
    train(TrainConfig(**common, epochs=1, out=str(tmp_path / "part")))
    train(TrainConfig(**common, epochs=2, out=str(tmp_path / "part"), resume=True))
    a = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for k in a["nets"][0]["model"]:
        assert torch.equal(a["nets"][0]["model"][k], b["nets"][0]["model"][k]), k


@pytest.mark.parametrize("args,needle", [
    (["--optimizer", "lamb"], "optimizer must be one of sgd, adamw"),
    (["--schedule", "linear"], "schedule must be one of step, cosine"),
    (["--amp", "fp8"], "amp must be one of null, bf16, fp16"),
    (["--amp", "fp16"], "--amp fp16 needs a CUDA device"),
    (["--lr-warmup-epochs", "-1"], "lr_warmup_epochs must be in"),
])
def test_bad_choices_one_line_error_nothing_written(tmp_path, capsys, args, needle):
    out = tmp_path / "run"
    assert main(["train", *BASE, "--epochs", "1", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()
