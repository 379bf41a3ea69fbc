"""Image folders (``DIR/train/<class>/*.png`` and ``DIR/val/<class>/...``) via torchvision."""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import Dataset

from prunewise.data.tensors import holdout_size, image_hw, split_folders, split_indices
from prunewise.errors import PrunewiseError

if TYPE_CHECKING:
    from prunewise.data.datasets import DataConfig

__all__ = [
    "IMAGENET_GRAY_STATS",
    "IMAGENET_STATS",
    "IMAGE_SUFFIXES",
    "FolderImages",
    "folder_transforms",
    "imagefolder_splits",
    "is_image_file",
    "open_image",
    "read_rgb",
]

IMAGENET_STATS = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
IMAGENET_GRAY_STATS = ((0.449,), (0.226,))

_LAYOUT = "train/ and val/ (or test/) with one subfolder of images per class"


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jpe", ".jfif", ".bmp", ".dib", ".gif", ".tif")
IMAGE_SUFFIXES += (".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm", ".tga")
"""File suffixes read as images (any case), all formats Pillow decodes itself; other files
(README.txt, .DS_Store) in a class folder are not images."""

_WIDE = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
"""Pillow modes of more than 8 bits per pixel (16-bit PNG and TIFF, 32-bit integer or float)."""


def open_image(path: str | Path) -> Any:
    """The PIL image at `path`, opened lazily (pixels not decoded). Raises ValueError for more
    pixels than Pillow's decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`; Pillow itself
    only warns below twice that), and what Pillow raises for a file it cannot read."""
    from PIL import Image

    with warnings.catch_warnings():  # the refusal below says it in one line
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        im = Image.open(path)
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and im.width * im.height > limit:
        im.close()
        raise ValueError(
            f"{im.width} x {im.height} pixels, more than the {limit:,} Pillow decodes "
            "without a decompression-bomb warning"
        )
    return im


def read_rgb(path: str | Path) -> Any:
    """The image at `path` as an 8-bit RGB PIL image (an animated GIF: its first frame). A
    16- or 32-bit integer image is scaled from the 16-bit range (value / 257), a float one
    from [0, 1] (x 255), both clipped to [0, 255]: the same rule for every image of a folder,
    whatever its own range (Pillow's own conversion saturates them to a constant image).
    Raises what Pillow raises for a file it cannot read, and ValueError for an integer image
    with values beyond 16 bits (it would saturate) or more pixels than Pillow's
    decompression-bomb limit (`PIL.Image.MAX_IMAGE_PIXELS`)."""
    import numpy as np
    from PIL import Image

    with open_image(path) as im:
        if im.mode not in _WIDE:
            return im.convert("RGB")
        values = np.asarray(im, dtype=np.float32)
        scale = 255.0 if im.mode == "F" else 1 / 257
        if im.mode != "F" and values.max(initial=0) > 65535:
            raise ValueError(
                f"a 32-bit integer image with values up to {values.max():.0f}, beyond the 16-bit "
                "range integer images are read in; convert it to 8 or 16 bits"
            )
    gray = np.clip(np.rint(values * scale), 0, 255).astype(np.uint8)
    return Image.fromarray(gray, "L").convert("RGB")


class FolderImages(Dataset):
    """Images `indices` of a torchvision `ImageFolder`, each read and passed through `transform`."""

    def __init__(self, base: Any, indices: torch.Tensor, transform: Callable[[Any], Any]) -> None:
        self.base = base
        self.indices = indices.to(torch.int64).clone()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.indices)

    def files(self) -> list[str]:
        """The image files of this view, in order."""
        return [str(self.base.samples[int(i)][0]) for i in self.indices]

    @property
    def labels(self) -> torch.Tensor:
        """The labels of this view's images, in order."""
        targets = torch.tensor(self.base.targets, dtype=torch.int64)
        return targets[self.indices]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.base.samples[int(self.indices[index])]
        try:
            image = read_rgb(path)
        except (OSError, ValueError, SyntaxError) as exc:
            raise PrunewiseError(
                f"{path} cannot be read as an image ({exc}); replace it by a readable image "
                "of the same name (a run then resumes: removing it changes the data)"
            ) from exc
        return self.transform(image), int(label)


def folder_transforms(
    size: int | tuple[int, int], channels: int, *, augment: bool
) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
    """(train, eval) PIL -> normalized tensor transforms of an image folder, to `size` (a
    side, or (height, width)).

    Eval resizes the short side to side * 256 / 224 and center-crops (non-square: resizes to
    (height, width) * 256 / 224, whatever the image's aspect, and center-crops); train does a
    random resized crop and a horizontal flip when `augment`, else the eval transform.
    """
    from torchvision import transforms as T

    h, w = image_hw(size)
    mean, std = IMAGENET_STATS if channels == 3 else IMAGENET_GRAY_STATS
    tail: list[Any] = [T.Grayscale(1)] if channels == 1 else []
    tail += [T.ToTensor(), T.Normalize(mean, std)]
    resized = round(h * 256 / 224) if h == w else (round(h * 256 / 224), round(w * 256 / 224))
    eval_tf = T.Compose([T.Resize(resized), T.CenterCrop((h, w)), *tail])
    if not augment:
        return eval_tf, eval_tf
    train_tf = T.Compose([T.RandomResizedCrop((h, w)), T.RandomHorizontalFlip(), *tail])
    return train_tf, eval_tf


def is_image_file(path: str | Path) -> bool:
    """Whether a file in an image folder is an image: an IMAGE_SUFFIXES suffix (any case), not
    hidden (macOS's ._NAME.png companions hold no image), and not a pipe, socket or device
    (reading a named pipe would wait forever; a link is judged by what it points to)."""
    name = Path(path).name
    if name.startswith(".") or not name.lower().endswith(IMAGE_SUFFIXES):
        return False
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a broken link: reading it says so
        return True
    return stat.S_ISREG(mode)


def _scan(directory: Path) -> Any:
    """A torchvision ImageFolder over `directory`, with errors phrased for the user; hidden
    folders (.ipynb_checkpoints, .git) are no classes."""
    from torchvision.datasets import ImageFolder

    class VisibleFolders(ImageFolder):
        def find_classes(self, path: str) -> tuple[list[str], dict[str, int]]:
            classes = sorted(e.name for e in os.scandir(path) if e.is_dir() and e.name[0] != ".")
            if not classes:
                raise FileNotFoundError(f"no class folders in {path}")
            return classes, {c: i for i, c in enumerate(classes)}

    try:
        return VisibleFolders(str(directory), is_valid_file=is_image_file)
    except FileNotFoundError as exc:
        raise PrunewiseError(
            f"{directory} has no usable class folders or images ({exc}); "
            f"it needs one subfolder per class holding images"
        ) from exc
    except OSError as exc:
        raise PrunewiseError(f"{directory} cannot be read ({exc})") from exc


def _every(images: Any) -> torch.Tensor:
    return torch.arange(len(images))


def imagefolder_splits(
    cfg: DataConfig,
) -> tuple[FolderImages, FolderImages, FolderImages, tuple[str, ...]]:
    """(train, val, test, class names) of a folder: with val/ and test/ both, those are the
    validation and test splits; with one of them, it is the test split and validation is held
    out of train/ (`val_size`, at most a fifth)."""
    root = cfg.directory()
    if not root.is_dir():
        raise PrunewiseError(
            f"imagefolder directory {root} does not exist: pass --data-dir DIR holding {_LAYOUT}"
        )
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise PrunewiseError(
            f"imagefolder directory {root} has no train/ subfolder: it needs {_LAYOUT}"
        )
    val_dir, test_dir = split_folders(
        root, f"imagefolder directory {root} has neither val/ nor test/: it needs {_LAYOUT}"
    )
    base, test_base = _scan(train_dir), _scan(test_dir)
    own_val = _scan(val_dir) if val_dir is not None else None
    if set(base.classes) == {"images", "masks"}:
        raise PrunewiseError(
            f"{root} is a segmentation folder (train/images/, train/masks/), read here as two "
            "classes 'images' and 'masks': a classifier needs one folder of images per class; "
            "a segmentation model takes it with --task segmentation"
        )
    if len(base.classes) < 2:
        raise PrunewiseError(
            f"{train_dir} has {len(base.classes)} class folder ({list(base.classes)}): a "
            "classifier needs at least 2, one subfolder of images per class"
        )
    for other, found in ((test_dir, test_base), (val_dir, own_val)):
        if found is not None and list(found.classes) != list(base.classes):
            raise PrunewiseError(
                f"class folders differ: {train_dir} has {list(base.classes)}, {other} has "
                f"{list(found.classes)}; give each the same class subfolders"
            )
    channels = cfg.channels or 3
    train_tf, eval_tf = folder_transforms(cfg.image_hw(224), channels, augment=cfg.augment)
    if own_val is not None:
        train = FolderImages(base, _every(base), train_tf)
        val = FolderImages(own_val, _every(own_val), eval_tf)
    else:
        keep, held = split_indices(len(base), holdout_size(cfg.val_size, len(base)), cfg.seed)
        train, val = FolderImages(base, keep, train_tf), FolderImages(base, held, eval_tf)
    return train, val, FolderImages(test_base, _every(test_base), eval_tf), tuple(base.classes)
