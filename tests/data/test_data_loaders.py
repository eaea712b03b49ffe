"""Dataset loaders on small files written in the real on-disk formats."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from famus.data import DATASETS, DataError, Dataset, channel_stats, load_dataset, read_idx, safe_load
from famus.registry import UnknownNameError

# --------------------------------------------------------------------------------------------
# Writers for the real formats


def write_idx(path: Path, arr: np.ndarray, code: int = 0x08, gz: bool = True) -> None:
    big_endian = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    raw = header + arr.astype(big_endian).tobytes()
    path.write_bytes(gzip.compress(raw) if gz else raw)


def write_fashion(root: Path, n_train: int = 12, n_test: int = 5, gz: bool = True, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for name, arr in arrays.items():
        write_idx(root / (name + ".gz" if gz else name), arr, gz=gz)
    return arrays


class Py2StrPickler(pickle._Pickler):  # the pure-Python pickler lets us override types
    """Writes bytes and str as Python 2 ``str`` (BINSTRING opcodes), like the original CIFAR files."""

    dispatch = dict(pickle._Pickler.dispatch)

    def save_py2_str(self, obj: bytes | str) -> None:
        if isinstance(obj, str):
            obj = obj.encode("latin-1")
        n = len(obj)
        if n < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([n]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", n) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_py2_str
    dispatch[str] = save_py2_str


def dump_cifar(path: Path, obj: object, style: str) -> None:
    """``style``: 'py3' (protocol 2, bytes keys) or 'py2' (Python 2 strs, numpy.core globals)."""
    if style == "py3":
        with open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)
        return
    buf = io.BytesIO()
    Py2StrPickler(buf, protocol=2).dump(obj)
    path.write_bytes(buf.getvalue().replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n"))


def write_cifar10(parent: Path, per_batch: int = 4, style: str = "py3", str_keys: bool = False) -> dict:
    rng = np.random.default_rng(1)
    root = parent / "cifar-10-batches-py"
    root.mkdir(parents=True)
    key = (lambda k: k) if str_keys else (lambda k: k.encode())
    out = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        batch = {
            key("batch_label"): b"batch",
            key("labels"): labels,
            key("data"): data,
            key("filenames"): [b"x.png"] * per_batch,
        }
        dump_cifar(root / name, batch, style)
        out[name] = (data, labels)
    names = [
        n.encode()
        for n in ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    ]
    dump_cifar(
        root / "batches.meta", {key("label_names"): names, key("num_cases_per_batch"): per_batch}, style
    )
    return out


def write_cifar100(parent: Path, n: int = 6) -> dict:
    rng = np.random.default_rng(2)
    root = parent / "cifar-100-python"
    root.mkdir(parents=True)
    out = {}
    for name in ("train", "test"):
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        fine = [int(v) for v in rng.integers(0, 100, n)]
        batch = {
            b"filenames": [b"f"] * n,
            b"batch_label": b"b",
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
            b"data": data,
        }
        dump_cifar(root / name, batch, "py3")
        out[name] = (data, fine)
    meta = {
        b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
        b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)],
    }
    dump_cifar(root / "meta", meta, "py3")
    return out


# --------------------------------------------------------------------------------------------
# IDX / Fashion-MNIST


def test_read_idx_dtypes_and_endianness(tmp_path):
    arr = np.arange(-6, 6, dtype=np.int32).reshape(3, 4) * 1000
    write_idx(tmp_path / "a.idx", arr, code=0x0C, gz=False)
    out = read_idx(tmp_path / "a.idx")
    assert out.dtype == torch.int32 and torch.equal(out, torch.from_numpy(arr))
    write_idx(tmp_path / "b.idx.gz", arr.astype(np.float64) / 7, code=0x0E)
    torch.testing.assert_close(read_idx(tmp_path / "b.idx.gz"), torch.from_numpy(arr / 7))


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_from_idx_files(tmp_path, gz):
    arrays = write_fashion(tmp_path, gz=gz)
    ds = load_dataset("fashion-mnist", data_dir=tmp_path)
    assert ds.train_x.shape == (12, 1, 28, 28) and ds.test_x.shape == (5, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert torch.equal(ds.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(ds.test_y, torch.from_numpy(arrays["t10k-labels-idx1-ubyte"]).long())
    assert ds.num_classes == 10 and len(ds.class_names) == 10
    assert ds.mean == channel_stats(ds.train_x)[0]


def test_fashion_mnist_missing_files_name_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as info:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert "--data-dir" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("gz", [True, False])
def test_fashion_mnist_truncated_file_is_corrupt(tmp_path, gz):
    write_fashion(tmp_path, gz=gz)
    name = "train-images-idx3-ubyte" + (".gz" if gz else "")
    raw = (tmp_path / name).read_bytes()
    (tmp_path / name).write_bytes(raw[: len(raw) - 100])
    with pytest.raises(DataError, match=f"{name} is corrupt"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_idx_bad_header_and_trailing_bytes(tmp_path):
    (tmp_path / "x").write_bytes(b"\x12\x34\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="no IDX magic"):
        read_idx(tmp_path / "x")
    (tmp_path / "y").write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="dtype code 0x07"):
        read_idx(tmp_path / "y")
    (tmp_path / "z").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00\x00")
    with pytest.raises(DataError, match="trailing bytes"):
        read_idx(tmp_path / "z")
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "missing")


def test_fashion_mnist_label_count_mismatch(tmp_path):
    write_fashion(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.zeros(3, dtype=np.uint8))
    with pytest.raises(DataError, match="train-labels-idx1-ubyte.gz is corrupt"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


@pytest.mark.skipif(
    not Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz").exists(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_real_fashion_mnist():
    ds = load_dataset("fashion-mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert ds.train_x.dtype == torch.uint8 and ds.num_classes == 10
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10
    assert abs(ds.mean[0] - 0.2860) < 1e-3 and abs(ds.std[0] - 0.3530) < 1e-3


# --------------------------------------------------------------------------------------------
# CIFAR


@pytest.mark.parametrize(("style", "str_keys"), [("py3", False), ("py2", False), ("py3", True)])
def test_cifar10_python_batches(tmp_path, style, str_keys):
    written = write_cifar10(tmp_path, style=style, str_keys=str_keys)
    for data_dir in (tmp_path, tmp_path / "cifar-10-batches-py"):  # parent or the batches dir
        ds = load_dataset("cifar10", data_dir=data_dir)
        assert ds.train_x.shape == (20, 3, 32, 32) and ds.test_x.shape == (4, 3, 32, 32)
        assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
        data, labels = written["data_batch_2"]
        assert torch.equal(ds.train_x[4:8], torch.from_numpy(data).view(4, 3, 32, 32))
        assert ds.train_x[4, 1, 0, 0] == data[0, 1024]  # the green plane starts at column 1024
        assert ds.train_y[4:8].tolist() == labels
        assert ds.class_names[9] == "truck" and len(ds.mean) == 3


def test_cifar100_fine_and_coarse(tmp_path):
    written = write_cifar100(tmp_path)
    ds = load_dataset("cifar100", data_dir=tmp_path)
    assert ds.num_classes == 100 and ds.train_x.shape == (6, 3, 32, 32)
    assert ds.train_y.tolist() == written["train"][1]
    assert ds.class_names[3] == "fine3"
    coarse = load_dataset("cifar100", data_dir=tmp_path / "cifar-100-python", label_kind="coarse")
    assert coarse.num_classes == 20 and coarse.test_y.tolist() == [v // 5 for v in written["test"][1]]


def test_cifar_missing_names_the_fix(tmp_path):
    with pytest.raises(DataError, match="cifar-10-python.tar.gz.*--data-dir"):
        load_dataset("cifar10", data_dir=tmp_path)
    with pytest.raises(DataError, match="no default location"):
        load_dataset("cifar100")
    (tmp_path / "cifar-10-python.tar.gz").write_bytes(b"")
    with pytest.raises(DataError, match="not extracted"):
        load_dataset("cifar10", data_dir=tmp_path)


def test_cifar_truncated_pickle_is_corrupt(tmp_path):
    write_cifar10(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    batch.write_bytes(batch.read_bytes()[:500])
    with pytest.raises(DataError, match="data_batch_3 is corrupt"):
        load_dataset("cifar10", data_dir=tmp_path)


class Evil:
    """Pickles to a call of os.system, the classic pickle exploit."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class EvalEvil:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (eval, (f"open({str(self.marker)!r}, 'w').close()",))


@pytest.mark.parametrize("payload", [Evil, EvalEvil])
def test_malicious_cifar_pickle_is_refused(tmp_path, payload):
    write_cifar10(tmp_path)
    marker = tmp_path / "pwned"
    batch = {b"data": payload(marker), b"labels": [0]}
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(batch, f, protocol=2)
    with pytest.raises(DataError, match=r"refusing to unpickle (posix|nt|os|builtins)\.(system|eval)"):
        load_dataset("cifar10", data_dir=tmp_path)
    assert not marker.exists()
    # Sanity check: the payload is real and runs under plain pickle.
    pickle.loads(pickle.dumps(payload(marker)))
    assert marker.exists()


def test_safe_load_allows_plain_data(tmp_path):
    obj = {
        b"a": [1, 2.5, "s", b"b", None, True],
        "set": {1, 2},
        "fz": frozenset([3]),
        "c": 1j,
        "arr": np.arange(6, dtype=np.int64).reshape(2, 3),
        "scalar": np.float32(1.5),
    }
    for protocol in (2, pickle.HIGHEST_PROTOCOL):
        (tmp_path / "ok.pkl").write_bytes(pickle.dumps(obj, protocol=protocol))
        loaded = safe_load(tmp_path / "ok.pkl")
        assert loaded[b"a"] == obj[b"a"] and loaded["set"] == {1, 2} and loaded["scalar"] == 1.5
        assert np.array_equal(loaded["arr"], obj["arr"])
    (tmp_path / "od.pkl").write_bytes(pickle.dumps(__import__("collections").OrderedDict(a=1), protocol=2))
    with pytest.raises(DataError, match="refusing to unpickle collections.OrderedDict"):
        safe_load(tmp_path / "od.pkl")


# --------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_and_determinism():
    a = load_dataset("digits")
    b = load_dataset("digits")
    c = load_dataset("digits", seed=1)
    assert a.train_x.shape[1:] == (1, 8, 8) and a.train_x.shape[0] + a.test_x.shape[0] == 1797
    assert a.train_x.dtype == torch.uint8 and int(a.train_x.max()) == 255
    assert abs(a.test_x.shape[0] - 0.2 * 1797) <= 10
    assert torch.equal(a.train_x, b.train_x) and torch.equal(a.test_y, b.test_y)
    assert not torch.equal(a.test_y, c.test_y)
    assert torch.bincount(a.test_y, minlength=10).min() >= 34  # stratified: ~36 per class


# --------------------------------------------------------------------------------------------
# image lists


COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (10, 20, 30), (200, 100, 50)]


def write_listfile(root: Path) -> None:
    (root / "imgs" / "a b").mkdir(parents=True)
    lines = ["# comment line", ""]
    for i, color in enumerate(COLORS):
        rel = f"imgs/a b/{i}.png" if i == 0 else f"imgs/{i}.png"
        Image.new("RGB", (10 + i, 12), color).save(root / rel)
        lines.append(f"{rel} {i % 3}")
    Image.new("L", (9, 9), 77).save(root / "imgs" / "gray.png")
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    (root / "lists").mkdir()
    (root / "lists" / "test.txt").write_text("imgs/gray.png 4\nimgs/2.png 2\n")


def test_listfile_loads_resized_rgb(tmp_path):
    write_listfile(tmp_path)
    # labels 0, 1, 2 and 4: class 3 never occurs, so the count 5 must be confirmed
    with pytest.raises(DataError, match=r"only 4 of the 5 classes 0..4 occur \(no 3\); pass .*num_classes=5"):
        load_dataset("listfile", data_dir=tmp_path, test_list="lists/test.txt", image_size=8, workers=2)
    ds = load_dataset("listfile", data_dir=tmp_path, test_list="lists/test.txt", image_size=8, workers=2,
                      num_classes=5)
    assert ds.train_x.shape == (5, 3, 8, 8) and ds.test_x.shape == (2, 3, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.tolist() == [0, 1, 2, 0, 1]
    assert ds.num_classes == 5
    for i, color in enumerate(COLORS):
        assert torch.equal(ds.train_x[i, :, 3, 3], torch.tensor(color, dtype=torch.uint8))
    assert torch.equal(ds.test_x[0, :, 0, 0], torch.tensor([77, 77, 77], dtype=torch.uint8))
    gray = load_dataset(
        "listfile",
        data_dir=tmp_path,
        test_list=tmp_path / "lists" / "test.txt",
        channels=1,
        image_size=4,
        num_classes=7,
    )
    assert gray.train_x.shape == (5, 1, 4, 4) and gray.num_classes == 7


def test_listfile_errors(tmp_path):
    write_listfile(tmp_path)
    with pytest.raises(DataError, match="image list .*missing.txt not found"):
        load_dataset("listfile", data_dir=tmp_path, train_list="missing.txt", test_list="lists/test.txt")
    (tmp_path / "bad.txt").write_text("imgs/1.png 1\nimgs/2.png\n")
    with pytest.raises(DataError, match="bad line 2"):
        load_dataset("listfile", data_dir=tmp_path, train_list="bad.txt", test_list="lists/test.txt")
    (tmp_path / "gone.txt").write_text("imgs/1.png 1\n\nimgs/nope.png 0\n")
    with pytest.raises(DataError, match="nope.png .*line 3.*not found"):
        load_dataset("listfile", data_dir=tmp_path, train_list="gone.txt", test_list="lists/test.txt", num_classes=5)
    (tmp_path / "imgs" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "broken.txt").write_text("imgs/broken.png 0\n")
    with pytest.raises(DataError, match="broken.png .*corrupt"):
        load_dataset("listfile", data_dir=tmp_path, train_list="broken.txt", test_list="lists/test.txt",
                     num_classes=5)
    # an out-of-range label is refused naming its file and line
    with pytest.raises(DataError, match="label '4' \\(line 1 of .*test.txt\\) is not one of the class indices 0..2"):
        load_dataset("listfile", data_dir=tmp_path, test_list="lists/test.txt", num_classes=3)


# --------------------------------------------------------------------------------------------
# registry / Dataset


def test_registry_names_and_errors(tmp_path):
    assert set(DATASETS.names()) >= {"fashion-mnist", "cifar10", "cifar100", "digits", "listfile"}
    with pytest.raises(UnknownNameError, match="valid datasets: .*cifar10"):
        load_dataset("imagenet")
    with pytest.raises(DataError, match="unknown option.*image_size.*valid options: test_fraction, seed"):
        load_dataset("digits", image_size=4)


def test_dataset_validates_and_summarises():
    x = torch.zeros(2, 1, 4, 4, dtype=torch.uint8)
    y = torch.tensor([0, 1])
    ds = Dataset("toy", x, y, x, y, 2, (0.0,), (1.0,))
    assert repr(ds) == "Dataset('toy', train=2, test=2, image=1x4x4, classes=2)"
    assert ds.channels == 1 and ds.image_size == (4, 4)
    with pytest.raises(ValueError, match="labels outside"):
        Dataset("toy", x, y, x, y, 1, (0.0,), (1.0,))
    with pytest.raises(ValueError, match="uint8"):
        Dataset("toy", x.float(), y, x, y, 2, (0.0,), (1.0,))


def test_channel_stats_exact():
    x = torch.randint(0, 256, (7, 3, 5, 5), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    mean, std = channel_stats(x)
    ref = x.double().div(255).transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(torch.tensor(mean, dtype=torch.float64), ref.mean(1))
    torch.testing.assert_close(torch.tensor(std, dtype=torch.float64), ref.std(1, unbiased=False))
