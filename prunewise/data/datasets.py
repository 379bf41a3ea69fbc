"""`DataConfig` -> `load_data` -> `DataBundle`: Fashion-MNIST (IDX), CIFAR-10/100 (torchvision),
image folders and synthetic images, with a seeded validation split out of the training set."""

from __future__ import annotations

import hashlib
import os
import pickle
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset, Subset

from prunewise.data.folder import FolderImages, imagefolder_splits
from prunewise.data.idx import read_idx
from prunewise.data.segfolder import segmentation_splits
from prunewise.data.tensors import (
    GRAY_WEIGHTS,
    ImageView,
    TensorImages,
    derive_seed,
    holdout_size,
    image_hw,
    split_indices,
    splits_text,
)
from prunewise.errors import PrunewiseError
from prunewise.resources import free_if_short, gigabytes
from prunewise.settings import MAX_SEED, Settings, setting

__all__ = [
    "CIFAR10_STATS",
    "CIFAR100_STATS",
    "CIFAR_DEFAULT_DIR",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_FILES",
    "FASHION_MNIST_STATS",
    "MAX_IMAGE_SIZE",
    "DataBundle",
    "DataConfig",
    "limit_data",
    "load_data",
    "load_segmentation",
]

DATASET_NAMES = ("fashion-mnist", "cifar10", "cifar100", "imagefolder", "synthetic")
"""Names accepted by `DataConfig.name`."""

FASHION_MNIST_DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
"""Where Debian's dataset-fashion-mnist package puts the IDX files."""

CIFAR_DEFAULT_DIR = "./data/cifar"
"""Where CIFAR-10/100 are looked for when no data_dir is given (relative to the working dir)."""

FASHION_MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)
"""The four IDX files of Fashion-MNIST (each may also be gzip-compressed, ending in .gz)."""

FASHION_MNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST class names, by label."""

FASHION_MNIST_STATS = ((0.2860,), (0.3530,))
CIFAR10_STATS = ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
CIFAR100_STATS = ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762))

_FMNIST_HINT = (
    "install Debian's dataset-fashion-mnist (apt-get install dataset-fashion-mnist) "
    "or pass --data-dir DIR with the four IDX files"
)
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
_STATS_SAMPLE = 5000


MAX_IMAGE_SIZE = 16384
"""Largest image side prunewise resizes to (pixels)."""


@dataclass(frozen=True)
class DataConfig(Settings):
    """Which dataset, where it lies, and how to split, shape and augment it.

    `val_size` images are held out of the training set (seeded by `seed`) for validation,
    at most a fifth of it, so small sets (synthetic, small image folders) still train.
    `channels` None keeps the dataset's own; 3 on a grayscale set replicates the channel,
    1 on a color set converts to luminance. `image_size` None is the dataset's default:
    Fashion-MNIST 32 (28 zero-padded), CIFAR 32, imagefolder 224, synthetic 32; other sizes
    resize. `augment` acts on the training split only. `limit` keeps at most that many seeded
    images of each split (quick runs; accuracies are then estimates).
    """

    section: ClassVar[str] = "data"

    name: str = setting("fashion-mnist", "dataset", choices=DATASET_NAMES, flag="--dataset")
    data_dir: str | None = setting(
        None, "where the dataset lies", kind="str", flag="--data-dir", metavar="DIR"
    )
    val_size: int = setting(
        5000,
        "validation images held out of the training set (at most a fifth of it)",
        low=0,
        high=10**9,
        flag="--val-size",
    )
    seed: int = setting(0, "seed of the validation split and of --limit", low=0, high=MAX_SEED)
    channels: int | None = setting(
        None, "image channels (1 or 3; unset: the dataset's)", kind="int", low=1, high=3
    )
    image_size: int | tuple[int, int] | None = setting(
        None,
        "image size in pixels, a side or H,W, the images resized to it (unset: the dataset's; "
        "Fashion-MNIST 32, as prunewise's models take it: give 28 for weights trained on the "
        "raw images)",
        kind="ints",
        low=1,
        high=MAX_IMAGE_SIZE,
        pattern_text=f"a side or H,W in pixels, integers in [1, {MAX_IMAGE_SIZE}]",
        flag="--image-size",
        metavar="PIXELS|H,W",
    )
    augment: bool = setting(True, "no augmentation of the training images", flag="--no-augment")
    synthetic_train: int = setting(512, "synthetic training images", low=2, high=10**7)
    synthetic_test: int = setting(256, "synthetic test images", low=1, high=10**7)
    synthetic_classes: int = setting(10, "synthetic classes", low=2, high=10_000)
    limit: int | None = setting(
        None,
        "use at most N images of each split (train, val, test), drawn with the seed",
        kind="int",
        low=1,
        high=10**9,
        flag="--limit",
        metavar="N",
    )

    def __post_init__(self) -> None:
        if isinstance(self.data_dir, os.PathLike):
            object.__setattr__(self, "data_dir", os.fspath(self.data_dir))
        size = self.image_size
        if isinstance(size, int) and not isinstance(size, bool):
            object.__setattr__(self, "image_size", (size,))
        super().__post_init__()
        if self.image_size is not None:  # a square is one int, as config files have it
            h, w = self.image_size[0], self.image_size[-1]
            object.__setattr__(self, "image_size", h if h == w else (h, w))

    def check(self) -> None:
        """Channels are 1 (grayscale) or 3 (RGB); an image size is a side or H,W; synthetic
        images are made, so no data_dir is read for them."""
        if self.name == "synthetic" and self.data_dir is not None:
            self.fail(
                "data_dir",
                "unset for synthetic images (they are made, none is read)",
                self.data_dir,
            )
        if self.channels == 2:
            self.fail("channels", "1, 3 or unset", self.channels)
        if self.image_size is not None and len(self.image_size) > 2:
            self.fail("image_size", "a side or H,W in pixels", self.image_size)

    def image_hw(self, default: int) -> tuple[int, int]:
        """(height, width) the images are resized to: image_size, else `default` square."""
        return image_hw(default if self.image_size is None else self.image_size)

    def directory(self) -> Path:
        """The data directory: data_dir, else the dataset's default location."""
        if self.data_dir is not None:
            return Path(self.data_dir).expanduser()
        if self.name == "fashion-mnist":
            return Path(FASHION_MNIST_DEFAULT_DIR)
        if self.name in ("cifar10", "cifar100"):
            return Path(CIFAR_DEFAULT_DIR)
        if self.name == "imagefolder":
            raise PrunewiseError(
                "the imagefolder dataset needs a directory: pass --data-dir DIR "
                "(data_dir) holding train/ and val/ (or test/) with one subfolder per class"
            )
        raise PrunewiseError(f"dataset {self.name} is generated and reads no directory")


@dataclass(frozen=True)
class DataBundle:
    """Train/val/test datasets of (normalized float C x H x W tensor, int label), and metadata."""

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]
    name: str
    class_names: tuple[str, ...]
    splits: str = "validation held out of the training set"  # where val and test come from

    def describe(self) -> str:
        """One line: the dataset, its classes, image shape and images per split, and where
        the validation and test splits come from."""
        counts = ", ".join(f"{f} {len(getattr(self, f)):,}" for f in ("train", "val", "test"))
        shape = "x".join(str(d) for d in self.input_shape)
        return f"{self.name}, {self.num_classes} classes, {shape} images: {counts} ({self.splits})"

    def fingerprint(self) -> dict[str, Any]:
        """What a resumed run checks is still the data it started on: the dataset, its classes,
        the images per split and, for image folders, a digest of the files of each split (by
        split, class folder and name: a folder moved elsewhere keeps its digest)."""
        names = []
        for field in ("train", "val", "test"):
            files = getattr(getattr(self, field), "files", None)
            if not callable(files):
                names = None
                break
            names += [field, *("/".join(Path(f).parts[-3:]) for f in files())]
        digest = hashlib.sha256("\n".join(names).encode()).hexdigest() if names else None
        return {
            "name": self.name,
            "classes": self.num_classes,
            "images": {f: len(getattr(self, f)) for f in ("train", "val", "test")},
            "files_sha256": digest,
        }

    def __post_init__(self) -> None:
        for field in ("train", "val", "test"):
            ds = getattr(self, field)
            if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")):
                raise PrunewiseError(
                    f"DataBundle.{field} must be a sized torch Dataset, got {type(ds).__name__}"
                )
        if isinstance(self.num_classes, bool) or not isinstance(self.num_classes, int):
            raise PrunewiseError(f"DataBundle.num_classes must be an int, got {self.num_classes!r}")
        if self.num_classes < 1:
            raise PrunewiseError(f"DataBundle.num_classes must be >= 1, got {self.num_classes}")
        shape = tuple(self.input_shape)
        if len(shape) != 3 or any(
            isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in shape
        ):
            raise PrunewiseError(
                f"DataBundle.input_shape must be three positive ints (C, H, W), got {shape!r}"
            )
        object.__setattr__(self, "input_shape", shape)
        if self.name not in DATASET_NAMES:
            raise PrunewiseError(
                f"DataBundle.name must be one of {', '.join(DATASET_NAMES)}, got {self.name!r}"
            )
        names = tuple(self.class_names)
        if len(names) != self.num_classes or not all(isinstance(c, str) for c in names):
            raise PrunewiseError(
                f"DataBundle.class_names must be {self.num_classes} strings (one per class), "
                f"got {len(names)}"
            )
        object.__setattr__(self, "class_names", names)


def load_data(cfg: DataConfig) -> DataBundle:
    """Load the dataset `cfg` names as train/val/test datasets (val carved out of train),
    at most `cfg.limit` images per split when set."""
    if not isinstance(cfg, DataConfig):
        raise PrunewiseError(f"load_data needs a DataConfig, got {type(cfg).__name__}")
    if cfg.name == "fashion-mnist":
        bundle = _fashion_mnist(cfg)
    elif cfg.name in ("cifar10", "cifar100"):
        bundle = _cifar(cfg)
    elif cfg.name == "imagefolder":
        train, val, test, names = imagefolder_splits(cfg)
        shape = (cfg.channels or 3, *cfg.image_hw(224))
        splits = splits_text(cfg.directory())
        bundle = DataBundle(train, val, test, len(names), shape, cfg.name, names, splits)
    else:
        bundle = _synthetic(cfg)
    return bundle if cfg.limit is None else limit_data(bundle, cfg.limit, cfg.seed)


def load_segmentation(cfg: DataConfig) -> DataBundle:
    """A segmentation folder (data/segfolder.py) as train/val/test datasets of (image, mask);
    the classes are counted from the training masks and named by their index."""
    if not isinstance(cfg, DataConfig):
        raise PrunewiseError(f"load_segmentation needs a DataConfig, got {type(cfg).__name__}")
    if cfg.name != "imagefolder":
        raise PrunewiseError(
            f"segmentation reads a folder of images and masks (--dataset imagefolder "
            f"--data-dir DIR), not {cfg.name}"
        )
    train, val, test, classes = segmentation_splits(cfg)
    shape = (cfg.channels or 3, *cfg.image_hw(224))
    names = tuple(str(c) for c in range(classes))
    splits = splits_text(cfg.directory())
    bundle = DataBundle(train, val, test, classes, shape, cfg.name, names, splits)
    return bundle if cfg.limit is None else limit_data(bundle, cfg.limit, cfg.seed)


def limit_data(bundle: DataBundle, limit: int, seed: int) -> DataBundle:
    """The bundle with at most `limit` images per split, drawn without replacement with `seed`.

    For quick runs: the chosen images keep their dataset order; accuracies measured on them
    are estimates.
    """
    if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
        raise PrunewiseError(f"the image limit must be an int >= 1, got {limit!r}")

    def cut(ds: Dataset, stream: int) -> Dataset:
        n = len(ds)  # type: ignore[arg-type]
        if n <= limit:
            return ds
        g = torch.Generator().manual_seed(derive_seed(seed, stream))
        positions = torch.randperm(n, generator=g)[:limit].sort().values
        if isinstance(ds, TensorImages):
            return ds.subset(positions)
        if isinstance(ds, FolderImages):
            return FolderImages(ds.base, ds.indices[positions], ds.transform)
        return Subset(ds, positions.tolist())

    return replace(
        bundle, train=cut(bundle.train, 20), val=cut(bundle.val, 21), test=cut(bundle.test, 22)
    )


def _idx_file(directory: Path, base: str) -> Path:
    """The plain or gzip-compressed IDX file `base` in `directory` (plain preferred)."""
    for candidate in (directory / base, directory / f"{base}.gz"):
        if candidate.is_file():
            return candidate
    raise PrunewiseError(
        f"Fashion-MNIST file {base}(.gz) is missing in {directory}: {_FMNIST_HINT}"
    )


def _fashion_mnist(cfg: DataConfig) -> DataBundle:
    directory = cfg.directory()
    if directory.exists() and not directory.is_dir():
        raise PrunewiseError(
            f"Fashion-MNIST directory {directory} is a file, not a directory: {_FMNIST_HINT}"
        )
    if not directory.is_dir():
        raise PrunewiseError(f"Fashion-MNIST directory {directory} does not exist: {_FMNIST_HINT}")
    paths = [_idx_file(directory, base) for base in FASHION_MNIST_FILES]
    arrays = [read_idx(p) for p in paths]
    for path, array, ndim in zip(paths, arrays, (3, 1, 3, 1), strict=True):
        if array.ndim != ndim or array.dtype != "uint8":
            raise PrunewiseError(
                f"{path} holds {array.dtype} of shape {array.shape}, Fashion-MNIST needs uint8 "
                f"with {ndim} dimensions; {_FMNIST_HINT}"
            )
    tr_x, tr_y, te_x, te_y = (torch.from_numpy(a) for a in arrays)
    for images, labels, path in ((tr_x, tr_y, paths[1]), (te_x, te_y, paths[3])):
        if len(images) != len(labels):
            raise PrunewiseError(
                f"{path} has {len(labels)} labels for {len(images)} images; {_FMNIST_HINT}"
            )
        if len(labels) and int(labels.max()) >= len(FASHION_MNIST_CLASSES):
            raise PrunewiseError(
                f"{path} has label {int(labels.max())}, Fashion-MNIST has 10 classes (0 to 9)"
            )
    if tr_x.shape[1:] != te_x.shape[1:]:
        raise PrunewiseError(
            f"Fashion-MNIST train images are {tuple(tr_x.shape[1:])}, test images "
            f"{tuple(te_x.shape[1:])}; {_FMNIST_HINT}"
        )
    return _tensor_bundle(
        cfg,
        (tr_x.unsqueeze(1), tr_y, te_x.unsqueeze(1), te_y),
        FASHION_MNIST_STATS,
        FASHION_MNIST_CLASSES,
        default_size=32,
    )


def _cifar(cfg: DataConfig) -> DataBundle:
    from torchvision.datasets import CIFAR10, CIFAR100

    is10 = cfg.name == "cifar10"
    folder, archive = (
        ("cifar-10-batches-py", "cifar-10-python.tar.gz")
        if is10
        else ("cifar-100-python", "cifar-100-python.tar.gz")
    )
    title = "CIFAR-10" if is10 else "CIFAR-100"
    root = cfg.directory().absolute()
    if root.name == folder:
        root = root.parent
    hint = (
        f"it needs the python-version archive {archive} (from {_CIFAR_URL}) extracted there "
        f"(giving {root / folder}), or pass --data-dir DIR holding {folder}/"
    )
    if not (root / folder).is_dir():
        raise PrunewiseError(f"{title} not found: looked for {root / folder}; {hint}")
    cls = CIFAR10 if is10 else CIFAR100
    try:
        train, test = (cls(str(root), train=flag, download=False) for flag in (True, False))
    except (RuntimeError, OSError, EOFError, KeyError, pickle.UnpicklingError) as exc:
        why = str(exc).split(" You can use download=True")[0]  # torchvision's advice, not ours
        raise PrunewiseError(
            f"{title} in {root / folder} is incomplete or corrupt ({why}); re-extract: {hint}"
        ) from exc

    def tensors(ds: CIFAR10) -> tuple[torch.Tensor, torch.Tensor]:
        """Uint8 (N, 3, 32, 32) images and int64 labels of a torchvision CIFAR dataset."""
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()
        return images, torch.tensor(ds.targets, dtype=torch.int64)

    stats = CIFAR10_STATS if is10 else CIFAR100_STATS
    return _tensor_bundle(
        cfg, (*tensors(train), *tensors(test)), stats, tuple(train.classes), default_size=32
    )


def _synthetic(cfg: DataConfig) -> DataBundle:
    """Each class a fixed random smooth pattern; images are that pattern, scaled, plus noise."""
    channels = cfg.channels or 3
    h, w = cfg.image_hw(32)
    needed = max(cfg.synthetic_train, cfg.synthetic_test) * channels * h * w * 4 * 3
    if (free := free_if_short(needed)) is not None:
        raise PrunewiseError(
            f"synthetic images of {channels}x{h}x{w} need about {gigabytes(needed)} to "
            f"make, more than the {gigabytes(free)} free; use a smaller image size or fewer images"
        )
    k = cfg.synthetic_classes
    g = torch.Generator().manual_seed(derive_seed(cfg.seed, 10))
    coarse = torch.rand(k, channels, min(8, h), min(8, w), generator=g)
    prototypes = F.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)

    def draw(n: int, stream: int) -> tuple[torch.Tensor, torch.Tensor]:
        """`n` balanced, shuffled labels and their uint8 images, from sub-stream `stream`."""
        gen = torch.Generator().manual_seed(derive_seed(cfg.seed, stream))
        labels = (torch.arange(n) % k)[torch.randperm(n, generator=gen)]
        gain = 0.6 + 0.2 * torch.rand(n, 1, 1, 1, generator=gen)
        noise = 0.12 * torch.randn(n, channels, h, w, generator=gen)
        x = 0.5 + (prototypes[labels] - 0.5) * 2 * gain + noise
        return (x.clamp(0, 1) * 255).round().to(torch.uint8), labels

    tr_x, tr_y = draw(cfg.synthetic_train, 11)
    te_x, te_y = draw(cfg.synthetic_test, 12)
    pixels = tr_x.to(torch.float32).div(255).transpose(0, 1).reshape(channels, -1)
    stats = (
        tuple(pixels.mean(dim=1).tolist()),
        tuple(pixels.std(dim=1).clamp_min(1e-3).tolist()),
    )
    names = tuple(f"class{i}" for i in range(k))
    return _tensor_bundle(cfg, (tr_x, tr_y, te_x, te_y), stats, names, default_size=(h, w))


def _gray_stats(images: torch.Tensor) -> tuple[tuple[float], tuple[float]]:
    """Mean and std of the luminance of (a sample of) RGB uint8 images."""
    sample = images[:_STATS_SAMPLE].to(torch.float32).div_(255)
    gray = (sample * torch.tensor(GRAY_WEIGHTS).view(1, 3, 1, 1)).sum(dim=1)
    return (float(gray.mean()),), (max(float(gray.std()), 1e-3),)


def _tensor_bundle(
    cfg: DataConfig,
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor],
    stats: tuple[tuple[float, ...], tuple[float, ...]],
    class_names: tuple[str, ...],
    *,
    default_size: int | tuple[int, int],
) -> DataBundle:
    """Split, shape and wrap in-memory uint8 train/test images into a `DataBundle`; at the
    dataset's default size, square images a little smaller (Fashion-MNIST's 28 in 32) are
    zero-padded, others resized."""
    tr_x, tr_y, te_x, te_y = data
    native_c, native = tr_x.shape[1], tr_x.shape[-1]
    hw = image_hw(cfg.image_size if cfg.image_size is not None else default_size)
    square = hw[0] == hw[1] and tr_x.shape[-2] == native
    pad = (hw[0] - native) // 2 if square and hw == image_hw(default_size) else 0
    if pad < 0 or native + 2 * pad != hw[0]:
        pad = 0
    channels = cfg.channels or native_c
    mean, std = stats
    if channels != native_c:
        mean, std = (mean * 3, std * 3) if channels == 3 else _gray_stats(tr_x)
    view = ImageView(channels, hw, pad, tuple(mean), tuple(std), augment=False)
    full = TensorImages(tr_x, tr_y, view)
    keep, held = split_indices(len(full), holdout_size(cfg.val_size, len(full)), cfg.seed)
    return DataBundle(
        train=full.subset(keep, augment=cfg.augment),
        val=full.subset(held),
        test=TensorImages(te_x, te_y, view),
        num_classes=len(class_names),
        input_shape=(channels, *hw),
        name=cfg.name,
        class_names=class_names,
    )
