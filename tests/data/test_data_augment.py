"""Batched augmentation: crops/flips against a slow per-example reference, normalisation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from famus.data import Augmenter, Dataset

MEAN = (0.4, 0.5, 0.6)
STD = (0.2, 0.25, 0.3)


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def images(b: int = 16, c: int = 3, size: int = 32, seed: int = 0) -> torch.Tensor:
    # Random pixels (nonzero, so windows reaching into the zero padding are identifiable).
    return torch.randint(1, 256, (b, c, size, size), generator=gen(seed), dtype=torch.uint8)


def matching_windows(
    out: torch.Tensor, img: torch.Tensor, padding: int, flip: bool
) -> list[tuple[int, int, bool]]:
    """Slow reference: every (dy, dx, flipped) window of the padded image equal to ``out``."""
    padded = F.pad(img, (padding,) * 4)
    s = out.shape[-1]
    found = []
    for dy in range(padded.shape[-2] - s + 1):
        for dx in range(padded.shape[-1] - s + 1):
            window = padded[:, dy : dy + s, dx : dx + s]
            for flipped in (False, True) if flip else (False,):
                if torch.equal(window.flip(-1) if flipped else window, out):
                    found.append((dy, dx, flipped))
    return found


def toy_dataset(channels: int, size: int, flip: bool = False) -> Dataset:
    x = torch.zeros(2, channels, size, size, dtype=torch.uint8)
    y = torch.tensor([0, 1])
    return Dataset("toy", x, y, x, y, 2, (0.5,) * channels, (0.25,) * channels, flip=flip)


def test_output_shape_dtype_and_device():
    aug = Augmenter(MEAN, STD, crop=32, padding=4, flip=True)
    out = aug(images(), gen())
    assert out.shape == (16, 3, 32, 32) and out.dtype == torch.float32 and out.device.type == "cpu"
    smaller = Augmenter(MEAN, STD, crop=24, padding=0)(images(), gen())
    assert smaller.shape == (16, 3, 24, 24)


def test_crop_and_flip_are_shifted_windows_of_padded_image():
    x = images(b=24)
    aug = Augmenter(MEAN, STD, crop=32, padding=4, flip=True)
    out = aug.augment_uint8(x, gen(5))
    offsets, flips = set(), set()
    for i in range(out.shape[0]):
        found = matching_windows(out[i], x[i], padding=4, flip=True)
        assert len(found) == 1, f"example {i}: {found}"
        offsets.add(found[0][:2])
        flips.add(found[0][2])
    assert len(offsets) > 10 and flips == {False, True}  # the randomness is real
    # The float output is exactly the normalised uint8 augmentation.
    torch.testing.assert_close(aug(x, gen(5)), aug.normalize(out))


def test_grayscale_crops_without_flip():
    aug = Augmenter.for_dataset(toy_dataset(1, 28))
    assert (aug.crop, aug.padding, aug.flip) == (28, 2, False)
    x = images(b=12, c=1, size=28, seed=1)
    out = aug.augment_uint8(x, gen(2))
    for i in range(out.shape[0]):
        assert len(matching_windows(out[i], x[i], padding=2, flip=False)) == 1


def test_flip_only_without_crop():
    x = images(b=32)
    out = Augmenter(MEAN, STD, flip=True).augment_uint8(x, gen(3))
    flipped = torch.tensor([torch.equal(o, i.flip(-1)) for o, i in zip(out, x, strict=True)])
    kept = torch.tensor([torch.equal(o, i) for o, i in zip(out, x, strict=True)])
    assert bool((flipped ^ kept).all()) and 0 < int(flipped.sum()) < 32


def test_determinism():
    aug = Augmenter(MEAN, STD, crop=32, padding=4, flip=True)
    x = images()
    assert torch.equal(aug(x, gen(7)), aug(x, gen(7)))
    assert not torch.equal(aug(x, gen(7)), aug(x, gen(8)))


def test_normalize_matches_formula():
    aug = Augmenter(MEAN, STD, crop=32, padding=4, flip=True)
    x = images()
    expected = (x.float() / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    torch.testing.assert_close(aug.normalize(x), expected, atol=1e-5, rtol=1e-5)
    plain = Augmenter(MEAN, STD)
    assert not plain.augments
    torch.testing.assert_close(plain(x, gen()), aug.normalize(x))


def test_for_dataset_recipes():
    cifar = Augmenter.for_dataset(toy_dataset(3, 32, flip=True))  # CIFAR's loaders set flip=True
    assert (cifar.crop, cifar.padding, cifar.flip) == (32, 4, True)
    own = Augmenter.for_dataset(toy_dataset(3, 32))  # your own colour images: flips are opt-in
    assert (own.crop, own.padding, own.flip) == (32, 4, False)
    assert Augmenter.for_dataset(toy_dataset(3, 32), flip=True).flip
    assert Augmenter.for_dataset(toy_dataset(1, 28), crop=False).crop is None
    assert not Augmenter.for_dataset(toy_dataset(3, 32, flip=True), flip=False).flip
    digits = Augmenter.for_dataset(toy_dataset(1, 8))
    assert digits.crop is None and not digits.flip and not digits.augments
    assert digits.mean == (0.5,) and digits.std == (0.25,)


def test_input_validation():
    aug = Augmenter(MEAN, STD)
    with pytest.raises(ValueError, match="uint8"):
        aug(images().float(), gen())
    with pytest.raises(ValueError, match="channels"):
        aug(images(c=1), gen())
    with pytest.raises(ValueError, match="larger than the padded image"):
        Augmenter(MEAN, STD, crop=40, padding=2)(images(), gen())
    with pytest.raises(ValueError, match="std"):
        Augmenter(MEAN, (0.1, 0.0, 0.1))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_batch_with_cpu_generator_matches_cpu():
    aug = Augmenter(MEAN, STD, crop=32, padding=4, flip=True)
    x = images()
    out = aug(x.cuda(), gen(9))
    assert out.device.type == "cuda"
    torch.testing.assert_close(out.cpu(), aug(x, gen(9)))
