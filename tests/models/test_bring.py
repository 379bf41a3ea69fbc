"""Building shapes-only models: the meta device, and the CPU for builders that cannot run there."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.models.bring import bring_model, on_meta, shapes_only


class _ReadsValues(nn.Module):
    """Computes its width with tensors and reads it back, as torchvision's RegNet does."""

    def __init__(self) -> None:
        super().__init__()
        width = int((torch.arange(4) * 3).sum().item())
        self.conv = nn.Conv2d(3, width, 3)


def test_a_model_builds_on_meta_when_it_can() -> None:
    model = on_meta(lambda: nn.Conv2d(3, 8, 3))
    assert model.weight.device.type == "meta"


def test_a_builder_that_reads_tensor_values_is_built_on_the_cpu() -> None:
    with pytest.raises((RuntimeError, NotImplementedError)), torch.device("meta"):
        _ReadsValues()
    model = on_meta(_ReadsValues)
    assert model.conv.weight.device.type == "cpu" and model.conv.out_channels == 18


def test_other_build_errors_are_raised_as_they_are() -> None:
    def broken() -> nn.Module:
        raise PrunewiseError("bad argument")

    with pytest.raises(PrunewiseError, match="bad argument"):
        on_meta(broken)


def test_torchvision_regnet_builds_for_the_cost_models() -> None:
    model, shape = shapes_only("torchvision:regnet_x_400mf")  # failed on meta before
    assert shape == (3, 224, 224) and not model.training
    assert model(torch.zeros(1, *shape)).shape == (1, 1000)


def test_weights_load_into_a_layer_with_a_versioned_state_dict(tmp_path) -> None:
    import torchvision

    net = torchvision.models.mnasnet0_5(num_classes=10)  # its loader asks the dict's version
    torch.save(dict(net.state_dict()), tmp_path / "w.pt")  # a plain dict: no version kept
    brought = bring_model("torchvision:mnasnet0_5", num_classes=10, weights=tmp_path / "w.pt")
    for key, value in net.state_dict().items():
        assert torch.equal(brought.model.state_dict()[key], value), key


def test_a_weights_path_that_is_a_folder_says_so(tmp_path) -> None:
    with pytest.raises(PrunewiseError, match="is a directory; give the file inside it"):
        bring_model("resnet20", num_classes=10, in_channels=3, weights=tmp_path)
