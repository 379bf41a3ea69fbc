"""DataConfig validation, load_data on Fashion-MNIST (fake and real), CIFAR errors, synthetic."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from prunewise.data import (
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_FILES,
    DataBundle,
    DataConfig,
    load_data,
    write_idx,
)
from prunewise.errors import PrunewiseError

REAL_FMNIST = Path("/usr/share/datasets/fashion-mnist")
MEAN, STD = 0.2860, 0.3530


def _fake_fmnist(directory: Path, n_train: int = 60, n_test: int = 20, gz: bool = True) -> Path:
    """Four IDX files shaped like Fashion-MNIST; image i is filled with value i (and has a
    bright pixel in its corner)."""
    suffix = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 2:26, 2:26] = (np.arange(n) % 250 + 1)[:, None, None]
        images[:, 0, 0] = 255
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(directory / f"{prefix}-images-idx3-ubyte{suffix}", images)
        write_idx(directory / f"{prefix}-labels-idx1-ubyte{suffix}", labels)
    return directory


def _ids(ds) -> list[int]:
    """Which stored image each item is (the fake images' fill value), read through the model
    input: centre pixel, de-normalized."""
    values = [ds[i][0][0, 16, 16].item() * STD + MEAN for i in range(len(ds))]
    return [round(v * 255) - 1 for v in values]


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "mnist"}, "name"),
        ({"val_size": -1}, "val_size"),
        ({"seed": -3}, "seed"),
        ({"channels": 2}, "channels"),
        ({"channels": True}, "channels"),
        ({"image_size": 0}, "image_size"),
        ({"augment": "yes"}, "augment"),
        ({"synthetic_classes": 1}, "synthetic_classes"),
        ({"synthetic_train": 1}, "synthetic_train"),
        ({"data_dir": ""}, "data_dir"),
    ],
)
def test_config_validation_names_field(kwargs: dict, field: str) -> None:
    with pytest.raises(PrunewiseError, match=rf"data\.{field}( \(--[a-z-]+\))? must be"):
        DataConfig(**kwargs)


def test_config_defaults_and_pathlike(tmp_path: Path) -> None:
    cfg = DataConfig()
    assert (cfg.name, cfg.val_size, cfg.seed, cfg.augment) == ("fashion-mnist", 5000, 0, True)
    assert cfg.directory() == REAL_FMNIST
    assert DataConfig(name="cifar10").directory() == Path("data/cifar")
    assert DataConfig(data_dir=tmp_path).data_dir == str(tmp_path)


def test_bundle_validation() -> None:
    ds = torch.utils.data.TensorDataset(torch.zeros(2, 1, 4, 4), torch.zeros(2))
    with pytest.raises(PrunewiseError, match="class_names"):
        DataBundle(ds, ds, ds, 3, (1, 4, 4), "synthetic", ("a", "b"))
    with pytest.raises(PrunewiseError, match="input_shape"):
        DataBundle(ds, ds, ds, 2, (1, 4), "synthetic", ("a", "b"))


def test_fake_fmnist_sizes_shapes_and_padding(tmp_path: Path) -> None:
    data = load_data(DataConfig(data_dir=str(_fake_fmnist(tmp_path)), val_size=10))
    assert (len(data.train), len(data.val), len(data.test)) == (50, 10, 20)
    assert data.input_shape == (1, 32, 32)
    assert data.num_classes == 10 and data.class_names == FASHION_MNIST_CLASSES
    x, y = data.test[3]
    assert x.shape == (1, 32, 32) and x.dtype == torch.float32 and y == 3
    background = (0 - MEAN) / STD
    assert torch.allclose(x[0, :2, :], torch.full((2, 32), background))
    assert x[0, 2, 2].item() == pytest.approx((1 - MEAN) / STD, abs=1e-5)
    assert x[0, 16, 16].item() == pytest.approx((4 / 255 - MEAN) / STD, abs=1e-5)
    assert _ids(data.test) == list(range(20))


def test_plain_files_and_native_size(tmp_path: Path) -> None:
    directory = _fake_fmnist(tmp_path, gz=False)
    data = load_data(DataConfig(data_dir=str(directory), val_size=5, image_size=28))
    assert data.input_shape == (1, 28, 28) and data.train[0][0].shape == (1, 28, 28)
    resized = load_data(DataConfig(data_dir=str(directory), val_size=5, image_size=64))
    assert resized.test[0][0].shape == (1, 64, 64)


def test_non_square_sizes(tmp_path: Path) -> None:
    directory = _fake_fmnist(tmp_path, gz=False)
    data = load_data(DataConfig(data_dir=str(directory), val_size=5, image_size=(24, 40)))
    assert data.input_shape == (1, 24, 40)
    assert data.train[0][0].shape == data.test[0][0].shape == (1, 24, 40)
    synthetic = load_data(DataConfig(name="synthetic", image_size=[12, 20], synthetic_train=20))
    assert synthetic.input_shape == (3, 12, 20) and synthetic.val[0][0].shape == (3, 12, 20)
    square = DataConfig(image_size=(28, 28)).image_size
    assert DataConfig(image_size=[28]).image_size == square == 28  # as config files have it
    with pytest.raises(PrunewiseError, match="image_size"):
        DataConfig(image_size=(8, 8, 8))


def test_split_is_seeded_disjoint_and_test_untouched(tmp_path: Path) -> None:
    directory = str(_fake_fmnist(tmp_path))
    a = load_data(DataConfig(data_dir=directory, val_size=12, seed=1, augment=False))
    b = load_data(DataConfig(data_dir=directory, val_size=12, seed=1, augment=False))
    c = load_data(DataConfig(data_dir=directory, val_size=12, seed=2, augment=False))
    train_a, val_a = _ids(a.train), _ids(a.val)
    assert len(val_a) == 12 and not set(train_a) & set(val_a)
    assert sorted(train_a + val_a) == list(range(60))
    assert (_ids(b.train), _ids(b.val)) == (train_a, val_a)
    assert set(_ids(c.val)) != set(val_a)
    assert _ids(a.test) == _ids(c.test) == list(range(20))
    assert torch.equal(a.val.labels, torch.tensor(val_a) % 10)


def test_val_size_is_capped_at_a_fifth(tmp_path: Path) -> None:
    data = load_data(DataConfig(data_dir=str(_fake_fmnist(tmp_path))))
    assert (len(data.train), len(data.val)) == (48, 12)


def test_eval_splits_never_augment(tmp_path: Path) -> None:
    data = load_data(DataConfig(data_dir=str(_fake_fmnist(tmp_path)), val_size=10, augment=True))
    for split in (data.val, data.test):
        torch.manual_seed(0)
        first = torch.stack([split[i][0] for i in range(len(split))])
        torch.manual_seed(1)
        again = torch.stack([split[i][0] for i in range(len(split))])
        assert torch.equal(first, again)
    torch.manual_seed(0)
    one = torch.stack([data.train[i][0] for i in range(len(data.train))])
    torch.manual_seed(1)
    two = torch.stack([data.train[i][0] for i in range(len(data.train))])
    assert not torch.equal(one, two)
    assert one.shape == (50, 1, 32, 32)


def test_channels_3_replicates_grayscale(tmp_path: Path) -> None:
    directory = str(_fake_fmnist(tmp_path))
    gray = load_data(DataConfig(data_dir=directory, val_size=10))
    rgb = load_data(DataConfig(data_dir=directory, val_size=10, channels=3))
    assert rgb.input_shape == (3, 32, 32)
    for i in (0, 7):
        x3, y3 = rgb.test[i]
        x1, y1 = gray.test[i]
        assert x3.shape == (3, 32, 32) and y3 == y1
        for c in range(3):
            assert torch.equal(x3[c], x1[0])


def test_fmnist_missing_directory() -> None:
    missing = "/nonexistent/prunewise-fmnist"
    with pytest.raises(PrunewiseError) as info:
        load_data(DataConfig(data_dir=missing))
    message = str(info.value)
    assert missing in message and "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message


def test_fmnist_missing_one_file(tmp_path: Path) -> None:
    directory = _fake_fmnist(tmp_path)
    for base in FASHION_MNIST_FILES:
        (directory / f"{base}.gz").rename(directory / "hidden")
        with pytest.raises(PrunewiseError, match=f"{base}.*missing") as info:
            load_data(DataConfig(data_dir=str(directory)))
        assert str(directory) in str(info.value) and "dataset-fashion-mnist" in str(info.value)
        (directory / "hidden").rename(directory / f"{base}.gz")


def test_fmnist_corrupt_or_mismatched(tmp_path: Path) -> None:
    directory = _fake_fmnist(tmp_path)
    write_idx(directory / "train-labels-idx1-ubyte.gz", np.zeros(7, dtype=np.uint8))
    with pytest.raises(PrunewiseError, match="7 labels for 60 images"):
        load_data(DataConfig(data_dir=str(directory)))
    path = directory / "train-images-idx3-ubyte.gz"
    path.write_bytes(b"garbage")
    with pytest.raises(PrunewiseError, match="corrupt") as info:
        load_data(DataConfig(data_dir=str(directory)))
    assert str(path) in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_missing(tmp_path: Path, name: str) -> None:
    with pytest.raises(PrunewiseError, match="python-version archive") as info:
        load_data(DataConfig(name=name, data_dir=str(tmp_path / "cifar")))
    assert str(tmp_path / "cifar") in str(info.value)


def test_cifar_corrupt_folder(tmp_path: Path) -> None:
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"nope")
    with pytest.raises(PrunewiseError, match="incomplete or corrupt") as info:
        load_data(DataConfig(name="cifar10", data_dir=str(tmp_path)))
    assert "download=True" not in str(info.value)  # torchvision's advice: no such option here


def test_synthetic_shapes_labels_and_determinism() -> None:
    cfg = DataConfig(name="synthetic", val_size=64, synthetic_train=320, synthetic_test=100)
    data = load_data(cfg)
    assert (len(data.train), len(data.val), len(data.test)) == (256, 64, 100)
    assert data.input_shape == (3, 32, 32) and data.num_classes == 10
    assert len(data.class_names) == 10
    labels = torch.cat([data.train.labels, data.val.labels])
    assert torch.bincount(labels, minlength=10).tolist() == [32] * 10
    assert data.test.labels.min() >= 0 and data.test.labels.max() <= 9
    again = load_data(cfg)
    assert torch.equal(data.test[5][0], again.test[5][0])
    other = load_data(DataConfig(name="synthetic", seed=1, val_size=64, synthetic_train=320))
    assert not torch.equal(data.test[5][0], other.test[5][0])
    small = load_data(DataConfig(name="synthetic", channels=1, image_size=16, synthetic_classes=4))
    assert small.input_shape == (1, 16, 16) and small.train[0][0].shape == (1, 16, 16)
    assert small.num_classes == 4 and len(small.val) == 512 // 5


def test_synthetic_is_learnable() -> None:
    data = load_data(DataConfig(name="synthetic", augment=False))
    train = torch.stack([data.train[i][0] for i in range(len(data.train))]).flatten(1)
    means = torch.stack([train[data.train.labels == c].mean(0) for c in range(10)])
    spread = (train - means[data.train.labels]).norm(dim=1).mean()
    gaps = torch.cdist(means, means) + torch.eye(10) * 1e9
    assert gaps.min() > spread
    test = torch.stack([data.test[i][0] for i in range(len(data.test))]).flatten(1)
    predicted = torch.cdist(test, means).argmin(dim=1)
    accuracy = (predicted == data.test.labels).float().mean().item()
    assert accuracy > 0.9
    assert abs(train.mean().item()) < 0.1 and abs(train.std().item() - 1) < 0.1


def test_real_fashion_mnist() -> None:
    if not REAL_FMNIST.is_dir():
        pytest.skip(f"{REAL_FMNIST} is missing (apt-get install dataset-fashion-mnist)")
    data = load_data(DataConfig())
    assert (len(data.train), len(data.val), len(data.test)) == (55000, 5000, 10000)
    assert data.input_shape == (1, 32, 32) and data.num_classes == 10
    x, y = data.val[0]
    assert x.shape == (1, 32, 32) and 0 <= y <= 9
    for split in (data.train, data.val, data.test):
        assert split.labels.min().item() == 0 and split.labels.max().item() == 9
    assert torch.bincount(data.test.labels).tolist() == [1000] * 10
    batch = torch.stack([data.test[i][0] for i in range(256)])
    assert abs(batch[:, :, 2:30, 2:30].mean().item()) < 0.25
