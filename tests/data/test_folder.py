"""load_data on an ImageFolder tree of small PNGs, and its error messages."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from PIL import Image

from prunewise.data import DataConfig, load_data, make_loader
from prunewise.data.folder import is_image_file
from prunewise.errors import PrunewiseError

CLASSES = ("cat", "dog", "eel")
COLORS = {"cat": (255, 0, 0), "dog": (0, 255, 0), "eel": (0, 0, 255)}


def _tree(root: Path, per_class: int = 10, test_name: str = "val", test_per_class: int = 2) -> Path:
    for split, n in (("train", per_class), (test_name, test_per_class)):
        for name in CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (12 + i % 3, 12), COLORS[name]).save(folder / f"{i}.png")
    return root


def test_imagefolder_splits_shapes_and_labels(tmp_path: Path) -> None:
    root = str(_tree(tmp_path))
    cfg = DataConfig(name="imagefolder", data_dir=root, val_size=6, image_size=8)
    data = load_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (24, 6, 6)
    assert data.class_names == CLASSES and data.num_classes == 3
    assert data.input_shape == (3, 8, 8)
    for i in range(len(data.test)):
        x, y = data.test[i]
        assert x.shape == (3, 8, 8)
        assert int(x.mean(dim=(1, 2)).argmax()) == y
    again = load_data(cfg)
    assert torch.equal(data.val.labels, again.val.labels)
    assert torch.equal(data.val.indices, again.val.indices)
    assert not set(data.val.indices.tolist()) & set(data.train.indices.tolist())
    x, y = next(iter(make_loader(data.train, 5, shuffle=True)))
    assert x.shape == (5, 3, 8, 8) and y.shape == (5,)


def test_imagefolder_eval_is_deterministic_and_gray(tmp_path: Path) -> None:
    root = str(_tree(tmp_path, test_name="test"))
    data = load_data(DataConfig(name="imagefolder", data_dir=root, image_size=8, channels=1))
    assert data.input_shape == (1, 8, 8) and len(data.test) == 6
    torch.manual_seed(0)
    first = data.val[0][0]
    torch.manual_seed(1)
    assert torch.equal(first, data.val[0][0])
    assert data.train[0][0].shape == (1, 8, 8)


def test_imagefolder_needs_data_dir() -> None:
    with pytest.raises(PrunewiseError, match="--data-dir"):
        load_data(DataConfig(name="imagefolder"))


def test_imagefolder_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(PrunewiseError, match="does not exist") as info:
        load_data(DataConfig(name="imagefolder", data_dir=str(missing)))
    assert str(missing) in str(info.value)


def test_imagefolder_layout_errors(tmp_path: Path) -> None:
    (tmp_path / "val").mkdir()
    with pytest.raises(PrunewiseError, match="no train/") as info:
        load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))
    assert str(tmp_path) in str(info.value)
    (tmp_path / "val").rmdir()
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(PrunewiseError, match="neither val/ nor test/"):
        load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))
    (tmp_path / "val").mkdir()
    with pytest.raises(PrunewiseError, match="no usable class folders"):
        load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))


def test_imagefolder_class_mismatch_and_bad_image(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    extra = root / "val" / "fox"
    extra.mkdir()
    Image.new("RGB", (12, 12)).save(extra / "0.png")
    with pytest.raises(PrunewiseError, match="class folders differ"):
        load_data(DataConfig(name="imagefolder", data_dir=str(root)))
    for path in extra.iterdir():
        path.unlink()
    extra.rmdir()
    bad = root / "val" / "cat" / "0.png"
    bad.write_bytes(b"not a png")
    data = load_data(DataConfig(name="imagefolder", data_dir=str(root), image_size=8))
    with pytest.raises(PrunewiseError, match="cannot be read as an image") as info:
        data.test[0]
    assert str(bad) in str(info.value)


def test_imagefolder_with_one_class_is_refused(tmp_path: Path) -> None:
    for split in ("train", "val"):
        (tmp_path / split / "cat").mkdir(parents=True)
        Image.new("RGB", (12, 12)).save(tmp_path / split / "cat" / "0.png")
    with pytest.raises(PrunewiseError, match=r"1 class folder.*at least 2"):  # scored 100 %
        load_data(DataConfig(name="imagefolder", data_dir=str(tmp_path)))


def test_imagefolder_at_a_non_square_size(tmp_path: Path) -> None:
    root = str(_tree(tmp_path))
    data = load_data(DataConfig(name="imagefolder", data_dir=root, image_size=(8, 14)))
    assert data.input_shape == (3, 8, 14)
    assert data.train[0][0].shape == data.test[0][0].shape == (3, 8, 14)


def test_hidden_folders_are_no_classes(tmp_path: Path) -> None:
    root = _tree(tmp_path)
    for split in ("train", "val"):  # what Jupyter and git leave beside the classes
        hidden = root / split / ".ipynb_checkpoints"
        hidden.mkdir()
        Image.new("RGB", (12, 12)).save(hidden / "0.png")
    data = load_data(DataConfig(name="imagefolder", data_dir=str(root), image_size=8))
    assert data.class_names == CLASSES


def test_a_named_pipe_among_the_images_is_no_image(tmp_path: Path) -> None:
    """Reading a FIFO waits for a writer forever: it is left out as a hidden file is."""
    root = _tree(tmp_path)
    os.mkfifo(root / "val" / CLASSES[0] / "zz.png")
    data = load_data(DataConfig(name="imagefolder", data_dir=str(root), image_size=8))
    assert [image.shape for image, _ in data.test] == [(3, 8, 8)] * len(data.test)
    assert not is_image_file(root / "val" / CLASSES[0] / "zz.png")


def test_val_and_test_folders_are_the_validation_and_test_splits(tmp_path: Path) -> None:
    root = _tree(tmp_path, per_class=10, test_name="val", test_per_class=2)
    for name in CLASSES:
        (root / "test" / name).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (12, 12), COLORS[name]).save(root / "test" / name / f"{i}.png")
    data = load_data(DataConfig(name="imagefolder", data_dir=str(root), image_size=8))
    assert (len(data.train), len(data.val), len(data.test)) == (30, 6, 9)  # test/ was ignored
    (root / "test" / "fox").mkdir()
    Image.new("RGB", (12, 12)).save(root / "test" / "fox" / "0.png")
    with pytest.raises(PrunewiseError, match=r"class folders differ.*test has"):
        load_data(DataConfig(name="imagefolder", data_dir=str(root)))


def test_16_bit_and_float_images_keep_their_contrast(tmp_path: Path) -> None:
    import numpy as np

    from prunewise.data.folder import read_rgb

    ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "wide.png")  # Pillow's RGB of it saturates
    Image.fromarray((ramp / 65535).astype(np.float32)).save(tmp_path / "float.tiff")
    for name in ("wide.png", "float.tiff"):
        rgb = np.asarray(read_rgb(tmp_path / name))
        assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
        assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and abs(int(rgb[32, 0, 0]) - 128) <= 2


def test_the_fingerprint_of_an_image_folder_follows_its_files(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data")
    config = DataConfig(name="imagefolder", data_dir=root, val_size=4)
    before = load_data(config).fingerprint()
    assert before["images"]["val"] == 4 and before["files_sha256"]
    assert load_data(config).fingerprint() == before  # the same files: the same record
    first = sorted((root / "train").rglob("*.png"))[0]
    first.rename(first.with_name("renamed.png"))
    after = load_data(config).fingerprint()
    assert after["images"] == before["images"] and after["files_sha256"] != before["files_sha256"]


def test_wide_images_are_scaled_by_one_rule_not_by_their_own_range(tmp_path: Path) -> None:
    import numpy as np

    from prunewise.data.folder import read_rgb

    for top, name in ((250, "dark.png"), (256, "darker_guess.png")):
        Image.fromarray(np.full((4, 4), top, dtype=np.uint16)).save(tmp_path / name)
    dark, other = (
        np.asarray(read_rgb(tmp_path / n))[0, 0, 0] for n in ("dark.png", "darker_guess.png")
    )
    assert dark == 1 and other == 1  # 250 / 257 and 256 / 257: both dark, neither white


def test_every_format_pillow_decodes_is_read_and_32_bit_values_are_refused(tmp_path: Path) -> None:
    import numpy as np

    from prunewise.data.folder import read_rgb

    root = _tree(tmp_path / "data", per_class=6)
    for name in CLASSES:  # a GIF and an upper-case TGA per class; notes are not images
        folder = root / "train" / name
        frames = [Image.new("RGB", (12, 12), COLORS[name]), Image.new("RGB", (12, 12))]
        frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
        Image.new("RGB", (12, 12), COLORS[name]).save(folder / "x.TGA")
        (folder / "README.txt").write_text("not an image")
    data = load_data(DataConfig(name="imagefolder", data_dir=root, val_size=3, image_size=8))
    assert len(data.train) + len(data.val) == 3 * 8
    gif = np.asarray(read_rgb(root / "train" / "cat" / "anim.gif"))
    assert tuple(gif[0, 0]) == COLORS["cat"]  # the first frame
    wide = np.arange(16, dtype=np.int32).reshape(4, 4) * 20_000
    Image.fromarray(wide, "I").save(tmp_path / "wide.tiff")
    with pytest.raises(ValueError, match="32-bit integer image with values up to 300000"):
        read_rgb(tmp_path / "wide.tiff")


def test_the_data_line_says_where_validation_and_test_come_from(tmp_path: Path) -> None:
    root = _tree(tmp_path / "data", per_class=10)
    data = load_data(DataConfig(name="imagefolder", data_dir=root, val_size=6, image_size=8))
    assert data.describe() == (
        "imagefolder, 3 classes, 3x8x8 images: train 24, val 6, test 6 "
        "(validation: held out of train/, test: val/)"
    )
    with pytest.raises(PrunewiseError, match=r"data_dir \(--data-dir\) must be unset for synth"):
        DataConfig(name="synthetic", data_dir=root)


def test_an_image_beyond_the_decompression_bomb_limit_is_refused(tmp_path: Path) -> None:
    from prunewise.data.folder import read_rgb

    Image.new("L", (300, 300)).save(tmp_path / "big.png")
    limit = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = 300 * 299
    try:
        with pytest.raises(ValueError, match="300 x 300 pixels, more than the 89,700"):
            read_rgb(tmp_path / "big.png")
    finally:
        Image.MAX_IMAGE_PIXELS = limit
