"""Run folders for report tests: hand-written fakes and one real tiny run with real tracking."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

import famus
from famus.train.tracking import Tracker

STAGES = ("virtual_forward", "virtual_backward", "meta_forward", "meta_backward", "actual_forward", "actual_backward")


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    """Tiny models run fastest on one thread (and do not fight for a shared machine's cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class TinyNet(nn.Module):
    """conv-BN-ReLU, linear-ReLU, linear classifier: four layers, with buffers, no famus import."""

    def __init__(self, classes: int = 3) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.hidden = nn.Linear(3, 6)
        self.fc = nn.Linear(6, classes)

    def forward(self, x):
        h = torch.relu(self.bn(self.conv(x))).mean((2, 3))
        return self.fc(torch.relu(self.hidden(h)))


def tiny_batches(seed=0, n=8, m=6, classes=3, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 5, 5, generator=g, dtype=dtype)
    y = torch.randint(0, classes, (n,), generator=g)
    xm = torch.randn(m, 1, 5, 5, generator=g, dtype=dtype)
    ym = torch.randint(0, classes, (m,), generator=g)
    return x, y, xm, ym


def tiny_learner(method="mwnet", engine="exact", **engine_options):
    torch.manual_seed(0)
    model = TinyNet().double()
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    return famus.MetaLearner(model, opt, method, engine, engine_options=engine_options)


def health_record(e: int, epochs: int, classes: int = 3) -> dict:
    """A plausible epoch ``health`` record (famus.train.health) of epoch ``e``."""
    from famus.train.health import BINS, bin_edges

    counts = [0] * BINS
    counts[40], counts[49], counts[55] = 10 * e, 50, 20 * (epochs - e + 1)
    return {"w_q": [0.2, 0.8, 1.0, 1.3, 2.0], "w_cv": 0.05 if e == 1 else 0.6, "zero_share": 0.0,
            "weight_hist": {"edges": bin_edges(), "counts": counts}, "class_weight": [0.9, 1.0, 1.1][:classes],
            "probe_flip_auc": 0.6 + 0.1 * e, "probe_vs_train": 0.55, "probe_se": 0.04, "probe_train_se": 0.03,
            "probe_n": 30, "flags": ["flat: weights within 5.0% (cv) of uniform"] if e == 1 else []}


def write_run(root: Path, name: str, method="mwnet", engine="famus", epochs=3, iters=10, metrics=True,
              tracking=True, config=True, seed=0, extras=True) -> Path:
    """A hand-written run folder with plausible numbers (deterministic in ``seed``).

    ``extras``: validation numbers, confusion matrices and the health check in the records, and
    ``example_scores.csv``, ``suspects.npz`` (3x5x5 images) and ``classes.json``, as famus writes them.
    """
    g = torch.Generator().manual_seed(seed)
    run = root / name
    run.mkdir(parents=True)
    if config:
        (run / "config.yaml").write_text(yaml.safe_dump({"method": method, "meta_grad": engine, "epochs": epochs}))
    recs, best, wall = [], 0.0, 0.0
    for e in range(1, epochs + 1):
        acc = 0.5 + 0.1 * e + 0.01 * float(torch.rand((), generator=g))
        best = max(best, acc)
        it = 0.01 + 0.001 * float(torch.rand((), generator=g))
        wall += it * iters
        rec = {"train_loss": 1.0 / e, "lr": 0.1, "time_per_iter_s": it, "epoch": e, "step": e * iters,
               "test_acc": acc, "best_test_acc": best, "wall_time_s": wall, "per_class_acc": [acc] * 3}
        if extras:
            rec.update(val_acc=acc - 0.02, val_loss=1.2 / e, test_loss=1.1 / e,
                       confusion={"test": [[8, 1, 1], [2, 7, 1], [0, 1, 9]], "val": [[3, 0, 1], [1, 3, 0], [0, 0, 4]]})
        if method != "erm":
            rec.update(meta_loss=0.9 / e, clean_weight_share=0.6 + 0.05 * e,
                       stage_time_s={s: it / 8 for s in STAGES})
            if extras:  # the first epoch's weights are flat (a warning)
                rec["meta_steps"] = 60
                rec["health"] = health_record(e, epochs)
                rec["health_steps"] = [{"step": (e - 1) * iters + k, "w_q": [0.2, 0.7, 1.0, 1.2, 1.9 + 0.1 * e],
                                        "w_cv": 0.05 if e == 1 else 0.5, "zero_share": 0.0, "meta_steps": 5,
                                        "flags": []} for k in (iters // 2, iters)]
            if engine == "famus":
                rec["gate_rate"] = {"conv": 0.2 * e / epochs, "hidden": 0.5, "fc": 1.0}
            rec["quality_steps"] = [{"step": (e - 1) * iters + k, "weight_auroc": 0.5 + 0.1 * e, "clean_lift": 0.05 * e,
                                     "v_curve": {"0.1": 0.6, "1": 0.5 - 0.05 * e, "5": 0.4 - 0.1 * e}}
                                    for k in (iters // 2, iters)]
        recs.append(rec)
    if metrics:
        (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    if tracking and method != "erm":
        lines = []
        for k, step in enumerate([1, 10, 20, 30]):
            n = 8
            w = torch.rand(n, generator=g, dtype=torch.float64)
            w = w / w.sum()
            rec = {
                "step": step, "epoch": 1 + step // iters, "engine": engine,
                "meta_grad": {"cosine": 1.0 if engine == "exact" else 0.9 + 0.02 * k, "rel_error": 0.1 / (k + 1),
                              "norm_engine": 1.0, "norm_exact": 1.1},
                "running": {kind: {"count": k + 1, "mean_norm": 1.0, "mean_entry": 0.01, "total_var": 0.1 * k,
                                   "proj": 1.0 + 0.1 * k, "proj_mean": 1.0, "proj_var": 0.01 * k}
                            for kind in ("engine", "exact")},
                "gates": {"conv": float(k % 2), "hidden": 1.0, "fc": 1.0} if engine == "famus" else None,
                "weights": {"n": n, "sum": 1.0, "clean_share": float(w[:5].sum()),
                            "clean": w[:5].tolist(), "noisy": w[5:].tolist()},
            }
            lines.append(json.dumps(rec) + "\n")
        (run / "tracking.jsonl").write_text("".join(lines))
    if extras:
        write_scores_files(run, seed)
    return run


def write_scores_files(run: Path, seed: int = 0, n: int = 40) -> None:
    """``example_scores.csv`` (a low-scored group of 10 in 40), ``suspects.npz`` and ``classes.json``."""
    import numpy as np

    from famus.issues import write_scores

    rng = np.random.default_rng(seed)
    score = np.concatenate([rng.uniform(0.0, 0.1, 10), rng.uniform(0.9, 1.5, n - 10)])
    given = np.arange(n) % 3
    write_scores(run / "example_scores.csv", np.arange(n), [f"c{g}/{i}.png" for i, g in enumerate(given)], given,
                 (given + (score < 0.5)) % 3, score, ["ant", "bee", "<cat>"])
    (run / "classes.json").write_text('["ant", "bee", "<cat>"]')
    order = np.argsort(score)[:8]
    np.savez(run / "suspects.npz", index=order, given=given[order], predicted=(given[order] + 1) % 3,
             score=score[order], path=np.array([f"c{given[i]}/{i}.png" for i in order]),
             images=rng.integers(0, 255, (8, 5, 5, 1), dtype=np.uint8))


@pytest.fixture
def fake_runs(tmp_path):
    """Three complete fake runs: ERM, MW-Net exact, MW-Net+FaMUS."""
    root = tmp_path / "runs"
    return [write_run(root, "erm", "erm", "exact", seed=1), write_run(root, "mw-exact", "mwnet", "exact", seed=2),
            write_run(root, "mw-famus", "mwnet", "famus", seed=3)]


@pytest.fixture(scope="session")
def real_run(tmp_path_factory):
    """A real 2-epoch MW-Net+FaMUS run on digits, plus tracking.jsonl written by a real Tracker.

    The tracking records come from 6 steps of a real :class:`famus.MetaLearner` (the digits
    MLP, FaMUS over every layer) on the same data, with the run's corrupted-label mask.
    """
    from famus.models import build_model
    from famus.train import TrainConfig, train
    from famus.train.data import prepare_data

    run = tmp_path_factory.mktemp("real") / "mw-famus-digits"
    cfg = dict(dataset="digits", model="mlp", meta_per_class=10, batch_size=64, epochs=2, method="mwnet",
               meta_grad="famus", progress=False, out=str(run), threads=1, noise="symmetric", noise_rate=0.4)
    train(cfg)  # sets one thread process-wide, as the package fixture does (and undoes)

    data = prepare_data(TrainConfig(**{k: v for k, v in cfg.items() if k != "out"}))
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=10, in_channels=1, hidden=16, input_size=data.train_x.shape[-1])
    learner = famus.MetaLearner(model, torch.optim.SGD(model.parameters(), lr=0.1), "mwnet", "famus",
                                engine_options={"candidates": "all", "k": 1})
    norm = data.augmenter.normalize
    g = torch.Generator().manual_seed(0)
    with Tracker(run, every=2, layer_names=famus.layers(model)) as tracker:
        for step in range(1, 7):
            idx = torch.randperm(data.train_x.shape[0], generator=g)[:32]
            midx = torch.randperm(data.meta_x.shape[0], generator=g)[:20]
            x, y, xm, ym = norm(data.train_x[idx]), data.train_y[idx], norm(data.meta_x[midx]), data.meta_y[midx]
            stats = learner.step(x, y, xm, ym)
            if tracker.should_track(step):
                tracker.record(step, 1, learner, x, y, xm, ym, stats, data.corrupted[idx])
    return run
