"""TensorImages transforms, seeded splits, make_loader and sample_images."""

from __future__ import annotations

import pytest
import torch

from prunewise.data import (
    DataConfig,
    ImageView,
    TensorImages,
    load_data,
    make_loader,
    sample_images,
    split_indices,
)
from prunewise.errors import PrunewiseError


def _synthetic(**kwargs):
    return load_data(DataConfig(name="synthetic", **kwargs))


def _images(n: int = 12, channels: int = 1, size: int = 6) -> TensorImages:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, channels, size, size), generator=g, dtype=torch.uint8)
    view = ImageView(channels, size, 0, (0.5,) * channels, (0.25,) * channels)
    return TensorImages(images, torch.arange(n) % 3, view)


def test_split_indices_partition_and_seed() -> None:
    keep, held = split_indices(100, 20, seed=7)
    assert len(keep) == 80 and len(held) == 20
    assert sorted(torch.cat([keep, held]).tolist()) == list(range(100))
    again = split_indices(100, 20, seed=7)
    assert torch.equal(keep, again[0]) and torch.equal(held, again[1])
    assert not torch.equal(held, split_indices(100, 20, seed=8)[1])
    with pytest.raises(PrunewiseError, match="hold out"):
        split_indices(10, 11, seed=0)


def test_item_and_batch_paths_agree() -> None:
    ds = _images()
    x, y = ds[4]
    assert x.shape == (1, 6, 6) and y == 1
    expected = (ds.images[4].float() / 255 - 0.5) / 0.25
    assert torch.allclose(x, expected)
    batch = ds.__getitems__([4, 0, 11])
    assert [label for _, label in batch] == [1, 0, 2]
    assert torch.equal(batch[0][0], x)


def test_view_converts_rgb_to_gray_and_pads() -> None:
    rgb = torch.zeros(1, 3, 4, 4, dtype=torch.uint8)
    rgb[:, 0] = 255
    view = ImageView(1, 6, 1, (0.0,), (1.0,))
    x, _ = TensorImages(rgb, torch.zeros(1, dtype=torch.int64), view)[0]
    assert x.shape == (1, 6, 6)
    assert x[0, 1:5, 1:5].allclose(torch.full((4, 4), 0.299))
    assert x[0, 0].abs().max() == 0


def test_view_validation() -> None:
    with pytest.raises(PrunewiseError, match=r"ImageView\.channels"):
        ImageView(2, 8, 0, (0.5, 0.5), (1.0, 1.0))
    with pytest.raises(PrunewiseError, match=r"ImageView\.mean"):
        ImageView(3, 8, 0, (0.5,), (1.0,))
    with pytest.raises(PrunewiseError, match="uint8"):
        TensorImages(torch.zeros(2, 1, 4, 4), torch.zeros(2), ImageView(1, 4, 0, (0.0,), (1.0,)))


def test_augmentation_keeps_shape_and_content_scale() -> None:
    ds = _images(n=8, size=8)
    aug = ds.subset(torch.arange(8), augment=True)
    torch.manual_seed(3)
    xs = torch.stack([x for x, _ in aug.__getitems__(list(range(8)))])
    assert xs.shape == (8, 1, 8, 8)
    plain = torch.stack([ds[i][0] for i in range(8)])
    assert not torch.equal(xs, plain)
    background = (0 - 0.5) / 0.25
    assert xs.min() >= background - 1e-6 and xs.max() <= (1 - 0.5) / 0.25 + 1e-6


def test_make_loader_seeded_shuffle() -> None:
    data = _synthetic(augment=False)

    def order(seed: int) -> list[int]:
        loader = make_loader(data.train, 64, shuffle=True, seed=seed)
        return torch.cat([y for _, y in loader]).tolist()

    first = order(0)
    assert first == order(0)
    assert first != order(1)
    assert sorted(first) == sorted(data.train.labels.tolist())
    fixed = make_loader(data.val, 32, shuffle=False)
    labels = torch.cat([y for _, y in fixed])
    assert torch.equal(labels, data.val.labels)
    xb, yb = next(iter(fixed))
    assert xb.shape == (32, 3, 32, 32) and xb.dtype == torch.float32 and yb.dtype == torch.int64


def test_make_loader_drop_last_and_errors() -> None:
    data = _synthetic()
    loader = make_loader(data.train, 100, shuffle=True, drop_last=True)
    assert [len(y) for _, y in loader] == [100] * (len(data.train) // 100)
    with pytest.raises(PrunewiseError, match="batch_size"):
        make_loader(data.train, 0, shuffle=False)
    with pytest.raises(PrunewiseError, match="num_workers"):
        make_loader(data.train, 8, shuffle=False, num_workers=-1)
    empty = _synthetic(val_size=0).val
    assert len(empty) == 0
    with pytest.raises(PrunewiseError, match="empty"):
        make_loader(empty, 8, shuffle=True)


def test_sample_images_seeded_without_replacement() -> None:
    data = _synthetic()
    a = sample_images(data.val, 20, seed=5)
    assert a.shape == (20, 3, 32, 32)
    assert torch.equal(a, sample_images(data.val, 20, seed=5))
    assert not torch.equal(a, sample_images(data.val, 20, seed=6))
    every = sample_images(data.val, len(data.val), seed=0)
    assert len({tuple(x.flatten()[:64].tolist()) for x in every}) == len(data.val)
    plain = torch.utils.data.TensorDataset(torch.arange(10.0).view(10, 1), torch.zeros(10))
    drawn = sample_images(plain, 10, seed=1)
    assert sorted(drawn.flatten().tolist()) == list(range(10))
    with pytest.raises(PrunewiseError, match="at most"):
        sample_images(data.val, len(data.val) + 1, seed=0)
    with pytest.raises(PrunewiseError, match=">= 1"):
        sample_images(data.val, 0, seed=0)
