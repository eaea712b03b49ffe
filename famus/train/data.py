"""The run's data: subset, trusted meta set, long tail, label noise, validation set; all in memory, all seeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from famus.data import (
    Augmenter,
    Dataset,
    NoiseResult,
    apply_noise,
    load_dataset,
    load_trusted,
    longtail_indices,
    meta_split,
)
from famus.data.noise import read_label_file, realised_transition
from famus.data.split import stratified_split
from famus.models import MODELS
from famus.train.config import RATE_NOISES, TrainConfig


@dataclass
class RunData:
    """Tensors of one run, on the training device.

    Attributes:
        train_x: uint8 ``(N, C, H, W)`` (features: float32 ``(N, D, 1, 1)``); train_y: the labels trained on
            ``(N,)`` (noisy where noise was injected); clean_y: the labels as given ``(N,)`` (used only for
            reporting); corrupted: bool ``(N,)``, where injected noise changed the label.
        meta_x, meta_y: the trusted meta set ``(M, C, H, W)``, ``(M,)``, disjoint from training.
        test_x, test_y: the test split (``M_test`` may be 0: no test set).
        train_index: ``(N,)`` indices of the training examples in the dataset's training split.
        meta_index: ``(M,)`` indices of the meta set in its source (the training split, or ``--meta-data``).
        val_x, val_y: the validation split (model selection; may be empty), disjoint from the meta set.
        meta_source, val_source: where the meta and validation sets come from (``None``: no validation).
        train_paths: each training example's file (relative to the data root), or None.
    """

    train_x: Tensor
    train_y: Tensor
    clean_y: Tensor
    corrupted: Tensor
    meta_x: Tensor
    meta_y: Tensor
    test_x: Tensor
    test_y: Tensor
    train_index: Tensor
    meta_index: Tensor
    num_classes: int
    augmenter: Augmenter
    noise: NoiseResult
    class_names: list[str] | None = None
    val_x: Tensor | None = None
    val_y: Tensor | None = None
    meta_source: str = "training data"
    val_source: str | None = None
    train_paths: list[str] | None = None

    @property
    def has_val(self) -> bool:
        """Whether there is validation data to choose the model on."""
        return self.val_y is not None and self.val_y.numel() > 0

    @property
    def has_test(self) -> bool:
        """Whether there is a labelled test split."""
        return self.test_y.numel() > 0

    @property
    def noise_known(self) -> bool:
        """Whether some labels are known to be corrupted (injected noise), so weight quality is measurable."""
        return bool(self.corrupted.any())

    @property
    def in_channels(self) -> int:
        return self.train_x.shape[1]

    def class_counts(self) -> Tensor:
        """``(C,)`` training examples per class (by clean label)."""
        return torch.bincount(self.clean_y, minlength=self.num_classes).cpu()

    def label_counts(self) -> Tensor:
        """``(C,)`` training examples per class by the (noisy) training label: what a trainer can count."""
        return torch.bincount(self.train_y, minlength=self.num_classes).cpu()

    def class_groups(self) -> tuple[dict[str, list[int]], str]:
        """Many-, medium- and few-shot classes of the training set; see :func:`shot_groups`."""
        return shot_groups(self.class_counts())


GROUPS = ("many", "medium", "few")


def shot_groups(counts: Tensor, many_above: int = 100, few_below: int = 20) -> tuple[dict[str, list[int]], str]:
    """Split classes into many-, medium- and few-shot groups by their training counts.

    The standard long-tail rule (OLTR, Liu et al. 2019; used for CIFAR-100-LT) is many: more than
    100 training examples, medium: 20-100, few: fewer than 20. When that leaves a group empty (e.g.
    CIFAR-10-LT or Fashion-MNIST-LT, whose tail still has 50+ examples), the classes are split into
    tertiles of their counts instead: the ``round(C / 3)`` largest are many-shot, the ``round(C / 3)``
    smallest few-shot, the rest medium (ties broken by class index).

    Args:
        counts: ``(C,)`` training examples per class.

    Returns:
        ``({"many": [...], "medium": [...], "few": [...]}, rule)``; ``rule`` is ``"thresholds"`` or
        ``"tertiles"``.
    """
    counts = torch.as_tensor(counts).reshape(-1).cpu()
    c = counts.numel()
    groups = {
        "many": [i for i in range(c) if counts[i] > many_above],
        "medium": [i for i in range(c) if few_below <= counts[i] <= many_above],
        "few": [i for i in range(c) if counts[i] < few_below],
    }
    if all(groups.values()):
        return groups, "thresholds"
    # stable sort on -count: equal counts keep class order
    order = sorted(range(c), key=lambda i: (-int(counts[i]), i))
    k = max(1, round(c / 3)) if c >= 2 else 0
    groups = {"many": sorted(order[:k]), "medium": sorted(order[k : c - k]), "few": sorted(order[c - k :] if k else [])}
    return groups, "tertiles"


def prepare_data(cfg: TrainConfig, device: torch.device | str = "cpu") -> RunData:
    """Load and split the dataset for ``cfg``; independent of the method, so methods compare on identical data.

    Order: optional stratified subset; the trusted meta set (``--meta-data``, or ``meta_per_class`` per class
    held out of training by their given labels); long-tail subsampling of the rest (imbalance ``IF``); label
    noise on the training part only (none unless asked for); last, the validation set: the data's ``val/``
    split, or ``val_per_class`` per class held out of the trusted set (so it never changes the noisy labels),
    or, with no trusted set at all, out of the noisy training data after the noise (noisy labels).
    """
    ds = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
    _check_model(cfg, ds)
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = ds.train_y
    idx = torch.arange(labels.numel())
    if cfg.train_subset is not None and cfg.train_subset < labels.numel():
        keep_frac = cfg.train_subset / labels.numel()
        _, idx = stratified_split(labels, keep_frac, gen, ds.num_classes)
    if cfg.meta_data:  # the trusted set is its own data: none is drawn from training
        trusted = load_trusted(cfg.meta_data, ds, layout=cfg.dataset_options.get("layout"))
        meta_x, meta_y, meta_idx = trusted.x, trusted.y, torch.arange(trusted.y.numel())
        meta_source = f"--meta-data {cfg.meta_data}"
    else:
        train_rel, meta_rel = meta_split(labels[idx], cfg.meta_per_class, gen, ds.num_classes)
        meta_idx, idx = idx[meta_rel], idx[train_rel]
        meta_x, meta_y, meta_source = ds.train_x[meta_idx], labels[meta_idx], "training data"
    if cfg.imbalance > 1:
        # head size = the smallest class, so every class can supply its quota (balanced sets: all equal)
        n_max = int(torch.bincount(labels[idx], minlength=ds.num_classes).min())
        idx = idx[longtail_indices(labels[idx], cfg.imbalance, gen, n_max=n_max, num_classes=ds.num_classes)]
    clean, train_x = labels[idx], ds.train_x[idx]
    noise = apply_noise(cfg.noise, clean, cfg.noise_rate or 0.0, ds.num_classes, gen, features=train_x,
                        **_noise_options(cfg, idx, labels.numel()))
    if _noisy_validation(cfg, ds, meta_y):  # no trusted set: validation is a held-out split of the noisy data
        held, val_rel = meta_split(noise.labels, cfg.val_per_class, gen, ds.num_classes)
        val_x, val_y = train_x[val_rel], noise.labels[val_rel]
        val_source = (f"{cfg.val_per_class} per class held out of the noisy training data ({val_rel.numel()} "
                      "examples, noisy labels: no trusted set)")
        idx, clean, train_x = idx[held], clean[held], train_x[held]
        noise = NoiseResult(noise.labels[held], noise.corrupted[held],
                            realised_transition(clean, noise.labels[held], ds.num_classes))
    else:
        val_x, val_y, keep, val_source = _validation(cfg, ds, meta_x, meta_y, gen)
        meta_x, meta_y, meta_idx = meta_x[keep], meta_y[keep], meta_idx[keep]
    dev = torch.device(device)
    if cfg.augment:
        augmenter = Augmenter.for_dataset(ds, **cfg.augment_options)
    else:
        augmenter = Augmenter(ds.mean, ds.std, features=ds.is_features)
    return RunData(
        train_x=train_x.to(dev),
        train_y=noise.labels.to(dev),
        clean_y=clean.to(dev),
        corrupted=noise.corrupted.to(dev),
        meta_x=meta_x.to(dev),
        meta_y=meta_y.to(dev),
        test_x=ds.test_x.to(dev),
        test_y=ds.test_y.to(dev),
        train_index=idx,
        meta_index=meta_idx,
        num_classes=ds.num_classes,
        augmenter=augmenter,
        noise=noise,
        class_names=ds.class_names,
        val_x=val_x.to(dev),
        val_y=val_y.to(dev),
        meta_source=meta_source,
        val_source=val_source,
        train_paths=[ds.train_paths[i] for i in idx.tolist()] if ds.train_paths is not None else None,
    )


def _check_model(cfg: TrainConfig, ds: Dataset) -> None:
    """Feature vectors need a model that takes ``(B, D, 1, 1)``: the ``mlp`` (or your own)."""
    if ds.is_features and cfg.model in MODELS and cfg.model != "mlp":
        raise ValueError(f"dataset {cfg.dataset!r} holds feature vectors (D={ds.channels}), which model "
                         f"{cfg.model!r} cannot take; use --model mlp (or your own model taking (B, D, 1, 1))")


def _noise_options(cfg: TrainConfig, idx: Tensor, dataset_size: int) -> dict:
    """``noise_options``; a label file with one label per dataset example follows the run's split."""
    noise_options = dict(cfg.noise_options)
    full_size_file = cfg.noise == "file" and "path" in noise_options and "indices" not in noise_options
    if full_size_file and idx.numel() != dataset_size:
        # a file with one label per dataset example (CIFAR-N; a run's noisy labels written full-size): take
        # the rows of the examples kept after the subset, the meta split and the long tail
        if read_label_file(noise_options["path"], noise_options.get("key")).numel() == dataset_size:
            noise_options["indices"] = idx
    return noise_options


def _noisy_validation(cfg: TrainConfig, ds: Dataset, meta_y: Tensor) -> bool:
    """Whether ``val_per_class`` comes out of the noisy training data: there is no trusted set to take it from
    (no ``--meta-data``, ``meta_per_class`` 0 or ``--meta-set pseudo``) and the data has no ``val/`` split.

    A user without clean labels selects the model on a held-out part of the noisy data (as the paper does
    for web data); its labels carry the same noise, so the selection is on noisy validation accuracy.
    """
    has_val_split = ds.val_y is not None and ds.val_y.numel() > 0
    return bool(cfg.val_per_class) and not has_val_split and not cfg.meta_data and meta_y.numel() == 0


def _validation(cfg: TrainConfig, ds: Dataset, meta_x: Tensor, meta_y: Tensor, gen: torch.Generator):
    """``(val_x, val_y, keep, source)``: the validation set and the meta rows ``keep`` (int64) that stay meta.

    From the data's own ``val/`` split, or ``val_per_class`` per class of the trusted set; else empty.
    """
    keep = torch.arange(meta_y.numel())
    if ds.val_y is not None and ds.val_y.numel():
        if cfg.val_per_class:
            raise ValueError("the data has its own validation split (val/); drop --val-per-class, or remove val/")
        return ds.val_x, ds.val_y, keep, f"the data's validation split ({ds.val_y.numel()} examples)"
    empty = ds.train_x[:0], ds.train_y[:0]
    if not cfg.val_per_class:
        return *empty, keep, None
    counts = torch.bincount(meta_y, minlength=ds.num_classes)
    if int(counts.min()) < cfg.val_per_class:
        small = int(counts.argmin())
        raise ValueError(f"--val-per-class {cfg.val_per_class}: the trusted set has only {int(counts[small])} "
                         f"examples of class {small}; lower --val-per-class or give a larger trusted set")
    keep, val_rel = meta_split(meta_y, cfg.val_per_class, gen, ds.num_classes)
    return (meta_x[val_rel], meta_y[val_rel], keep,
            f"{cfg.val_per_class} per class held out of the trusted set ({val_rel.numel()} examples)")


def describe_noise(cfg: TrainConfig, data: RunData) -> str | None:
    """One line saying what label noise the run injects (``None`` when it injects none)."""
    if cfg.noise == "none":
        return None
    what = f"{cfg.noise} label noise" + (f" at rate {cfg.noise_rate:g}" if cfg.noise in RATE_NOISES else "")
    if cfg.noise == "file":
        what = f"noisy labels from {cfg.noise_options.get('path')}"
    n, changed = data.train_y.numel(), int(data.corrupted.sum())
    return (f"famus: injecting {what}: {changed} of {n} training labels changed (realised rate {data.noise.rate:.3f}); "
            "the trusted, validation and test labels stay as given")
