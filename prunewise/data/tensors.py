"""In-memory image datasets, seeded splits, loaders and image sampling.

`TensorImages` keeps uint8 images and applies geometry (pad or resize), channel conversion,
augmentation (random crop with padding + horizontal flip) and normalization in torch, batched
through ``__getitems__`` so a `DataLoader` transforms whole batches at once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from prunewise.errors import PrunewiseError

__all__ = [
    "AUGMENT_PADDING",
    "GRAY_WEIGHTS",
    "ImageView",
    "TensorImages",
    "derive_seed",
    "holdout_size",
    "image_hw",
    "make_loader",
    "sample_images",
    "split_folders",
    "split_indices",
    "splits_text",
]

AUGMENT_PADDING = 4
"""Zero padding (pixels) of the random crop used to augment small images."""

GRAY_WEIGHTS = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luminance weights of R, G, B (color -> grayscale)."""


def derive_seed(seed: int, stream: int) -> int:
    """An independent 63-bit seed for sub-stream `stream` of `seed` (stable across versions)."""
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise PrunewiseError(f"seed must be an int >= 0, got {seed!r}")
    state = np.random.SeedSequence([seed, stream]).generate_state(2, dtype=np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1]))


@dataclass(frozen=True)
class ImageView:
    """How stored uint8 images become model inputs: geometry, channels, augmentation, scaling."""

    channels: int
    size: int | tuple[int, int]  # a side (square images) or (height, width), in pixels
    pad: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: bool = False

    def __post_init__(self) -> None:
        if self.channels not in (1, 3):
            raise PrunewiseError(f"ImageView.channels must be 1 or 3, got {self.channels!r}")
        if min(self.hw) < 1:
            raise PrunewiseError(
                f"ImageView.size must be a positive int or (height, width), got {self.size!r}"
            )
        if self.pad < 0:
            raise PrunewiseError(f"ImageView.pad must be >= 0, got {self.pad!r}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            raise PrunewiseError(
                f"ImageView.mean and .std need {self.channels} values each, "
                f"got {len(self.mean)} and {len(self.std)}"
            )
        if any(s <= 0 for s in self.std):
            raise PrunewiseError(f"ImageView.std must be positive, got {self.std}")

    @property
    def hw(self) -> tuple[int, int]:
        """(height, width) of the model inputs, in pixels."""
        return image_hw(self.size)


def image_hw(size: int | Sequence[int]) -> tuple[int, int]:
    """(height, width) of an image size given as one side (a square) or as (height, width).
    Raises PrunewiseError for anything else."""

    def whole(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    if whole(size):
        return size, size  # type: ignore[return-value]
    if isinstance(size, Sequence) and len(size) in (1, 2) and all(whole(v) for v in size):
        return int(size[0]), int(size[-1])
    raise PrunewiseError(f"an image size is a side or (height, width) in pixels, got {size!r}")


class TensorImages(Dataset):
    """Uint8 images (N, C, H, W) and int labels, seen through an `ImageView` and an index subset."""

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        view: ImageView,
        indices: torch.Tensor | None = None,
    ) -> None:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise PrunewiseError(
                f"TensorImages needs uint8 images (N, C, H, W), got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dim() != 1 or len(labels) != len(images):
            raise PrunewiseError(
                f"TensorImages needs one label per image: {len(images)} images, "
                f"labels of shape {tuple(labels.shape)}"
            )
        if images.shape[1] not in (1, 3):
            raise PrunewiseError(f"images must have 1 or 3 channels, got {images.shape[1]}")
        self.images = images
        self.all_labels = labels.to(torch.int64)
        self.view = view
        self.indices = (
            torch.arange(len(images)) if indices is None else indices.to(torch.int64).clone()
        )
        self._mean = torch.tensor(view.mean).view(1, -1, 1, 1)
        self._std = torch.tensor(view.std).view(1, -1, 1, 1)

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def labels(self) -> torch.Tensor:
        """The labels of this view's images, in order."""
        return self.all_labels[self.indices]

    def subset(self, indices: torch.Tensor, *, augment: bool | None = None) -> TensorImages:
        """A view of positions `indices` of this one (same storage), augmenting if `augment`."""
        view = self.view
        if augment is not None and augment != view.augment:
            view = ImageView(view.channels, view.size, view.pad, view.mean, view.std, augment)
        return TensorImages(self.images, self.all_labels, view, self.indices[indices])

    def transform(self, batch: torch.Tensor) -> torch.Tensor:
        """Uint8 (B, C, H, W) -> normalized float (B, channels, height, width) of the view."""
        x = batch.to(torch.float32).div_(255.0)
        v = self.view
        if v.pad:
            x = F.pad(x, (v.pad, v.pad, v.pad, v.pad))
        if x.shape[-2:] != v.hw:
            x = F.interpolate(
                x, size=v.hw, mode="bilinear", align_corners=False, antialias=True
            ).clamp_(0.0, 1.0)
        if v.augment:
            x = _random_crop_flip(x)
        if x.shape[1] != v.channels:
            if v.channels == 3:
                x = x.expand(-1, 3, -1, -1)
            else:
                w = torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)
                x = (x * w).sum(dim=1, keepdim=True)
        return (x - self._mean) / self._std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[index])
        x = self.transform(self.images[i : i + 1])[0]
        return x, int(self.all_labels[i])

    def __getitems__(self, positions: Sequence[int]) -> list[tuple[torch.Tensor, int]]:
        """A batch at once (used by `DataLoader`): one vectorized transform for all images."""
        idx = self.indices[torch.as_tensor(list(positions), dtype=torch.int64)]
        x = self.transform(self.images[idx])
        return list(zip(x.unbind(0), self.all_labels[idx].tolist(), strict=True))


def _random_crop_flip(x: torch.Tensor) -> torch.Tensor:
    """Per image: crop back to size after zero padding, then flip horizontally with p = 0.5."""
    b, _, h, w = x.shape
    p = AUGMENT_PADDING
    padded = F.pad(x, (p, p, p, p))
    dy = torch.randint(0, 2 * p + 1, (b,)).tolist()
    dx = torch.randint(0, 2 * p + 1, (b,)).tolist()
    out = torch.stack(
        [padded[i, :, y : y + h, c : c + w] for i, (y, c) in enumerate(zip(dy, dx, strict=True))]
    )
    flip = torch.rand(b) < 0.5
    return torch.where(flip.view(b, 1, 1, 1), out.flip(-1), out)


def split_folders(root: Path, missing: str) -> tuple[Path | None, Path]:
    """(validation folder, test folder) of a dataset folder beside its train/: with val/ and
    test/ both, those two; with one of them, (None, it): it is the test split and validation
    is held out of train/ (`holdout_size`). Raises PrunewiseError "`missing`" when neither
    exists."""
    val, test = root / "val", root / "test"
    if val.is_dir() and test.is_dir():
        return val, test
    found = next((d for d in (val, test) if d.is_dir()), None)
    if found is None:
        raise PrunewiseError(missing)
    return None, found


def splits_text(root: Path) -> str:
    """Where a dataset folder's validation and test splits come from, in words."""
    val, test = root / "val", root / "test"
    if val.is_dir() and test.is_dir():
        return "validation: val/, test: test/"
    found = "val/" if val.is_dir() else "test/"
    return f"validation: held out of train/, test: {found}"


def holdout_size(val_size: int, n: int) -> int:
    """Images to hold out of `n` for validation: `val_size`, at most a fifth of `n`."""
    return max(0, min(val_size, n // 5))


def split_indices(n: int, holdout: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded split of range(n) into sorted (kept, held-out) index tensors; `holdout` held out."""
    if not 0 <= holdout <= n:
        raise PrunewiseError(f"cannot hold out {holdout} of {n} items; pick 0 to {n}")
    g = torch.Generator().manual_seed(derive_seed(seed, 1))
    perm = torch.randperm(n, generator=g)
    return perm[holdout:].sort().values, perm[:holdout].sort().values


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    num_workers: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A `DataLoader` whose shuffling and worker seeds come from a generator seeded with `seed`."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise PrunewiseError(f"batch_size must be an int >= 1, got {batch_size!r}")
    if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
        raise PrunewiseError(f"num_workers must be an int >= 0, got {num_workers!r}")
    if shuffle and len(dataset) == 0:  # type: ignore[arg-type]
        raise PrunewiseError("cannot shuffle an empty dataset; check val_size and the data")
    generator = torch.Generator().manual_seed(derive_seed(seed, 2))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle,
        num_workers=num_workers,
        drop_last=drop_last,
        generator=generator,
        persistent_workers=num_workers > 0,
    )


def sample_images(dataset: Dataset, n: int, seed: int) -> torch.Tensor:
    """`n` images of `dataset` drawn without replacement with `seed`, stacked (n, C, H, W).

    Pass an evaluation dataset (val or test) to get images without augmentation.
    """
    size = len(dataset)  # type: ignore[arg-type]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise PrunewiseError(f"the number of images must be an int >= 1, got {n!r}")
    if n > size:
        raise PrunewiseError(
            f"cannot sample {n} images from a dataset of {size}; ask for at most {size}"
        )
    g = torch.Generator().manual_seed(derive_seed(seed, 3))
    positions = torch.randperm(size, generator=g)[:n].tolist()
    getitems = getattr(dataset, "__getitems__", None)
    items = getitems(positions) if getitems else [dataset[i] for i in positions]
    return torch.stack([x for x, _ in items])
