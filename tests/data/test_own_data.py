"""Your own data: class folders, arrays, list files with class names, trusted sets, channel handling."""

import numpy as np
import pytest
import torch
from PIL import Image

from famus.data import Augmenter, DataError, load_dataset, load_trusted
from famus.data.images import convert_channels
from tests.own_data import CLASSES, arrays_of, images, save, write_class_folders, write_list, write_split_folders

NAMES = sorted(CLASSES)  # ["ant", "moth", "zebra"]


def one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


# ------------------------------------------------------------------------------------ folder


def test_folder_maps_class_names_in_sorted_order(tmp_path):
    root = write_split_folders(tmp_path / "data", train=4, val=2, test=3)
    ds = load_dataset("folder", data_dir=root, workers=2)
    assert ds.class_names == NAMES and ds.num_classes == 3
    assert ds.train_x.shape == (12, 1, 8, 8) and ds.val_x.shape == (6, 1, 8, 8) and ds.test_x.shape == (9, 1, 8, 8)
    for split in ("train", "val", "test"):
        paths, y = getattr(ds, f"{split}_paths"), getattr(ds, f"{split}_y")
        assert [NAMES[int(k)] for k in y] == [p.split("/")[1] for p in paths]
        assert all(p.startswith(f"{split}/") for p in paths)
    # the pixels are the files' pixels (grayscale kept as one channel)
    first = np.array(Image.open(root / ds.train_paths[0]))
    assert torch.equal(ds.train_x[0, 0], torch.from_numpy(first))
    assert not ds.flip and Augmenter.for_dataset(ds).flip is False  # no flips unless asked


def test_folder_without_split_folders_is_all_training(tmp_path):
    root = write_class_folders(tmp_path / "data", 3, seed=1)
    (root / "README.txt").write_text("not an image")
    (root / "ant" / "notes.txt").write_text("ignored")
    ds = load_dataset("folder", data_dir=root)
    assert ds.train_x.shape[0] == 9 and ds.test_x.shape[0] == 0 and ds.val_x is None
    assert ds.train_paths[0] == "ant/000.png"


def test_folder_channels_are_kept_unless_told(tmp_path):
    rgb = write_class_folders(tmp_path / "rgb", 2, seed=2, channels=3)
    assert load_dataset("folder", data_dir=rgb).train_x.shape[1] == 3
    gray = load_dataset("folder", data_dir=rgb, channels=1)
    assert gray.train_x.shape[1] == 1
    # one colour image among grayscale ones: every image becomes RGB
    mixed = write_class_folders(tmp_path / "mixed", 2, seed=3)
    save(images(0, 1, seed=4, channels=3)[0], mixed / "ant" / "colour.png")
    ds = load_dataset("folder", data_dir=mixed)
    assert ds.train_x.shape[1] == 3
    i = ds.train_paths.index("ant/000.png")
    assert torch.equal(ds.train_x[i, 0], ds.train_x[i, 2])  # a grayscale image has equal channels
    big = load_dataset("folder", data_dir=mixed, image_size=[6, 10], channels=3)
    assert big.train_x.shape[1:] == (3, 6, 10)


@pytest.mark.parametrize("case,needle", [
    ("empty class", "class folder .*empty_class has no images"),
    ("unreadable", "ant/000.png is corrupt or unreadable"),
    ("outside classes", "label 'wolf' \\(class folder wolf in .*test\\) is not one of the 3 classes \\(ant, moth, "),
    ("loose image", "holds images outside class folders"),
    ("no train", "has val/ but no train/"),
])
def test_folder_bad_layouts_are_one_line_errors(tmp_path, case, needle):
    root = write_split_folders(tmp_path / "data", train=2, val=0, test=1)
    if case == "empty class":
        (root / "train" / "empty_class").mkdir()
    elif case == "unreadable":
        (root / "train" / "ant" / "000.png").write_bytes(b"not a png at all")
    elif case == "outside classes":
        save(images(0, 1, seed=9)[0], root / "test" / "wolf" / "0.png")
    elif case == "loose image":
        save(images(0, 1, seed=9)[0], root / "train" / "stray.png")
    elif case == "no train":
        root = write_class_folders(tmp_path / "other" / "val", 1, seed=5).parent
    with pytest.raises(DataError) as exc:
        load_dataset("folder", data_dir=root)
    assert __import__("re").search(needle, one_line(exc)), one_line(exc)


# ------------------------------------------------------------------------------------ arrays


@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_arrays_images_in_every_layout(tmp_path, layout):
    x, y = arrays_of(4, seed=0, channels=1 if layout == "nhw" else 3)
    ref = torch.from_numpy(x).permute(0, 3, 1, 2)
    stored = {"nhw": x[..., 0], "nhwc": x, "nchw": x.transpose(0, 3, 1, 2)}[layout]
    np.savez(tmp_path / "d.npz", x=stored, y=y)
    ds = load_dataset("arrays", data_dir=tmp_path / "d.npz")
    assert torch.equal(ds.train_x, ref) and ds.train_x.dtype == torch.uint8
    assert ds.class_names == NAMES and [NAMES[k] for k in ds.train_y] == list(y)
    assert ds.test_x.shape[0] == 0


def test_arrays_split_keys_folder_layout_and_npy_pairs(tmp_path):
    x, y = arrays_of(4, seed=0)
    xt, yt = arrays_of(2, seed=1)
    ints = np.array([NAMES.index(c) for c in y])
    np.savez(tmp_path / "keras.npz", x_train=x, y_train=ints, x_test=xt, y_test=np.array([NAMES.index(c) for c in yt]))
    ds = load_dataset("arrays", data_dir=tmp_path / "keras.npz")
    assert ds.train_x.shape == (12, 8, 8, 1)[:1] + (1, 8, 8) and ds.test_x.shape[0] == 6
    assert ds.class_names is None and ds.num_classes == 3 and torch.equal(ds.train_y, torch.from_numpy(ints))
    (tmp_path / "dir").mkdir()
    np.save(tmp_path / "dir" / "train_x.npy", x)
    np.save(tmp_path / "dir" / "train_y.npy", y)
    np.savez(tmp_path / "dir" / "val.npz", images=xt, labels=yt)
    ds = load_dataset("arrays", data_dir=tmp_path / "dir")
    assert ds.train_x.shape[0] == 12 and ds.val_x.shape[0] == 6 and ds.class_names == NAMES
    ds = load_dataset("arrays", data_dir=tmp_path / "dir", train="train_x.npy,train_y.npy", channels=3)
    assert ds.train_x.shape[1] == 3


def test_arrays_feature_vectors_are_standardised(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 3.0, (40, 6)).astype(np.float64)
    y = rng.integers(0, 4, 40)
    np.savez(tmp_path / "f.npz", features=x, labels=y)
    ds = load_dataset("arrays", data_dir=tmp_path / "f.npz")
    assert ds.is_features and ds.train_x.shape == (40, 6, 1, 1) and ds.train_x.dtype == torch.float32
    z = Augmenter.for_dataset(ds)(ds.train_x, torch.Generator())
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(6), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(6), atol=1e-5, rtol=0)
    with pytest.raises(DataError, match="channels applies to images only"):
        load_dataset("arrays", data_dir=tmp_path / "f.npz", channels=1)


def test_arrays_errors(tmp_path):
    x, y = arrays_of(2, seed=0)
    np.savez(tmp_path / "float.npz", x=x.astype(np.float32) / 255, y=y)
    with pytest.raises(DataError, match="famus keeps images as uint8"):
        load_dataset("arrays", data_dir=tmp_path / "float.npz")
    np.savez(tmp_path / "obj.npz", x=x, y=np.array([object()] * len(y), dtype=object))
    with pytest.raises(DataError, match="not a readable .npy/.npz file of plain arrays"):
        load_dataset("arrays", data_dir=tmp_path / "obj.npz")
    np.savez(tmp_path / "ambiguous.npz", x=np.zeros((2, 3, 5, 3), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="layout=nchw or nhwc"):
        load_dataset("arrays", data_dir=tmp_path / "ambiguous.npz")
    np.savez(tmp_path / "outside.npz", x_train=x, y_train=y, x_test=x[:1], y_test=np.array(["wolf"]))
    with pytest.raises(DataError, match="label 'wolf' .* is not one of the 3 classes"):
        load_dataset("arrays", data_dir=tmp_path / "outside.npz")


# ------------------------------------------------------------------------------------ list files


def test_listfile_with_class_names(tmp_path):
    write_list(tmp_path, "train.txt", 3, seed=0)
    write_list(tmp_path, "test.txt", 1, seed=1)
    ds = load_dataset("listfile", data_dir=tmp_path, image_size=None, workers=2)
    assert ds.class_names == NAMES and ds.train_x.shape == (9, 1, 8, 8)  # grayscale kept, size kept
    assert [NAMES[k] for k in ds.train_y] == [p.split("-")[1] for p in ds.train_paths]
    fixed = load_dataset("listfile", data_dir=tmp_path, classes=["zebra", "moth", "ant"], image_size=4)
    assert fixed.class_names == ["zebra", "moth", "ant"] and torch.equal(fixed.train_y, 2 - ds.train_y)
    with open(tmp_path / "test.txt", "a") as f:
        f.write("imgs/test.txt-ant-0.png wolf\n")
    with pytest.raises(DataError) as exc:
        load_dataset("listfile", data_dir=tmp_path)
    msg = one_line(exc)
    assert "label 'wolf' (line 4 of" in msg and "is not one of the 3 classes (ant, moth, zebra)" in msg


# ------------------------------------------------------------------------------------ trusted sets


def test_trusted_folder_list_and_arrays_follow_the_training_classes(tmp_path):
    train = load_dataset("folder", data_dir=write_class_folders(tmp_path / "train", 3, seed=0, channels=3))
    meta = write_class_folders(tmp_path / "meta", 2, seed=7, classes=("moth", "zebra"))  # grayscale, 2 classes
    t = load_trusted(meta, train)
    assert t.x.shape == (4, 3, 8, 8) and t.x.dtype == torch.uint8  # converted to the training format
    assert t.y.tolist() == [1, 1, 2, 2] and t.paths[0] == "moth/000.png"
    write_list(tmp_path / "lst", "meta.txt", 1, seed=3)
    t = load_trusted(tmp_path / "lst" / "meta.txt", train)
    assert sorted(t.y.tolist()) == [0, 1, 2] and t.x.shape[1] == 3
    x, y = arrays_of(2, seed=4, channels=3)
    np.savez(tmp_path / "meta.npz", x=x, y=y)
    t = load_trusted(tmp_path / "meta.npz", train)
    assert [NAMES[k] for k in t.y] == list(y) and torch.equal(t.x, torch.from_numpy(x).permute(0, 3, 1, 2))
    bad = write_class_folders(tmp_path / "bad", 1, seed=8, classes=("moth", "wolf"))
    with pytest.raises(DataError, match="label 'wolf' .* is not one of the 3 classes"):
        load_trusted(bad, train)
    np.savez(tmp_path / "small.npz", x=np.zeros((2, 3, 5, 5), np.uint8), y=np.array([0, 1]))
    with pytest.raises(DataError, match="examples of shape \\(3, 5, 5\\), but the training ones are \\(3, 8, 8\\)"):
        load_trusted(tmp_path / "small.npz", train)


def test_convert_channels():
    x = torch.tensor([[[[10]], [[200]], [[30]]]], dtype=torch.uint8)  # (1, 3, 1, 1)
    gray = convert_channels(x, 1)
    expected = np.asarray(Image.fromarray(np.array([[[10, 200, 30]]], np.uint8)).convert("L"))[0, 0]
    assert abs(int(gray[0, 0, 0, 0]) - int(expected)) <= 1  # Pillow's L conversion
    assert torch.equal(convert_channels(gray, 3)[0, :, 0, 0], gray[0, 0, 0, 0].repeat(3))
    rgba = torch.zeros(1, 4, 2, 2, dtype=torch.uint8)
    assert convert_channels(rgba, 3).shape == (1, 3, 2, 2)
