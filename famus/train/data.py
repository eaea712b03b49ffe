"""The run's data: subset, clean meta split, long tail, label noise; all in memory, all seeded."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from famus.data import Augmenter, NoiseResult, apply_noise, load_dataset, longtail_indices, meta_split
from famus.data.noise import read_label_file
from famus.data.split import stratified_split
from famus.train.config import TrainConfig


@dataclass
class RunData:
    """Tensors of one run, on the training device.

    Attributes:
        train_x: uint8 ``(N, C, H, W)``; train_y: noisy labels ``(N,)``; clean_y: true labels ``(N,)``
            (used only for reporting); corrupted: bool ``(N,)``.
        meta_x, meta_y: the clean meta set ``(M, C, H, W)``, ``(M,)``, disjoint from training.
        test_x, test_y: the test split.
        train_index: ``(N,)`` indices of the training examples in the dataset's training split.
        meta_index: ``(M,)`` likewise for the meta set.
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

    Order: optional stratified subset, clean meta split (``meta_per_class`` per class), long-tail
    subsampling of the rest (imbalance ``IF``), then label noise on the training part only.
    """
    ds = load_dataset(cfg.dataset, cfg.data_dir, **cfg.dataset_options)
    gen = torch.Generator().manual_seed(cfg.seed)
    labels = ds.train_y
    idx = torch.arange(labels.numel())
    if cfg.train_subset is not None and cfg.train_subset < labels.numel():
        keep_frac = cfg.train_subset / labels.numel()
        _, idx = stratified_split(labels, keep_frac, gen, ds.num_classes)
    train_rel, meta_rel = meta_split(labels[idx], cfg.meta_per_class, gen, ds.num_classes)
    meta_idx, idx = idx[meta_rel], idx[train_rel]
    if cfg.imbalance > 1:
        # head size = the smallest class, so every class can supply its quota (balanced sets: all equal)
        n_max = int(torch.bincount(labels[idx], minlength=ds.num_classes).min())
        idx = idx[longtail_indices(labels[idx], cfg.imbalance, gen, n_max=n_max, num_classes=ds.num_classes)]
    clean = labels[idx]
    noise_options = dict(cfg.noise_options)
    full_size_file = cfg.noise == "file" and "path" in noise_options and "indices" not in noise_options
    if full_size_file and idx.numel() != labels.numel():
        # a file with one label per dataset example (CIFAR-N; a run's noisy labels written full-size): take
        # the rows of the examples kept after the subset, the meta split and the long tail
        if read_label_file(noise_options["path"], noise_options.get("key")).numel() == labels.numel():
            noise_options["indices"] = idx
    noise = apply_noise(cfg.noise, clean, cfg.noise_rate, ds.num_classes, gen, **noise_options)
    dev = torch.device(device)
    return RunData(
        train_x=ds.train_x[idx].to(dev),
        train_y=noise.labels.to(dev),
        clean_y=clean.to(dev),
        corrupted=noise.corrupted.to(dev),
        meta_x=ds.train_x[meta_idx].to(dev),
        meta_y=labels[meta_idx].to(dev),
        test_x=ds.test_x.to(dev),
        test_y=ds.test_y.to(dev),
        train_index=idx,
        meta_index=meta_idx,
        num_classes=ds.num_classes,
        augmenter=Augmenter.for_dataset(ds) if cfg.augment else Augmenter(ds.mean, ds.std),
        noise=noise,
        class_names=ds.class_names,
    )
