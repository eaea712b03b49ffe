"""famus.data: in-memory datasets, label noise, long-tail and meta splits, batched augmentation.

>>> import torch
>>> from famus.data import load_dataset, apply_noise, meta_split, Augmenter
>>> ds = load_dataset("digits")
>>> g = torch.Generator().manual_seed(0)
>>> train_idx, meta_idx = meta_split(ds.train_y, 10, g)
>>> noisy = apply_noise("symmetric", ds.train_y[train_idx], 0.4, ds.num_classes, g)
>>> x = Augmenter.for_dataset(ds)(ds.train_x[:8], g)
"""

from famus.data import arrays as _arrays  # noqa: F401  (registers "arrays")
from famus.data import folder as _folder  # noqa: F401  (registers "folder")
from famus.data import imagelist as _imagelist  # noqa: F401  (registers "listfile")
from famus.data.augment import Augmenter
from famus.data.datasets import DATASETS, Dataset, channel_stats, load_dataset
from famus.data.errors import DataError
from famus.data.idx import read_idx
from famus.data.longtail import longtail_counts, longtail_indices
from famus.data.noise import (
    NOISE,
    NoiseResult,
    apply_noise,
    check_transition_matrix,
    from_file,
    from_matrix,
    load_noisy_labels,
    pair,
    read_label_file,
    realised_transition,
    save_noisy_labels,
    symmetric,
)
from famus.data.safe_pickle import SafeUnpickler, safe_load
from famus.data.split import meta_split, per_class_counts, stratified_split
from famus.data.trusted import TrustedSet, load_trusted

__all__ = [
    "DATASETS",
    "NOISE",
    "Augmenter",
    "DataError",
    "Dataset",
    "NoiseResult",
    "SafeUnpickler",
    "TrustedSet",
    "apply_noise",
    "channel_stats",
    "check_transition_matrix",
    "from_file",
    "from_matrix",
    "load_dataset",
    "load_noisy_labels",
    "load_trusted",
    "longtail_counts",
    "longtail_indices",
    "meta_split",
    "pair",
    "per_class_counts",
    "read_idx",
    "read_label_file",
    "realised_transition",
    "safe_load",
    "save_noisy_labels",
    "stratified_split",
    "symmetric",
]
