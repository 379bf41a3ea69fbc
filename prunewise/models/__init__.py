"""The model zoo: prunewise's own models and every torchvision classifier, under one registry.

Importing this package registers ``vgg*_bn_small`` and the ResNets of
:mod:`prunewise.models.resnet_cifar`; torchvision names are resolved lazily on first use.
"""

from __future__ import annotations

from prunewise.models import alexnet, resnet_cifar, vgg
from prunewise.models.checks import check_input_fits, has_batchnorm
from prunewise.models.registry import (
    ModelInfo,
    build_model,
    list_models,
    model_exists,
    model_info,
    register_model,
)
from prunewise.models.scoped import (
    ScopedCheckpoint,
    load_scoped_checkpoint,
    save_scoped_checkpoint,
)

__all__ = [
    "ModelInfo",
    "ScopedCheckpoint",
    "alexnet",
    "build_model",
    "check_input_fits",
    "has_batchnorm",
    "list_models",
    "load_scoped_checkpoint",
    "model_exists",
    "model_info",
    "register_model",
    "resnet_cifar",
    "save_scoped_checkpoint",
    "vgg",
]
