"""Model selection without a trusted set: ``val_per_class`` held out of the noisy training data."""

import torch

from famus.train.config import TrainConfig
from famus.train.data import prepare_data


def _data(**kw):
    cfg = TrainConfig(dataset="digits", noise="symmetric", noise_rate=0.4, seed=3, **kw).validate()
    return prepare_data(cfg)


def test_without_a_trusted_set_validation_is_a_noisy_held_out_split():
    full = _data(method="erm", meta_per_class=0)
    data = _data(method="erm", meta_per_class=0, val_per_class=5)
    c = data.num_classes
    assert data.meta_y.numel() == 0
    assert torch.equal(torch.bincount(data.val_y, minlength=c), torch.full((c,), 5))  # 5 per (noisy) label
    assert data.train_y.numel() == full.train_y.numel() - 5 * c  # held out of the training data
    assert "noisy training data" in data.val_source
    # the same noisy labels as without the hold-out: the validation rows are some of them, removed from training
    kept = {int(i): int(y) for i, y in zip(full.train_index, full.train_y)}
    assert all(kept[int(i)] == int(y) for i, y in zip(data.train_index, data.train_y))
    val_index = set(kept) - {int(i) for i in data.train_index}
    assert len(val_index) == 5 * c
    assert sorted(data.val_y.tolist()) == sorted(kept[i] for i in val_index)  # their noisy labels
    clean = {int(i): int(y) for i, y in zip(full.train_index, full.clean_y)}
    assert sum(kept[i] != clean[i] for i in val_index) > 0  # some validation labels are wrong, as in the data
    # what is left for training still says which of its labels were corrupted, and the realised rate agrees
    assert torch.equal(data.corrupted, data.train_y != data.clean_y)
    assert abs(data.noise.rate - float(data.corrupted.float().mean())) < 1e-12


def test_with_a_trusted_set_validation_stays_clean_and_out_of_it():
    data = _data(method="mwnet", meta_per_class=10, val_per_class=3)
    assert "trusted set" in data.val_source
    assert data.meta_y.numel() == 7 * data.num_classes


def test_pseudo_mode_takes_a_noisy_validation_split():
    cfg = TrainConfig(dataset="digits", noise="symmetric", noise_rate=0.4, method="mwnet", meta_set="pseudo",
                      val_per_class=4).validate()
    assert cfg.val_per_class == 4  # no longer refused
