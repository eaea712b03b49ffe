"""Label-noise generators: realised rates, transitions, determinism, files, persistence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from famus.data import (
    NOISE,
    DataError,
    apply_noise,
    from_file,
    from_matrix,
    load_noisy_labels,
    pair,
    realised_transition,
    save_noisy_labels,
    symmetric,
)
from famus.data.noise import instance, instance_probabilities, truncated_normal
from famus.registry import UnknownNameError

N = 20_000
C = 10


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def clean() -> torch.Tensor:
    return torch.randint(0, C, (N,), generator=gen(123))


def assert_binomial(successes: int, trials: int, p: float, sigmas: float = 4.0) -> None:
    """``successes`` is within ``sigmas`` standard deviations of Binomial(trials, p)."""
    sd = math.sqrt(trials * p * (1 - p))
    assert abs(successes - trials * p) <= sigmas * sd + 1e-9, (successes, trials * p, sd)


def assert_valid_result(result, clean: torch.Tensor, num_classes: int) -> None:
    assert result.labels.dtype == torch.int64 and result.labels.shape == clean.shape
    assert result.corrupted.dtype == torch.bool
    assert torch.equal(result.corrupted, result.labels != clean)
    assert result.transition.dtype == torch.float64 and result.transition.shape == (num_classes, num_classes)
    torch.testing.assert_close(result.transition.sum(1), torch.ones(num_classes, dtype=torch.float64))
    assert int(result.labels.min()) >= 0 and int(result.labels.max()) < num_classes


@pytest.mark.parametrize("rate", [0.0, 0.2, 0.5, 0.8, 1.0])
def test_symmetric_include_true_flip_rate(clean, rate):
    result = symmetric(clean, rate, C, gen(1))
    assert_valid_result(result, clean, C)
    assert_binomial(int(result.corrupted.sum()), N, rate * (C - 1) / C)


@pytest.mark.parametrize("rate", [0.0, 0.3, 0.6, 1.0])
def test_symmetric_other_classes_flip_rate(clean, rate):
    result = symmetric(clean, rate, C, gen(2), include_true=False)
    assert_valid_result(result, clean, C)
    assert_binomial(int(result.corrupted.sum()), N, rate)
    if rate == 1.0:  # every label moved, uniformly over the 9 others
        off_diag = result.transition[~torch.eye(C, dtype=torch.bool)]
        assert torch.allclose(off_diag, torch.full_like(off_diag, 1 / 9), atol=0.04)


def test_pair_next_flip_rate_and_targets(clean):
    result = pair(clean, 0.35, C, gen(3))
    assert_valid_result(result, clean, C)
    assert_binomial(int(result.corrupted.sum()), N, 0.35)
    flipped = result.corrupted
    assert torch.equal(result.labels[flipped], (clean[flipped] + 1) % C)


def test_pair_cifar10_mapping(clean):
    result = pair(clean, 0.4, C, gen(4), mapping="cifar10")
    assert_valid_result(result, clean, C)
    sources = torch.tensor([9, 2, 4, 3, 5])
    in_map = torch.isin(clean, sources)
    assert not result.corrupted[~in_map].any()
    assert_binomial(int(result.corrupted[in_map].sum()), int(in_map.sum()), 0.4)
    expected = {9: 1, 2: 0, 4: 7, 3: 5, 5: 3}
    for src, dst in expected.items():
        moved = result.labels[(clean == src) & result.corrupted]
        assert moved.numel() > 0 and bool((moved == dst).all())


def test_asymmetric_registry_name_is_cifar10_pair(clean):
    a = apply_noise("asymmetric", clean, 0.4, C, gen(5))
    b = pair(clean, 0.4, C, gen(5), mapping="cifar10")
    assert torch.equal(a.labels, b.labels)
    with pytest.raises(ValueError, match="num_classes=10"):
        pair(clean % 5, 0.4, 5, gen(0), mapping="cifar10")


def test_same_seed_same_labels_different_seed_different(clean):
    for name in ("symmetric", "pair", "asymmetric"):
        a = apply_noise(name, clean, 0.4, C, gen(7))
        b = apply_noise(name, clean, 0.4, C, gen(7))
        c = apply_noise(name, clean, 0.4, C, gen(8))
        assert torch.equal(a.labels, b.labels)
        assert not torch.equal(a.labels, c.labels)


def test_transition_matches_counts_and_empty_class_is_identity():
    clean = torch.tensor([0, 0, 0, 0, 2, 2])
    noisy = torch.tensor([0, 1, 1, 2, 2, 0])
    t = realised_transition(clean, noisy, 3)
    expected = torch.tensor([[0.25, 0.5, 0.25], [0.0, 1.0, 0.0], [0.5, 0.0, 0.5]], dtype=torch.float64)
    torch.testing.assert_close(t, expected)


def test_none_noise_is_identity(clean):
    result = apply_noise("none", clean, 0.0, C, gen())
    assert torch.equal(result.labels, clean) and not result.corrupted.any()
    torch.testing.assert_close(result.transition, torch.eye(C, dtype=torch.float64))


def test_matrix_noise_realises_given_matrix():
    k, n = 5, 100_000
    raw = torch.rand(k, k, generator=gen(9), dtype=torch.float64) + torch.eye(k, dtype=torch.float64) * 2
    matrix = raw / raw.sum(1, keepdim=True)
    labels = torch.randint(0, k, (n,), generator=gen(10))
    result = apply_noise("matrix", labels, 0.0, k, gen(11), matrix=matrix)
    assert_valid_result(result, labels, k)
    # ~20k samples per row: binomial sd <= 0.0036, so 0.02 is > 5 sigma.
    torch.testing.assert_close(result.transition, matrix, atol=0.02, rtol=0)
    again = from_matrix(labels, matrix.numpy(), gen(11))
    assert torch.equal(again.labels, result.labels)


@pytest.mark.parametrize(
    ("matrix", "match"),
    [
        ([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]], "square"),
        ([[1.2, -0.2], [0.0, 1.0]], "non-negative"),
        ([[0.5, 0.4], [0.0, 1.0]], "row 0 sums to"),
        ([[float("nan"), 1.0], [0.0, 1.0]], "finite"),
    ],
)
def test_bad_matrix_rejected(matrix, match):
    with pytest.raises(ValueError, match=match):
        from_matrix(torch.tensor([0, 1]), matrix, gen())


def test_matrix_size_must_match_num_classes(clean):
    with pytest.raises(ValueError, match="num_classes"):
        apply_noise("matrix", clean, 0.0, C, gen(), matrix=torch.eye(3))


@pytest.mark.parametrize("rate", [1.5, -0.1, float("nan")])
def test_rate_outside_unit_interval_rejected(clean, rate):
    with pytest.raises(ValueError, match=r"noise rate must be in \[0, 1\]"):
        apply_noise("symmetric", clean, rate, C, gen())
    with pytest.raises(ValueError, match=r"noise rate must be in \[0, 1\], got 1.5"):
        symmetric(clean, 1.5, C, gen())


def test_unknown_noise_name_lists_valid_names(clean):
    with pytest.raises(UnknownNameError) as info:
        apply_noise("gaussian", clean, 0.2, C, gen())
    message = str(info.value)
    for name in ("none", "symmetric", "pair", "asymmetric", "instance", "matrix", "file"):
        assert name in message
    assert set(NOISE.names()) == {"none", "symmetric", "pair", "asymmetric", "instance", "matrix", "file"}


def test_unknown_option_rejected(clean):
    with pytest.raises(ValueError, match="valid options: include_true"):
        apply_noise("symmetric", clean, 0.2, C, gen(), mapping="next")


def test_labels_out_of_range_rejected():
    with pytest.raises(ValueError, match="out of range"):
        symmetric(torch.tensor([0, 10]), 0.2, C, gen())


def test_file_noise_from_npy(tmp_path):
    clean = torch.tensor([0, 1, 2, 3, 4, 5])
    noisy = np.array([0, 2, 2, 3, 1, 5], dtype=np.int64)
    np.save(tmp_path / "noisy.npy", noisy)
    result = apply_noise("file", clean, 0.0, 6, gen(), path=tmp_path / "noisy.npy")
    assert torch.equal(result.labels, torch.from_numpy(noisy))
    assert result.corrupted.tolist() == [False, True, False, False, True, False]
    assert_valid_result(result, clean, 6)


def test_file_noise_from_cifar_n_style_pt(tmp_path):
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 10, 50)
    human = {
        "clean_label": clean,
        "worse_label": (clean + (rng.random(50) < 0.4)) % 10,
        "aggre_label": (clean + (rng.random(50) < 0.1)) % 10,
        "random_label1": rng.integers(0, 10, 50),
    }
    path = tmp_path / "CIFAR-10_human.pt"
    torch.save(human, path)
    clean_t = torch.from_numpy(clean)
    default = from_file(clean_t, path)  # worse_label by default
    assert torch.equal(default.labels, torch.from_numpy(human["worse_label"]))
    aggre = apply_noise("file", clean_t, 0.0, 10, gen(), path=path, key="aggre_label")
    assert torch.equal(aggre.labels, torch.from_numpy(human["aggre_label"]))
    # CIFAR-100N style, and tensors instead of numpy arrays.
    torch.save({"clean_label": clean_t, "noisy_label": clean_t.flip(0)}, tmp_path / "CIFAR-100_human.pt")
    assert torch.equal(from_file(clean_t, tmp_path / "CIFAR-100_human.pt").labels, clean_t.flip(0))
    # A subset of the file (e.g. training indices after a meta split).
    idx = torch.tensor([1, 3, 5])
    sub = from_file(clean_t[idx], path, indices=idx)
    assert torch.equal(sub.labels, torch.from_numpy(human["worse_label"])[idx])


def test_file_noise_reads_numpy1_pickles(tmp_path):
    # The published CIFAR-N files name numpy.core.multiarray (numpy 1.x); emulate that spelling.
    path = tmp_path / "old.pt"
    torch.save({"worse_label": np.arange(4)}, path, _use_new_zipfile_serialization=False)
    raw = path.read_bytes().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")
    path.write_bytes(raw)
    assert from_file(torch.zeros(4, dtype=torch.long), path).labels.tolist() == [0, 1, 2, 3]


def test_file_noise_errors(tmp_path):
    clean = torch.tensor([0, 1, 2])
    np.save(tmp_path / "short.npy", np.array([0, 1]))
    with pytest.raises(DataError, match="has 2 labels but 3 were expected"):
        from_file(clean, tmp_path / "short.npy")
    torch.save({"clean_label": clean, "other": clean}, tmp_path / "dict.pt")
    with pytest.raises(DataError, match="key="):
        from_file(clean, tmp_path / "dict.pt")
    with pytest.raises(DataError, match="valid keys: clean_label, other"):
        from_file(clean, tmp_path / "dict.pt", key="worse")
    with pytest.raises(DataError, match="not found"):
        from_file(clean, tmp_path / "missing.npy")
    (tmp_path / "dict.csv").write_text("0\n1\n2\n")
    with pytest.raises(DataError, match="unsupported"):
        from_file(clean, tmp_path / "dict.csv")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="cannot read"):
        from_file(clean, tmp_path / "bad.pt")


def test_file_noise_refuses_code_in_pt(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            import os

            return (os.system, (f"touch {marker}",))

    torch.save({"worse_label": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(DataError):
        from_file(torch.zeros(1, dtype=torch.long), tmp_path / "evil.pt")
    assert not marker.exists()


def test_save_and_load_noisy_labels_round_trip(tmp_path, clean):
    result = symmetric(clean, 0.4, C, gen(12))
    path = tmp_path / "sub" / "noise.pt"
    save_noisy_labels(path, clean, result)
    # no temp file left behind; the checksum sidecar beside it
    assert sorted(p.name for p in path.parent.iterdir()) == ["noise.pt", "noise.pt.sha256"]
    loaded_clean, loaded = load_noisy_labels(path)
    assert torch.equal(loaded_clean, clean)
    assert torch.equal(loaded.labels, result.labels)
    assert torch.equal(loaded.corrupted, result.corrupted)
    torch.testing.assert_close(loaded.transition, result.transition)
    # A saved file is also usable as file noise.
    assert torch.equal(apply_noise("file", clean, 0.0, C, gen(), path=path).labels, result.labels)
    save_noisy_labels(path, clean, symmetric(clean, 0.1, C, gen(13)))  # atomic overwrite
    assert not torch.equal(load_noisy_labels(path)[1].labels, result.labels)


def test_load_noisy_labels_rejects_other_files(tmp_path):
    torch.save({"labels": torch.zeros(3)}, tmp_path / "x.pt")
    with pytest.raises(DataError, match="not a famus noisy-label file"):
        load_noisy_labels(tmp_path / "x.pt")


# ---------------------------------------------------------------------------------------------
# Instance-dependent noise (Xia et al. 2020)

N_INST = 10_000


@pytest.fixture(scope="module")
def images() -> tuple[torch.Tensor, torch.Tensor]:
    """``N_INST`` random uint8 28x28 "images" and their labels."""
    g = gen(321)
    x = torch.randint(0, 256, (N_INST, 1, 28, 28), generator=g, dtype=torch.uint8)
    return x, torch.randint(0, C, (N_INST,), generator=g)


def test_truncated_normal_matches_scipy():
    stats = pytest.importorskip("scipy.stats")
    draws = truncated_normal(50_000, 0.2, 0.1, 0.0, 1.0, gen(1))
    assert draws.dtype == torch.float64 and float(draws.min()) >= 0.0 and float(draws.max()) <= 1.0
    reference = stats.truncnorm(-2.0, 8.0, loc=0.2, scale=0.1)
    assert stats.kstest(draws.numpy(), reference.cdf).pvalue > 1e-3
    assert float(draws.mean()) == pytest.approx(reference.mean(), abs=0.002)


@pytest.mark.parametrize("rate", [0.2, 0.4, 0.6])
def test_instance_noise_realised_rate_and_transition(images, rate):
    x, clean = images
    result = apply_noise("instance", clean, rate, C, gen(2), features=x)
    assert_valid_result(result, clean, C)
    assert abs(result.rate - rate) < 0.03, result.rate
    # every class keeps about 1 - rate of its labels (1000 examples a class: sd about 0.016 + the q spread)
    assert torch.allclose(result.transition.diag(), torch.full((C,), 1 - rate, dtype=torch.float64), atol=0.06)


def test_instance_probabilities_follow_the_generator(images):
    x, clean = images
    probs = instance_probabilities(x, clean, 0.4, C, gen(3))
    assert probs.shape == (N_INST, C) and probs.dtype == torch.float64
    torch.testing.assert_close(probs.sum(1), torch.ones(N_INST, dtype=torch.float64))
    keep = probs[torch.arange(N_INST), clean]  # 1 - q_i
    flip = 1 - keep
    # the flip rate differs by example: q_i ~ N(0.4, 0.1^2) truncated to [0, 1]
    assert 0.08 < float(flip.std()) < 0.12 and abs(float(flip.mean()) - 0.4) < 0.01
    assert float(flip.min()) >= 0 and float(flip.max()) <= 1
    # rebuilt by hand from the documented random stream: q from N uniforms, then W[c] (d, C) per class
    g = gen(3)
    q = truncated_normal(N_INST, 0.4, 0.1, 0.0, 1.0, g)
    w = torch.stack([torch.randn(784, C, generator=g, dtype=torch.float64) for _ in range(C)])
    flat = x.reshape(N_INST, -1).double() / 255
    unit = flat / flat.norm(dim=1, keepdim=True)
    for i in (0, 1, 2, 4321, N_INST - 1):
        scores = unit[i] @ w[clean[i]]
        scores[clean[i]] = -math.inf
        row = q[i] * torch.softmax(scores, 0)
        row[clean[i]] = 1 - q[i]
        torch.testing.assert_close(probs[i], row)


def test_instance_noise_depends_on_the_example(images):
    x, clean = images
    # the same labels with other inputs: other noisy labels (same seed)
    a = apply_noise("instance", clean, 0.4, C, gen(4), features=x)
    b = apply_noise("instance", clean, 0.4, C, gen(4), features=255 - x)
    assert not torch.equal(a.labels, b.labels)
    # the wrong class depends on x: two examples of one class, one wrong-class distribution each
    probs = instance_probabilities(x, clean, 0.4, C, gen(5))
    same = (clean == 0).nonzero().squeeze(1)[:2]
    wrong = probs[same][:, 1:] / probs[same][:, 1:].sum(1, keepdim=True)
    assert (wrong[0] - wrong[1]).abs().sum() > 0.1
    # and only on x: a repeated input with its label gets the same row wherever it sits
    x2, y2 = x.clone(), clean.clone()
    x2[7], y2[7] = x2[3], y2[3]
    p2 = instance_probabilities(x2, y2, 0.4, C, gen(5))
    wrong2 = p2[[3, 7]][:, torch.arange(C) != y2[3]]
    torch.testing.assert_close(wrong2[0] / wrong2[0].sum(), wrong2[1] / wrong2[1].sum())
    # the scale of the inputs does not matter (x is L2-normalised): pixels or pixels / 255
    torch.testing.assert_close(instance_probabilities(x.double() / 255, clean, 0.4, C, gen(5)), probs)


def test_instance_noise_is_seeded_and_in_range(images):
    x, clean = images
    a = instance(clean, 0.5, C, gen(6), features=x)
    b = instance(clean, 0.5, C, gen(6), features=x)
    c = instance(clean, 0.5, C, gen(7), features=x)
    assert torch.equal(a.labels, b.labels) and not torch.equal(a.labels, c.labels)
    assert int(a.labels.min()) >= 0 and int(a.labels.max()) < C
    # rate 0 flips nothing; rate 1 flips the mean of N(1, 0.1^2) truncated to [0, 1] (about 0.92)
    assert not instance(clean, 0.0, C, gen(8), features=x).corrupted.any()
    assert abs(instance(clean, 1.0, C, gen(9), features=x).rate - 0.92) < 0.02


def test_instance_noise_saved_like_every_other(tmp_path, images):
    x, clean = images
    result = apply_noise("instance", clean, 0.4, C, gen(10), features=x)
    save_noisy_labels(tmp_path / "n.pt", clean, result)
    loaded_clean, loaded = load_noisy_labels(tmp_path / "n.pt")
    assert torch.equal(loaded_clean, clean) and torch.equal(loaded.labels, result.labels)
    torch.testing.assert_close(loaded.transition, result.transition)


def test_instance_noise_errors(images):
    x, clean = images
    with pytest.raises(ValueError, match="pass features="):
        apply_noise("instance", clean, 0.4, C, gen())
    with pytest.raises(ValueError, match="one input per label"):
        apply_noise("instance", clean, 0.4, C, gen(), features=x[:10])
    with pytest.raises(ValueError, match="std must be > 0"):
        apply_noise("instance", clean, 0.4, C, gen(), features=x, std=0.0)
    with pytest.raises(ValueError, match="valid options: std"):
        apply_noise("instance", clean, 0.4, C, gen(), features=x, mapping="next")
    with pytest.raises(ValueError, match="num_classes >= 2"):
        apply_noise("instance", torch.zeros(3, dtype=torch.long), 0.4, 1, gen(), features=x[:3])


@pytest.mark.parametrize("name", ["none", "symmetric", "pair", "asymmetric"])
def test_features_leave_the_other_noises_unchanged(clean, name):
    """Passing the inputs (as training does for every noise) changes no label of the class-conditional noises."""
    x = torch.randint(0, 256, (N, 3), generator=gen(11), dtype=torch.uint8)
    a = apply_noise(name, clean, 0.4 if name != "none" else 0.0, C, gen(12))
    b = apply_noise(name, clean, 0.4 if name != "none" else 0.0, C, gen(12), features=x)
    assert torch.equal(a.labels, b.labels)
