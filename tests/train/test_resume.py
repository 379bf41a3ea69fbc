"""Resuming from a saved TrainState repeats an uninterrupted run bit for bit (CPU)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from prunewise.data import make_loader
from prunewise.errors import PrunewiseError
from prunewise.train import (
    TRAIN_STATE_FORMAT,
    DistillConfig,
    TrainConfig,
    TrainState,
    make_train_loader,
    train,
)

CONFIG = TrainConfig(epochs=3, lr=0.05, lr_min=1e-3, seed=7, device="cpu", progress=False)


class Interrupted(Exception):
    """Stands for the process being killed after a checkpoint."""


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def _without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in m.items() if k != "seconds"} for m in history]


@pytest.mark.parametrize("stop_after", [1, 2])
@pytest.mark.parametrize("with_teacher", [False, True], ids=["ce", "distill"])
def test_resume_is_exact(
    tmp_path: Path, make_model, make_images, stop_after: int, with_teacher: bool
) -> None:
    data, val = make_images(96, seed=1), make_images(32, seed=2, augment=False)
    val_loader = make_loader(val, 16, shuffle=False)
    teacher = make_model(seed=99) if with_teacher else None
    teacher_before = _state(teacher) if teacher is not None else None
    distill = DistillConfig(temperature=2.0, weight=0.7) if with_teacher else None

    def run(model, **kw) -> list[dict]:
        loader = make_train_loader(data, 16, seed=CONFIG.seed)
        return train(
            model, loader, CONFIG, val_loader=val_loader, teacher=teacher, distill=distill, **kw
        )

    straight = make_model(seed=3)
    full_history = run(straight)

    path = tmp_path / "state.pt"

    def checkpoint(state: TrainState) -> None:
        state.save(path)
        if state.epochs_done == stop_after:
            raise Interrupted

    with pytest.raises(Interrupted):
        run(make_model(seed=3), on_epoch=checkpoint)
    resumed = make_model(seed=11)  # a fresh model: every weight must come from the state
    history = run(resumed, resume=TrainState.load(path))

    assert _max_diff(_state(straight), _state(resumed)) == 0.0
    assert _without_seconds(history) == _without_seconds(full_history)
    assert [m["epoch"] for m in history] == [1, 2, 3]
    if teacher is not None:
        assert teacher.training  # its mode is given back
        assert _max_diff(_state(teacher), teacher_before) == 0.0


def test_resumed_run_differs_without_restoring_optimizer(make_model, make_images) -> None:
    """Control: dropping the momentum buffers changes the result (the test above can fail)."""
    data = make_images(96, seed=1)
    straight, resumed = make_model(seed=3), make_model(seed=3)
    train(straight, make_train_loader(data, 16, seed=7), CONFIG)
    states: list[TrainState] = []
    with pytest.raises(Interrupted):

        def keep(state: TrainState) -> None:
            states.append(state)
            raise Interrupted

        train(resumed, make_train_loader(data, 16, seed=7), CONFIG, on_epoch=keep)
    fresh_opt = torch.optim.SGD(resumed.parameters(), lr=0.1).state_dict()
    broken = TrainState(1, states[0].model_state, fresh_opt, states[0].history)
    restart = make_model(seed=3)
    train(restart, make_train_loader(data, 16, seed=7), CONFIG, resume=broken)
    assert _max_diff(_state(straight), _state(restart)) > 1e-6


def test_finished_state_loads_weights_and_returns(tmp_path: Path, make_model, make_images) -> None:
    data = make_images(64)
    model = make_model(seed=3)
    path = tmp_path / "state.pt"
    loader = make_train_loader(data, 16, seed=0)
    history = train(model, loader, CONFIG, on_epoch=lambda s: s.save(path))

    class Exploding(torch.utils.data.DataLoader):
        def __iter__(self):
            raise AssertionError("a finished state must not train again")

    fresh = make_model(seed=5)
    again = train(fresh, Exploding(data, batch_size=16), CONFIG, resume=TrainState.load(path))
    assert again == history
    assert _max_diff(_state(model), _state(fresh)) == 0.0


def test_state_file_roundtrip(tmp_path: Path, make_model, make_images) -> None:
    data = make_images(64)
    states: list[TrainState] = []
    train(make_model(), make_train_loader(data, 16, seed=0), CONFIG, on_epoch=states.append)
    assert [s.epochs_done for s in states] == [1, 2, 3]
    first = states[0]
    assert all(t.device.type == "cpu" for t in first.model_state.values())
    assert not torch.equal(first.model_state["head.weight"], states[-1].model_state["head.weight"])
    path = tmp_path / "sub" / "state.pt"
    first.save(path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["state.pt"]
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == TRAIN_STATE_FORMAT
    back = TrainState.load(path)
    assert back.epochs_done == 1 and back.history == first.history
    assert _max_diff(back.model_state, first.model_state) == 0.0
    momentum = back.optimizer_state["state"][0]["momentum_buffer"]
    assert torch.equal(momentum, first.optimizer_state["state"][0]["momentum_buffer"])


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(PrunewiseError, match="does not exist"):
        TrainState.load(tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(PrunewiseError, match="corrupt"):
        TrainState.load(garbage)
    good = tmp_path / "good.pt"
    TrainState(0, {}, {"state": {}, "param_groups": []}, []).save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(PrunewiseError, match="corrupt"):
        TrainState.load(truncated)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(PrunewiseError, match="not a prunewise training state"):
        TrainState.load(foreign)
    inconsistent = tmp_path / "inconsistent.pt"
    torch.save(
        {
            "format": TRAIN_STATE_FORMAT,
            "epochs_done": 2,
            "model_state": {},
            "optimizer_state": {},
            "history": [],
        },
        inconsistent,
    )
    with pytest.raises(PrunewiseError, match="inconsistent"):
        TrainState.load(inconsistent)


def test_resume_into_other_architecture_fails(make_model, make_images) -> None:
    data = make_images(64)
    states: list[TrainState] = []
    train(make_model(width=8), make_train_loader(data, 16, seed=0), CONFIG, on_epoch=states.append)
    with pytest.raises(PrunewiseError, match="does not fit this model"):
        train(make_model(width=4), make_train_loader(data, 16, seed=0), CONFIG, resume=states[0])


def test_history_metrics(make_model, make_images) -> None:
    data, val = make_images(64), make_images(32, seed=2, augment=False)
    history = train(
        make_model(),
        make_train_loader(data, 16, seed=0),
        CONFIG,
        val_loader=make_loader(val, 16, shuffle=False),
    )
    assert [sorted(m) for m in history] == [["epoch", "loss", "lr", "seconds", "val_acc"]] * 3
    assert history[-1]["lr"] == pytest.approx(CONFIG.lr_min)
    assert CONFIG.lr > history[0]["lr"] > history[1]["lr"] > history[2]["lr"]
    assert all(m["loss"] > 0 and m["seconds"] > 0 and 0 <= m["val_acc"] <= 100 for m in history)


def test_epoch_order_depends_only_on_seed_and_epoch(make_images) -> None:
    data = make_images(50)

    def order(seed: int, epoch: int) -> list[int]:
        loader = make_train_loader(data, 10, seed=seed)
        loader.sampler.set_epoch(epoch)
        return list(loader.sampler)

    assert order(3, 0) == order(3, 0)
    assert order(3, 1) == order(3, 1) != order(3, 0)
    assert sorted(order(3, 1)) == list(range(50))
    assert order(4, 0) != order(3, 0)
