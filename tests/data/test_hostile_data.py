"""Hostile data (issue 25): no file can exhaust the machine, hang the loader or fail a run after training.

Image bombs are refused from their header, or decoded within the memory budget (checked in a subprocess
under an address-space limit); labels, names, list files and feature values are checked at load, each
refusal one line naming the file.
"""

import os
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import famus
from famus.data import DataError, load_dataset, load_trusted
from tests.own_data import images, save, write_class_folders

REPO = Path(famus.__file__).resolve().parents[1]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def png_bomb(path: Path, width: int, height: int, pixels: bool = True) -> Path:
    """A grayscale PNG whose header says ``width x height``; its rows are zeros (a 10000x10000 one is 97 KB), or,
    with ``pixels=False``, absent (a 60000x60000 header in 65 bytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    z = zlib.compressobj(9)
    row = b"\0" * (1 + width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush() if pixels else zlib.compress(b"")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + chunk(b"IDAT", body) + chunk(b"IEND", b""))
    return path


def run_limited(script: str, headroom_mb: int) -> subprocess.CompletedProcess:
    """``script`` in a fresh interpreter whose address space is capped at what it maps after importing famus plus
    ``headroom_mb``: a loader that decoded a bomb would die of MemoryError there, not eat the machine."""
    prelude = textwrap.dedent(f"""
        import resource, sys
        import famus.data, famus.cli
        vm = next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith("VmSize:"))
        resource.setrlimit(resource.RLIMIT_AS, (vm + {headroom_mb} * 2**20, resource.RLIM_INFINITY))
    """)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(script)], capture_output=True, text=True,
                          env=env, timeout=120, cwd=REPO)


# ------------------------------------------------------------------------------------ image bombs


@pytest.mark.slow
@pytest.mark.parametrize("case", ["header claims 60000x60000", "decodes to 10000x10000"])
def test_image_bombs_are_refused_in_one_line_within_bounded_memory(tmp_path, case):
    root = write_class_folders(tmp_path / "data", 2, seed=0)
    if case.startswith("header"):  # 65 bytes: Pillow's own guard trips as the file is opened
        png_bomb(root / "ant" / "000.png", 60000, 60000, pixels=False)
    else:  # 97 KB and the first image (whose size the others would be resized to)
        png_bomb(root / "ant" / "000.png", 10000, 10000)
        for i in range(3, 30):
            save(images(0, 1, seed=i)[0], root / "ant" / f"{i:03d}.png")
    # 1 GiB beyond the interpreter: enough for any sane load, far from the 3.6 GB / 3 GB these ask for
    out = run_limited(f"""
        sys.exit(famus.cli.main(["train", "--dataset", "folder", "--data-dir", {str(root)!r}, "--model", "mlp",
                                 "--out", {str(tmp_path / "run")!r}, "--no-progress"]))
    """, headroom_mb=1024)
    err = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(err) == 1, (out.returncode, out.stderr[-2000:])
    assert "ant/000.png is " in err[0] and "Mpx, more than the 67.1 Mpx famus decodes per image" in err[0], err[0]
    assert "dataset_options.max_pixels" in err[0]
    assert not (tmp_path / "run").exists()  # refused before anything was written


@pytest.mark.slow
def test_big_images_decode_within_the_memory_budget_or_are_refused(tmp_path):
    """Allowed (``max_pixels``), four 100 Mpx images decode under a 700 MB address-space limit (fewer decodes
    run at once); under 80 MB the loader refuses them in one line, saying what they need, instead of dying."""
    root = write_class_folders(tmp_path / "data", 2, seed=0)
    bomb = png_bomb(tmp_path / "bomb.png", 10000, 10000)
    for i in range(4):
        (root / "moth" / f"big{i}.png").write_bytes(bomb.read_bytes())
    script = f"""
        try:
            ds = famus.data.load_dataset("folder", data_dir={str(root)!r}, image_size=8, max_pixels=2 * 10**8)
        except famus.data.DataError as e:
            print("refused:", e)
        else:
            print("loaded", tuple(ds.train_x.shape), int(ds.train_x[ds.train_paths.index("moth/big0.png")].max()))
    """
    ok = run_limited(script, headroom_mb=700)
    assert ok.returncode == 0 and ok.stdout.strip() == "loaded (10, 1, 8, 8) 0", ok.stderr[-2000:]
    tight = run_limited(script, headroom_mb=80)
    assert tight.returncode == 0, tight.stderr[-2000:]
    line = tight.stdout.strip()
    assert line.startswith("refused: folder ") and "MiB to decode the largest" in line and "\n" not in line
    assert "address-space limit" in line


def test_a_bomb_header_is_refused_before_decoding(tmp_path):
    """The 65-byte 60000x60000 PNG, in this process: refused from its header (Pillow's guard, not a traceback)."""
    root = write_class_folders(tmp_path / "data", 2, seed=0)
    png_bomb(root / "ant" / "001.png", 60000, 60000, pixels=False)
    with pytest.raises(DataError) as exc:
        load_dataset("folder", data_dir=root)
    assert "ant/001.png is 3600.0 Mpx, more than the 67.1 Mpx famus decodes per image" in one_line(exc)


def test_pixel_limit_is_checked_from_the_header_and_overridable(tmp_path):
    from famus.data.images import DEFAULT_MAX_PIXELS

    root = write_class_folders(tmp_path / "data", 2, seed=0)  # 8x8 images: 64 pixels
    with pytest.raises(DataError) as exc:
        load_dataset("folder", data_dir=root, max_pixels=63)
    assert "is 8x8, 64 pixels, more than the 63 pixels famus decodes per image" in one_line(exc)
    assert load_dataset("folder", data_dir=root, max_pixels=64).train_x.shape == (6, 1, 8, 8)
    with pytest.raises(DataError, match="max_pixels must be a positive whole number"):
        load_dataset("folder", data_dir=root, max_pixels=-1)
    assert DEFAULT_MAX_PIXELS == 8192 * 8192


# ------------------------------------------------------------------------------------ names


def test_class_folder_not_utf8_is_refused_at_load_naming_it(tmp_path):
    root = write_class_folders(tmp_path / "data", 2, seed=0)
    bad = os.fsdecode(os.fsencode(root) + b"/caf\xe9")
    os.rename(root / "moth", bad)
    with pytest.raises(DataError) as exc:
        load_dataset("folder", data_dir=root)
    msg = one_line(exc)
    assert "the class folder " in msg and "caf\\xe9 has a name that is not valid UTF-8" in msg
    msg.encode("utf-8")  # printable as it is


def test_image_name_not_utf8_is_refused_at_load(tmp_path):
    root = write_class_folders(tmp_path / "data", 2, seed=0)
    os.rename(root / "ant" / "000.png", os.fsdecode(os.fsencode(root / "ant") + b"/\xff.png"))
    with pytest.raises(DataError, match=r"the image .*ant/\\xff.png has a name that is not valid UTF-8"):
        load_dataset("folder", data_dir=root)


def test_data_dir_not_utf8_trains_end_to_end_and_resumes(tmp_path, one_thread):
    from famus.train import TrainConfig, train

    root = write_class_folders(Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xff")), 12, seed=0)
    cfg = dict(dataset="folder", data_dir=str(root), model="mlp", method="mwnet", meta_per_class=2, batch_size=8,
               epochs=1, out=str(tmp_path / "run"), progress=False, threads=1)
    train(TrainConfig(**cfg))
    summary = train(TrainConfig(**{**cfg, "epochs": 2, "resume": True}))
    assert summary["epochs"] == 2
    run = tmp_path / "run"
    assert (run / "summary.json").is_file() and (run / "example_scores.csv").read_text().count("\n") == 31


# ------------------------------------------------------------------------------------ labels


def write_labelled(root: Path, labels: list[str], name: str = "train.txt") -> None:
    for i in range(len(labels)):
        save(images(i % 3, 1, seed=i)[0], root / "imgs" / f"{i}.png")
    (root / name).write_text("".join(f"imgs/{i}.png {lab}\n" for i, lab in enumerate(labels)))


def test_sparse_integer_labels_need_num_classes(tmp_path):
    write_labelled(tmp_path, ["0", "1", "999", "0"])
    (tmp_path / "test.txt").write_text("imgs/0.png 1\n")
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", data_dir=tmp_path, image_size=8)
    assert ("the integer labels go up to 999, but only 3 of the 1000 classes 0..999 occur (no 2); pass "
            "dataset_options.num_classes=1000 to confirm") in one_line(exc)
    assert load_dataset("listfile", data_dir=tmp_path, image_size=8, num_classes=1000).num_classes == 1000


@pytest.mark.parametrize("labels,needle", [
    (["0", "-1", "1"], r"label -1 \(line 2 of .*train.txt\) is negative"),
    (["0", "1", "cat", "2"], r"image list .*train.txt mixes integer labels \(line 1 of .*train.txt: 0\) with class "
                             r"names \(line 3 of .*train.txt: cat\)"),
    (["0", "1", "7"], r"label '7' \(line 3 of .*train.txt\) is not one of the class indices 0..2"),
])
def test_bad_integer_labels_are_refused_with_file_and_line(tmp_path, labels, needle):
    write_labelled(tmp_path, labels)
    (tmp_path / "test.txt").write_text("imgs/0.png 0\n")
    options = {"num_classes": 3} if "7" in labels else {}
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", data_dir=tmp_path, image_size=8, **options)
    assert __import__("re").search(needle, one_line(exc)), one_line(exc)


def test_arrays_labels_sparse_or_negative_are_refused(tmp_path):
    x = np.zeros((4, 3), dtype=np.float32)
    np.savez(tmp_path / "sparse.npz", x=x, y=np.array([0, 1, 999, 0]))
    with pytest.raises(DataError, match="only 3 of the 1000 classes .* pass dataset_options.num_classes=1000"):
        load_dataset("arrays", data_dir=tmp_path / "sparse.npz")
    assert load_dataset("arrays", data_dir=tmp_path / "sparse.npz", num_classes=1000).num_classes == 1000
    np.savez(tmp_path / "neg.npz", x=x, y=np.array([0, 1, -1, 0]))
    with pytest.raises(DataError, match=r"label -1 \(example 2 of .*neg.npz \[x, y\]\) is negative"):
        load_dataset("arrays", data_dir=tmp_path / "neg.npz")


# ------------------------------------------------------------------------------------ list files


def test_special_files_in_a_list_are_not_regular_files_and_never_block(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    for target, kind in (("/dev/zero", "a device"), (str(fifo), "a FIFO")):
        (tmp_path / "train.txt").write_text(f"{target} 0\n")
        (tmp_path / "test.txt").write_text("")
        with pytest.raises(DataError) as exc:  # a FIFO opened for reading would block here forever
            load_dataset("listfile", data_dir=tmp_path, image_size=8)
        assert f"is not a regular file ({kind})" in one_line(exc) and "line 1 of" in one_line(exc)
    with pytest.raises(DataError, match=r"image list .*pipe.png is not a regular file \(a FIFO\)"):
        load_dataset("listfile", data_dir=tmp_path, train_list="pipe.png")


def test_a_10_mb_list_line_gives_a_short_error(tmp_path):
    (tmp_path / "train.txt").write_text("x" * 10_000_000 + ".png 0\n")
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", data_dir=tmp_path)
    assert "line 1 of image list" in one_line(exc) and len(one_line(exc)) < 400, len(one_line(exc))


def test_a_list_file_that_is_not_utf8_is_named(tmp_path):
    write_labelled(tmp_path, ["0", "1"])
    (tmp_path / "test.txt").write_bytes(b"imgs/0.png 0\nimgs/1.png caf\xe9\n")
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", data_dir=tmp_path, image_size=8)
    assert "test.txt is not UTF-8 text (line 2: byte 0xe9" in one_line(exc)


def test_trusted_list_labels_are_checked_too(tmp_path):
    root = write_class_folders(tmp_path / "data", 3, seed=0)
    like = load_dataset("folder", data_dir=root)
    write_labelled(tmp_path / "meta", ["ant", "1"], name="meta.txt")
    with pytest.raises(DataError, match="mixes integer labels"):
        load_trusted(tmp_path / "meta" / "meta.txt", like)


# ------------------------------------------------------------------------------------ non-finite features


@pytest.mark.parametrize("split", ["train", "val", "test"])
def test_nan_or_inf_features_are_refused_naming_the_split_and_count(tmp_path, split):
    arrays = {}
    for s in ("train", "val", "test"):
        x = np.random.default_rng(0).normal(size=(6, 3)).astype(np.float32)
        if s == split:
            x[1, 0], x[4, 2], x[4, 1] = np.nan, np.inf, -np.inf
        arrays.update({f"x_{s}": x, f"y_{s}": np.array([0, 1, 2, 0, 1, 2])})
    np.savez(tmp_path / "f.npz", **arrays)
    with pytest.raises(DataError) as exc:
        load_dataset("arrays", data_dir=tmp_path / "f.npz")
    assert (f"the {split} split holds 3 NaN or inf feature values (in 2 of 6 examples, the first is example 1)"
            in one_line(exc))


def test_nan_in_a_trusted_feature_set_is_refused(tmp_path):
    np.savez(tmp_path / "f.npz", x=np.zeros((6, 3), np.float32), y=np.array([0, 1, 2, 0, 1, 2]))
    like = load_dataset("arrays", data_dir=tmp_path / "f.npz")
    np.savez(tmp_path / "meta.npz", x=np.array([[0, 0, np.nan]], np.float32), y=np.array([1]))
    with pytest.raises(DataError, match=r"--meta-data .*meta.npz \(the meta split\) holds 1 NaN or inf"):
        load_trusted(str(tmp_path / "meta.npz"), like)


def test_an_array_header_asking_for_more_than_memory_is_refused_before_reading(tmp_path):
    """A 100-byte .npy whose header claims 2**40 float64 values (8 TiB)."""
    path = tmp_path / "x.npy"
    with open(path, "wb") as f:
        np.lib.format.write_array_header_1_0(f, {"descr": "<f8", "fortran_order": False, "shape": (2**40, 1)})
    np.save(tmp_path / "y.npy", np.zeros(3, np.int64))
    with pytest.raises(DataError, match=r"x.npy holds an array of shape \(1099511627776, 1\) \(float64\), 8192.0 GiB"):
        load_dataset("arrays", train="x.npy,y.npy", data_dir=tmp_path)
    assert torch.zeros(1).sum() == 0  # still alive
