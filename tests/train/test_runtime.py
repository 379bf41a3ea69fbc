"""Single-process context, torchrun environment handling, progress bars and input validation."""

from __future__ import annotations

import contextlib
import io
import math
import socket

import pytest
import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from prunewise.data import make_loader
from prunewise.errors import PrunewiseError
from prunewise.train import (
    DistContext,
    TrainConfig,
    cosine_lr,
    init_distributed,
    make_train_loader,
    shutdown_distributed,
    train,
)

CONFIG = TrainConfig(epochs=2, lr=0.05, lr_min=1e-3, device="cpu", progress=False)
ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No torchrun variables in the environment."""
    for name in ENV:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_single_process_context_is_a_no_op() -> None:
    ctx = DistContext()
    assert ctx.is_main and not ctx.distributed
    ctx.barrier()
    obj = {"a": [1, 2]}
    assert ctx.broadcast_object(obj) is obj
    assert ctx.all_reduce_sum(2.5) == 2.5
    assert not DistContext(rank=1, world_size=2).is_main


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"world_size": 0}, "world_size"),
        ({"rank": 2, "world_size": 2}, "rank"),
        ({"rank": -1}, "rank"),
        ({"local_rank": -1}, "local_rank"),
        ({"backend": "mpi"}, "backend"),
    ],
)
def test_context_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PrunewiseError, match=match):
        DistContext(**kwargs)


def test_init_without_torchrun_touches_nothing(clean_env: pytest.MonkeyPatch) -> None:
    assert init_distributed("cpu") == DistContext()
    assert not tdist.is_initialized()
    shutdown_distributed(DistContext())


def test_init_reads_the_environment_when_called(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("RANK", "0")
    with pytest.raises(PrunewiseError, match="RANK and WORLD_SIZE"):
        init_distributed("cpu")
    clean_env.setenv("WORLD_SIZE", "two")
    with pytest.raises(PrunewiseError, match="not an integer"):
        init_distributed("cpu")
    clean_env.setenv("WORLD_SIZE", "1")
    with pytest.raises(PrunewiseError, match="MASTER_ADDR and MASTER_PORT not set"):
        init_distributed("cpu")
    assert not tdist.is_initialized()


def test_init_and_shutdown_one_rank_group(clean_env: pytest.MonkeyPatch) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for name, value in (("RANK", "0"), ("WORLD_SIZE", "1"), ("LOCAL_RANK", "0")):
        clean_env.setenv(name, value)
    clean_env.setenv("MASTER_ADDR", "127.0.0.1")
    clean_env.setenv("MASTER_PORT", str(port))
    ctx = init_distributed("cpu")
    try:
        assert ctx == DistContext(0, 1, 0, "gloo")
        assert tdist.is_initialized()
        assert init_distributed("cpu") == ctx  # idempotent
    finally:
        shutdown_distributed(ctx)
    assert not tdist.is_initialized()


def test_declared_ranks_without_a_group_fail(make_model, make_images) -> None:
    ctx = DistContext(rank=0, world_size=2)
    loader = make_train_loader(make_images(32), 16, seed=0, dist=ctx)
    with pytest.raises(PrunewiseError, match="init_distributed"):
        train(make_model(), loader, CONFIG, dist=ctx)
    with pytest.raises(PrunewiseError, match="init_distributed"):
        ctx.barrier()


def test_progress_bars(capsys: pytest.CaptureFixture[str], make_model, make_images) -> None:
    loader = make_train_loader(make_images(32), 16, seed=0)
    train(make_model(), loader, CONFIG)
    assert capsys.readouterr().err == ""
    noisy = TrainConfig(epochs=2, device="cpu", progress=True)
    train(make_model(), loader, noisy, desc="fine-tune")
    assert capsys.readouterr().err == ""  # not a terminal: no carriage-return updates
    terminal = io.StringIO()
    terminal.isatty = lambda: True  # type: ignore[method-assign]
    with contextlib.redirect_stderr(terminal):
        train(make_model(), loader, noisy, desc="fine-tune")
    err = terminal.getvalue()
    assert "fine-tune 1/2" in err and "fine-tune 2/2" in err and "loss=" in err


def test_zero_epochs_leave_the_model_alone(make_model, make_images) -> None:
    model = make_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    config = TrainConfig(epochs=0, device="cpu", progress=False)
    assert train(model, make_train_loader(make_images(32), 16, seed=0), config) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_plain_shuffling_loader_still_trains(make_model, make_images) -> None:
    history = train(make_model(), make_loader(make_images(32), 16, shuffle=True), CONFIG)
    assert [m["epoch"] for m in history] == [1, 2]


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"lr": 0.0}, "lr"),
        ({"lr": 0.01, "lr_min": 0.1}, "lr_min"),
        ({"momentum": 1.0}, "momentum"),
        ({"weight_decay": -1e-4}, "weight_decay"),
        ({"seed": -1}, "seed"),
        ({"device": "tpu"}, "device"),
    ],
)
def test_config_validation(kwargs: dict, match: str) -> None:
    with pytest.raises(PrunewiseError, match=match):
        TrainConfig(**kwargs)


def test_input_validation(make_model, make_images) -> None:
    empty = DataLoader(TensorDataset(torch.zeros(0, 3, 8, 8), torch.zeros(0, dtype=torch.long)))
    good = make_train_loader(make_images(32), 16, seed=0)
    with pytest.raises(PrunewiseError, match="training loader yields no batch"):
        train(make_model(), empty, CONFIG)
    with pytest.raises(PrunewiseError, match="validation loader yields no batch"):
        train(make_model(), good, CONFIG, val_loader=empty)
    frozen = make_model().requires_grad_(False)
    with pytest.raises(PrunewiseError, match="no trainable parameters"):
        train(frozen, good, CONFIG)
    with pytest.raises(PrunewiseError, match="batch_size"):
        make_train_loader(make_images(32), 0, seed=0)
    with pytest.raises(PrunewiseError, match="seed"):
        make_train_loader(make_images(32), 8, seed=-1)
    with pytest.raises(PrunewiseError, match="has 0 images; training needs at least 2"):
        make_train_loader(empty.dataset, 8, seed=0)
    with pytest.raises(PrunewiseError, match="has 1 image; training needs at least 2"):
        make_train_loader(make_images(1), 8, seed=0)


@pytest.mark.parametrize("loader_of", [make_train_loader, make_loader])
def test_a_last_batch_of_one_image_is_left_out(make_model, make_images, loader_of) -> None:
    """BatchNorm cannot train on one image: training skips a batch of one (any loader)."""
    kwargs = {"shuffle": True} if loader_of is make_loader else {}
    loader = loader_of(make_images(9), 4, seed=0, **kwargs)
    assert [len(y) for _x, y in loader] == [4, 4, 1]
    history = train(make_model(), loader, CONFIG)
    assert len(history) == CONFIG.epochs
    one = loader_of(make_images(2), 4, seed=0, **kwargs).dataset
    with pytest.raises(PrunewiseError, match="has 1 image; training needs at least 2"):
        train(make_model(), DataLoader(torch.utils.data.Subset(one, [0])), CONFIG)


def test_a_diverging_run_stops_with_a_clear_error(make_model, make_images) -> None:
    loader = make_train_loader(make_images(32), 8, seed=0)
    model = make_model()
    with torch.no_grad():
        next(model.parameters()).fill_(float("inf"))  # as weights look after a blow-up
    with pytest.raises(PrunewiseError, match=r"training diverged in epoch 1 .*lower the learning"):
        train(model, loader, CONFIG)


def test_cosine_schedule_endpoints() -> None:
    assert cosine_lr(0, 10, 0.1, 0.001) == 0.1
    assert cosine_lr(10, 10, 0.1, 0.001) == pytest.approx(0.001)
    assert cosine_lr(5, 10, 0.1, 0.001) == pytest.approx(0.0505)


def test_a_collective_lost_to_another_process_is_one_line() -> None:
    lost = RuntimeError(
        "[/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:561] Connection closed by peer "
        "[127.0.0.1]:22431. This is typically caused by a remote worker crashing.\nmore"
    )
    told = DistContext(rank=1, world_size=2).peer_lost(lost)
    assert told is not None and str(told).startswith(
        "rank 1: another process of the job stopped (Connection closed by peer [127.0.0.1]"
    )
    assert "--resume" in str(told) and "\n" not in str(told)
    assert DistContext().peer_lost(lost) is None  # one process: nothing else to blame
    assert DistContext(rank=1, world_size=2).peer_lost(RuntimeError("shape mismatch")) is None


def test_a_model_with_an_auxiliary_head_in_training_trains_on_its_main_output(
    make_model, make_images
) -> None:
    class WithAux(nn.Module):  # as torchvision's Inception-V3: (logits, aux logits) in train
        def __init__(self) -> None:
            super().__init__()
            self.net = make_model()
            self.aux = nn.Linear(8, 3)

        def forward(self, x: torch.Tensor):
            out = self.net(x)
            return (out, self.aux(self.net.features(x))) if self.training else out

    model = WithAux()
    before = model.aux.weight.detach().clone()
    history = train(model, make_train_loader(make_images(32), 16, seed=0), CONFIG)
    assert len(history) == CONFIG.epochs and math.isfinite(history[-1]["loss"])
    assert torch.equal(model.aux.weight, before)  # the auxiliary head gets no loss
