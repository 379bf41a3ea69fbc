"""Segmentation folders: ``DIR/train/images/NAME.jpg`` with ``DIR/train/masks/NAME.png``.

A mask is a one-channel PNG of class indices, the size of its image; 255 marks pixels to
ignore (as in Pascal VOC). Image and mask are resized together (the mask by nearest
neighbour) and flipped together when augmenting, by torchvision's v2 transforms.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from prunewise.data.folder import (
    IMAGENET_GRAY_STATS,
    IMAGENET_STATS,
    is_image_file,
    open_image,
    read_rgb,
)
from prunewise.data.tensors import holdout_size, split_folders, split_indices
from prunewise.errors import PrunewiseError, listing

if TYPE_CHECKING:
    from prunewise.data.datasets import DataConfig

__all__ = [
    "IGNORE_INDEX",
    "IGNORE_VALUE",
    "SegmentationImages",
    "check_sizes",
    "segmentation_splits",
]

IGNORE_VALUE = 255
"""A mask pixel of this value is not scored or trained on."""

IGNORE_INDEX = -100
"""What such pixels become in the mask tensors (`F.cross_entropy`'s default ignore_index)."""

LAYOUT = (
    "train/ and val/ (or test/), each with images/ and masks/ holding files of the same "
    "names (a mask: a one-channel PNG of class indices, 255 = ignore)"
)


def _pairs(split: Path) -> list[tuple[Path, Path]]:
    images, masks = split / "images", split / "masks"
    for d in (images, masks):
        if not d.is_dir():
            raise PrunewiseError(
                f"{split} has no {d.name}/ folder: a segmentation folder has {LAYOUT}"
            )
    by_stem = {
        p.stem: p for p in masks.iterdir() if p.suffix.lower() == ".png" and is_image_file(p)
    }
    pairs, missing = [], []
    found = sorted(p for p in images.iterdir() if is_image_file(p))
    stems: dict[str, Path] = {}
    for image in found:
        if image.stem in stems:
            raise PrunewiseError(
                f"{stems[image.stem].name} and {image.name} in {images} would share the mask "
                f"{image.stem}.png; give each image its own name"
            )
        stems[image.stem] = image
    for image in found:
        mask = by_stem.get(image.stem)
        if mask is None:
            missing.append(image.name)
        else:
            pairs.append((image, mask))
    if missing:
        raise PrunewiseError(
            f"{len(missing)} image(s) of {images} have no mask in {masks} (first: "
            f"{', '.join(missing[:3])}); give each image a PNG mask of the same name"
        )
    if not pairs:
        raise PrunewiseError(f"{images} holds no images: a segmentation folder has {LAYOUT}")
    return pairs


def _size(path: Path) -> tuple[int, int]:
    """(width, height) from the file's header (the pixels are not decoded)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise PrunewiseError(f"{path} cannot be read as an image ({exc}); replace it") from exc


def check_sizes(pairs: list[tuple[Path, Path]]) -> None:
    """Refuse, before any training, a mask whose size is not its image's (headers only)."""
    for image, mask in pairs:
        (iw, ih), (mw, mh) = _size(image), _size(mask)
        if (iw, ih) != (mw, mh):
            raise PrunewiseError(
                f"mask {mask} is {mw} x {mh}, its image {image} {iw} x {ih}; a mask has the "
                "size of its image"
            )


def _read_mask(path: Path) -> np.ndarray:
    try:
        with open_image(path) as im:
            if im.mode not in ("1", "L", "P", "I", "I;16"):
                raise PrunewiseError(
                    f"mask {path} is a {im.mode} image; a mask is one channel of class indices"
                )
            return np.asarray(im).astype(np.int64)  # a 1-bit mask: classes 0 and 1
    except (OSError, ValueError, SyntaxError) as exc:
        raise PrunewiseError(f"{path} cannot be read as a mask ({exc}); replace it") from exc


def _indices(mask: Path) -> np.ndarray:
    values = np.unique(_read_mask(mask))
    return values[values != IGNORE_VALUE]


def count_classes(
    pairs: Sequence[tuple[Path, Path]], others: Sequence[tuple[Path, Path]] = ()
) -> int:
    """1 + the largest class index of the training masks `pairs` (255, ignored, not counted).
    Raises PrunewiseError when they hold fewer than 2 classes, when they use fewer than half
    the indices up to their largest (stray values of resized or anti-aliased masks would build
    a head of that many classes), or when a mask of `others` (validation, test) holds an index
    the training masks do not reach (it would be scored as no class)."""
    used: set[int] = set()
    for _, mask in pairs:
        used.update(int(v) for v in _indices(mask))
    if len(used) < 2:
        binary = " (0 and 255 masks: 255 is the ignore value, so mark the object 1)"
        raise PrunewiseError(
            "the training masks hold fewer than 2 classes; a mask pixel is its class index, "
            f"{IGNORE_VALUE} ignored{binary if used <= {0} else ''}"
        )
    classes = max(used) + 1
    if 2 * len(used) < classes:
        values = sorted(used)
        raise PrunewiseError(
            f"the training masks use {len(used)} class indices ({listing(values, 8)}) up to "
            f"{values[-1]}, so the model would have {classes} classes; a mask pixel is its class "
            "index 0..K-1 (255 ignored): remap the masks (values a resize or anti-aliasing "
            "made are stray ones)"
        )
    for _, mask in others:
        beyond = _indices(mask)
        beyond = beyond[beyond >= classes]
        if beyond.size:
            raise PrunewiseError(
                f"mask {mask} holds class {int(beyond[0])}, but the training masks have classes "
                f"0..{classes - 1}; remap it, or mark those pixels 255 (ignored)"
            )
    return classes


class SegmentationImages(Dataset):
    """(normalized C x H x W image, H x W int64 mask) pairs; ignored pixels are -100."""

    def __init__(self, pairs: list[tuple[Path, Path]], indices: torch.Tensor, transform: Any):
        self.pairs = pairs
        self.indices = indices.to(torch.int64).clone()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def files(self) -> list[str]:
        """The image files of this view, in order."""
        return [str(self.pairs[int(i)][0]) for i in self.indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        from torchvision import tv_tensors

        image_path, mask_path = self.pairs[int(self.indices[index])]
        try:
            image = read_rgb(image_path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise PrunewiseError(f"{image_path} cannot be read as an image ({exc})") from exc
        mask = _read_mask(mask_path)
        if mask.shape != (image.height, image.width):
            raise PrunewiseError(
                f"mask {mask_path} is {mask.shape[1]} x {mask.shape[0]}, its image "
                f"{image.width} x {image.height}; a mask has the size of its image"
            )
        x, y = self.transform(image, tv_tensors.Mask(torch.from_numpy(mask)))
        y = y.as_subclass(torch.Tensor).to(torch.int64)
        return x, y.masked_fill(y == IGNORE_VALUE, IGNORE_INDEX)


def _transforms(size: tuple[int, int], channels: int, *, augment: bool) -> tuple[Any, Any]:
    from torchvision.transforms import v2 as T

    mean, std = IMAGENET_STATS if channels == 3 else IMAGENET_GRAY_STATS
    tail: list[Any] = [T.Grayscale(1)] if channels == 1 else []
    tail += [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean, std)]
    eval_tf = T.Compose([T.Resize(size), *tail])
    if not augment:
        return eval_tf, eval_tf
    return T.Compose([T.Resize(size), T.RandomHorizontalFlip(), *tail]), eval_tf


def segmentation_splits(
    cfg: DataConfig,
) -> tuple[SegmentationImages, SegmentationImages, SegmentationImages, int]:
    """(train, val, test, classes) of a segmentation folder: with val/ and test/ both, those
    are the validation and test splits; with one of them, it is the test split and validation
    is held out of train/; the classes counted from the training masks."""
    root = cfg.directory()
    if not (root / "train").is_dir():
        raise PrunewiseError(f"segmentation folder {root} has no train/: it needs {LAYOUT}")
    val_dir, test_dir = split_folders(
        root, f"segmentation folder {root} has neither val/ nor test/: {LAYOUT}"
    )
    own_val = _pairs(val_dir) if val_dir is not None else None
    train, test = _pairs(root / "train"), _pairs(test_dir)
    check_sizes(train + test + (own_val or []))
    classes = count_classes(train, test + (own_val or []))
    train_tf, eval_tf = _transforms(cfg.image_hw(224), cfg.channels or 3, augment=cfg.augment)
    if own_val:
        keep = torch.arange(len(train))
        val = SegmentationImages(own_val, torch.arange(len(own_val)), eval_tf)
    else:
        keep, held = split_indices(len(train), holdout_size(cfg.val_size, len(train)), cfg.seed)
        val = SegmentationImages(train, held, eval_tf)
    return (
        SegmentationImages(train, keep, train_tf),
        val,
        SegmentationImages(test, torch.arange(len(test)), eval_tf),
        classes,
    )
