"""Datasets for training and analysis: Fashion-MNIST, CIFAR-10/100, image folders, synthetic."""

from prunewise.data.datasets import (
    CIFAR_DEFAULT_DIR,
    DATASET_NAMES,
    FASHION_MNIST_CLASSES,
    FASHION_MNIST_DEFAULT_DIR,
    FASHION_MNIST_FILES,
    DataBundle,
    DataConfig,
    limit_data,
    load_data,
    load_segmentation,
)
from prunewise.data.folder import FolderImages
from prunewise.data.idx import read_idx, write_idx
from prunewise.data.tensors import (
    ImageView,
    TensorImages,
    make_loader,
    sample_images,
    split_indices,
)

__all__ = [
    "CIFAR_DEFAULT_DIR",
    "DATASET_NAMES",
    "FASHION_MNIST_CLASSES",
    "FASHION_MNIST_DEFAULT_DIR",
    "FASHION_MNIST_FILES",
    "DataBundle",
    "DataConfig",
    "FolderImages",
    "ImageView",
    "TensorImages",
    "limit_data",
    "load_data",
    "load_segmentation",
    "make_loader",
    "read_idx",
    "sample_images",
    "split_indices",
    "write_idx",
]
