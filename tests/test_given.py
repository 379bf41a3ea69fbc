"""What a Python caller hands prunewise: image batches checked, the exported model a copy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.given import check_images, inference_copy, model_dtype


def test_a_good_batch_comes_back_in_the_model_dtype() -> None:
    images = torch.rand(4, 1, 8, 8, dtype=torch.float64)
    out = check_images(images, (1, 8, 8))
    assert out.dtype == torch.float32 and torch.equal(out, images.float())
    from_numpy = check_images(np.zeros((2, 3, 4, 4), dtype=np.float32), dtype=torch.float64)
    assert from_numpy.dtype == torch.float64 and from_numpy.shape == (2, 3, 4, 4)


@pytest.mark.parametrize(
    ("images", "shape", "match"),
    [
        ([torch.zeros(1, 8, 8)], None, "must be a tensor.*torch.stack"),
        (torch.zeros(1, 8, 8), (1, 8, 8), r"one image \(1, 8, 8\).*unsqueeze\(0\)"),
        (torch.zeros(0, 1, 8, 8), None, "non-empty batch"),
        (torch.zeros(2, 1, 16, 16), (1, 8, 8), r"\(1, 16, 16\) each.*traced at \(1, 8, 8\)"),
        (torch.zeros(2, 1, 8, 8, dtype=torch.uint8), None, r"uint8.*float, normalised"),
        (torch.tensor([[[[0.0, float("nan")]]], [[[1.0, 2.0]]]]), None, "1 of 2 images hold NaN"),
    ],
    ids=["list", "one-image", "empty", "other-size", "uint8", "nan"],
)
def test_a_bad_batch_is_refused_saying_what_to_change(images, shape, match) -> None:
    with pytest.raises(PrunewiseError, match=match):
        check_images(images, shape)


def test_inference_copy_leaves_the_callers_model_as_it_was() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).double().train()
    copy = inference_copy(model)
    assert model.training and model_dtype(model) == torch.float64
    assert not copy.training and model_dtype(copy) == torch.float32
    assert copy[1].num_batches_tracked.dtype == torch.long  # integer buffers stay integers
    assert model_dtype(nn.ReLU()) == torch.float32
