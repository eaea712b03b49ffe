"""Shipped configs are valid; the data pipeline keeps the meta set clean and disjoint."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

import famus
from famus.cli import main
from famus.data import DATASETS, NOISE
from famus.models import MODELS
from famus.train import TrainConfig, load_config
from famus.train.data import prepare_data

from ..data.test_data_loaders import write_cifar10

CONFIGS = sorted(p for p in (Path(__file__).parents[2] / "configs").glob("**/*.yaml") if not p.name.startswith("rows"))


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path).validate()
    assert cfg.dataset in DATASETS and cfg.noise in NOISE and cfg.model in MODELS
    if cfg.method != "erm":
        famus.METHODS.get(cfg.method)
        famus.ENGINES.get(cfg.meta_grad.removesuffix("+lagged"))


def test_every_shipped_rows_file_is_valid():
    from famus.compare import read_rows

    for path in sorted((Path(__file__).parents[2] / "configs").glob("**/rows*.yaml")):
        base = load_config(path.parent / "mlp-sym60.yaml")
        for _name, over in read_rows(path).items():
            cfg = load_config(path.parent / "mlp-sym60.yaml", base)
            for key, value in over.items():
                setattr(cfg, key, value)
            cfg.validate()  # every row's config is a valid run


def test_meta_set_is_clean_and_disjoint_from_training():
    cfg = TrainConfig(dataset="digits", meta_per_class=10, noise="symmetric", noise_rate=0.6, seed=3)
    data = prepare_data(cfg)
    ds = famus.data.load_dataset("digits")
    assert set(data.train_index.tolist()).isdisjoint(data.meta_index.tolist())
    assert len(data.train_index) + len(data.meta_index) == len(ds.train_y)
    assert torch.equal(data.meta_y, ds.train_y[data.meta_index])  # clean labels
    assert torch.bincount(data.meta_y, minlength=10).tolist() == [10] * 10
    assert torch.equal(data.clean_y, ds.train_y[data.train_index])
    assert torch.equal(data.corrupted, data.train_y != data.clean_y)
    assert 0.45 < float(data.corrupted.float().mean()) < 0.63  # 0.6 * 9/10 expected


def test_long_tailed_pipeline_counts():
    cfg = TrainConfig(dataset="digits", meta_per_class=5, imbalance=10, noise="none", noise_rate=0.0)
    data = prepare_data(cfg)
    counts = data.class_counts().tolist()
    n_max = counts[0]
    expected = [int(n_max * 10 ** (-i / 9) + 1e-9) for i in range(10)]
    assert counts == expected


def test_table1_config_runs_on_cifar_files(tmp_path):
    write_cifar10(tmp_path / "data", per_batch=40)
    out = tmp_path / "run"
    rc = main(["train", "--config", str(Path(__file__).parents[2] / "configs" / "table1-mwnet-cifar10.yaml"),
               "--data-dir", str(tmp_path / "data"), "--meta-per-class", "2", "--epochs", "1", "--batch-size", "16",
               "--model", "wrn", "--set", "model_options={depth: 10, widen_factor: 1}", "--device", "cpu",
               "--meta-grad", "famus", "--no-progress", "--out", str(out)])
    assert rc == 0
    rec = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert rec["epoch"] == 1 and 0 <= rec["test_acc"] <= 1
    assert np.isfinite(rec["train_loss"])
