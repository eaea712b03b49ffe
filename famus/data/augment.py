"""Batched data augmentation and normalisation in torch.

The whole batch is augmented with one gather: zero-pad once, then read each example's
crop window through row/column index tensors built from ``arange`` plus per-example
random offsets. A horizontal flip just reverses that example's column indices, so crop
and flip together cost one indexing op — no Python loop over examples, and it runs on
whatever device the batch is on.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from famus.data.datasets import Dataset


class Augmenter:
    """Random crop (with zero padding) + horizontal flip, then per-channel normalisation.

    Args:
        mean: per-channel means on the 0-1 scale, length C.
        std: per-channel stds on the 0-1 scale, length C.
        crop: output side of the random crop (usually the image side); None disables cropping.
        padding: zero padding added on every side before cropping (torchvision's
            ``RandomCrop(crop, padding)``: pads with black, i.e. 0 before normalisation).
        flip: random horizontal flip with probability 1/2.

    Calling it maps uint8 (B, C, H, W) to normalised float32 (B, C, crop, crop) — or (B, C, H, W)
    without cropping.
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        crop: int | None = None,
        padding: int = 0,
        flip: bool = False,
        features: bool = False,
    ) -> None:
        if len(mean) != len(std) or not len(mean):
            raise ValueError(f"mean and std need the same non-zero length, got {len(mean)} and {len(std)}")
        if any(s <= 0 for s in std):
            raise ValueError(f"std entries must be > 0, got {tuple(std)}")
        if crop is not None and crop < 1:
            raise ValueError(f"crop must be >= 1 or None, got {crop}")
        if padding < 0:
            raise ValueError(f"padding must be >= 0, got {padding}")
        if features and (crop is not None or flip):
            raise ValueError("feature vectors cannot be cropped or flipped")
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)
        self.crop = crop
        self.padding = padding
        self.flip = flip
        self.features = features
        self._affine: dict[torch.device, tuple[Tensor, Tensor]] = {}

    @classmethod
    def for_dataset(
        cls, ds: Dataset, flip: bool | None = None, crop: bool | None = None, padding: int | None = None
    ) -> Augmenter:
        """The standard recipe for ``ds``; each part can be set (``augment_options``).

        * square images >= 16 px: random crop to size with zero padding (4 from 32 px, else 2);
        * horizontal flips only where ``flip=True``, by default where they suit the data (``ds.flip``:
          CIFAR); never by default for Fashion-MNIST, digits, grayscale images or your own data;
        * smaller or non-square images (8x8 digits): normalisation only (plus a requested flip);
        * feature vectors: normalisation only (per-feature standardisation).
        """
        if ds.is_features:
            if flip or crop:
                raise ValueError("augment_options flip/crop apply to images, not feature vectors")
            return cls(ds.mean, ds.std, features=True)
        height, width = ds.image_size
        crop = min(height, width) >= 16 and height == width if crop is None else crop
        if crop and height != width:
            raise ValueError(f"augment_options.crop needs square images, got {height}x{width}")
        pad = (4 if height >= 32 else 2) if padding is None else padding
        flip = ds.flip if flip is None else flip
        return cls(ds.mean, ds.std, crop=height if crop else None, padding=pad if crop else 0, flip=bool(flip))

    @property
    def augments(self) -> bool:
        """Whether ``__call__`` does anything random."""
        return self.crop is not None or self.flip

    def __repr__(self) -> str:
        return (
            f"Augmenter(crop={self.crop}, padding={self.padding}, flip={self.flip}, features={self.features}, "
            f"mean={self.mean}, std={self.std})"
        )

    def _scale_shift(self, device: torch.device) -> tuple[Tensor, Tensor]:
        # (x/255 - mean)/std == x * scale + shift (features: (x - mean)/std); cached per device.
        if device not in self._affine:
            mean = torch.tensor(self.mean, dtype=torch.float64)
            std = torch.tensor(self.std, dtype=torch.float64)
            scale = (1.0 / ((1.0 if self.features else 255.0) * std)).float().view(1, -1, 1, 1).to(device)
            shift = (-mean / std).float().view(1, -1, 1, 1).to(device)
            self._affine[device] = (scale, shift)
        return self._affine[device]

    def _check(self, x: Tensor) -> None:
        if self.features:
            if x.dtype != torch.float32 or x.dim() != 4:
                raise ValueError(f"expected float32 (B, D, 1, 1) features, got {x.dtype} {tuple(x.shape)}")
        elif x.dtype != torch.uint8 or x.dim() != 4:
            raise ValueError(f"expected a uint8 (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
        if x.shape[1] != len(self.mean):
            raise ValueError(f"batch has {x.shape[1]} channels but mean/std have {len(self.mean)}")

    def normalize(self, x: Tensor) -> Tensor:
        """uint8 (B, C, H, W) -> float32 (B, C, H, W) ``(x / 255 - mean) / std`` (features: ``(x - mean) / std``),
        no augmentation."""
        self._check(x)
        scale, shift = self._scale_shift(x.device)
        return torch.addcmul(shift, x.float(), scale)

    def __call__(self, x: Tensor, generator: torch.Generator, rows: slice | None = None) -> Tensor:
        """Augment and normalise a batch.

        Args:
            x: uint8 (B, C, H, W), on any device.
            generator: seeded ``torch.Generator``; random numbers are drawn on
                ``generator.device`` (CPU is fine for a GPU batch) and moved to ``x.device``.
            rows: keep only these examples of the batch (a data-parallel rank's shard). The random
                numbers are still drawn for the whole batch, so the shard gets exactly the crops and
                flips it gets as part of the whole batch, and the generator moves the same way.

        Returns:
            float32 (B, C, S, S) with ``S = crop`` (or (B, C, H, W) when not cropping).
        """
        self._check(x)
        if not self.augments:
            return self.normalize(x if rows is None else x[rows])
        return self.normalize(self.augment_uint8(x, generator, rows))

    def augment_uint8(self, x: Tensor, generator: torch.Generator, rows: slice | None = None) -> Tensor:
        """The random crop/flip alone: uint8 (B, C, H, W) -> uint8 (B, C, S, S) (``rows``: see ``__call__``)."""
        self._check(x)
        b, c, h, w = x.shape
        if self.crop is None:
            p, crop_h, crop_w = 0, h, w
        else:
            p, crop_h, crop_w = self.padding, self.crop, self.crop
        hp, wp = h + 2 * p, w + 2 * p
        if crop_h > hp or crop_w > wp:
            raise ValueError(f"crop {self.crop} is larger than the padded image {hp}x{wp}")
        gen_dev = generator.device
        # Draw all randomness first, in a fixed order, so results depend only on the seed.
        oy = torch.randint(0, hp - crop_h + 1, (b,), generator=generator, device=gen_dev).to(x.device)
        ox = torch.randint(0, wp - crop_w + 1, (b,), generator=generator, device=gen_dev).to(x.device)
        flip = torch.rand(b, generator=generator, device=gen_dev).to(x.device) < 0.5
        if not self.flip:
            flip = torch.zeros_like(flip)
        if rows is not None:
            x, oy, ox, flip = x[rows], oy[rows], ox[rows], flip[rows]
            b = x.shape[0]
        xp = F.pad(x, (p, p, p, p)) if p else x
        ar_h = torch.arange(crop_h, device=x.device)
        ar_w = torch.arange(crop_w, device=x.device)
        row_idx = oy[:, None] + ar_h  # (B, S)
        # Flipped examples read their window right-to-left.
        cols = ox[:, None] + torch.where(flip[:, None], crop_w - 1 - ar_w, ar_w)  # (B, S)
        bi = torch.arange(b, device=x.device)[:, None, None, None]
        ci = torch.arange(c, device=x.device)[None, :, None, None]
        return xp[bi, ci, row_idx[:, None, :, None], cols[:, None, None, :]]
