"""`sparsify` checkpoints after each step and continues from a saved state exactly."""

from __future__ import annotations

import io
import zlib

import pytest
import torch
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.prune.fine import SparsifyConfig, SparsifyResult, SparsifyState, sparsify
from tests.prune.fine.test_methods import CONV1, CONV2, FC1, FC2, _evaluate, _model

TOLERANCE = {CONV1: 0.5, CONV2: 0.7, FC1: 0.9, FC2: 0.6}


class _Seeded:
    """Fine-tune: one SGD step on data seeded by the stage label (deterministic); may fail."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.labels: list[str] = []
        self.fail_at = fail_at

    def __call__(self, model: nn.Module, label: str) -> None:
        if self.fail_at is not None and len(self.labels) == self.fail_at:
            raise KeyboardInterrupt  # the process dies in the middle of this stage
        self.labels.append(label)
        gen = torch.Generator().manual_seed(zlib.crc32(label.encode()))
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        model(torch.randn(3, 4, 6, 6, generator=gen)).square().mean().backward()
        opt.step()


def _through_file(state: SparsifyState) -> SparsifyState:
    """Save and load the state the way the pipeline does (weights_only)."""
    buffer = io.BytesIO()
    torch.save(state.to_payload(), buffer)
    buffer.seek(0)
    return SparsifyState.from_payload(torch.load(buffer, weights_only=True))


def _same(a: SparsifyResult, b: SparsifyResult) -> None:
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key
    assert a.masks.keys() == b.masks.keys()
    assert all(torch.equal(a.masks[n], b.masks[n]) for n in a.masks)
    assert a.to_dict() == b.to_dict()


CONFIGS = {
    "reversed_peak": SparsifyConfig(method="reversed", peak=True),
    "peak": SparsifyConfig(method="peak", max_rounds=4),
    "balanced": SparsifyConfig(method="balanced", sparsity=0.75, group=4),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_resume_from_every_step_equals_the_uninterrupted_run(name: str) -> None:
    config = CONFIGS[name]
    states: list[SparsifyState] = []
    full = sparsify(_model(), config, _evaluate(TOLERANCE), _Seeded(), checkpoint=states.append)
    assert states and states[-1].finished
    assert [s.step for s in states] == list(range(1, len(states) + 1))
    for state in states:
        finetune = _Seeded()
        lines: list[str] = []
        again = sparsify(
            _model(),
            config,
            _evaluate(TOLERANCE),
            finetune,
            resume=_through_file(state),
            log=lines.append,
        )
        _same(full, again)
        assert len(finetune.labels) == len(full.stages) - len(state.stages)  # no stage redone
        assert lines[0].startswith(f"resumed after step {state.step}")


def test_an_interrupted_stage_is_done_again_from_the_last_state() -> None:
    config = CONFIGS["reversed_peak"]
    full = sparsify(_model(), config, _evaluate(TOLERANCE), _Seeded())
    states: list[SparsifyState] = []
    with pytest.raises(KeyboardInterrupt):
        sparsify(
            _model(), config, _evaluate(TOLERANCE), _Seeded(fail_at=2), checkpoint=states.append
        )
    assert [s.step for s in states] == [1, 2] and not states[-1].finished
    finetune = _Seeded()
    again = sparsify(
        _model(), config, _evaluate(TOLERANCE), finetune, resume=_through_file(states[-1])
    )
    _same(full, again)
    assert finetune.labels == [f"reversed {CONV2}", f"reversed {CONV1}"]


def test_a_state_of_another_job_is_refused() -> None:
    states: list[SparsifyState] = []
    sparsify(_model(), CONFIGS["peak"], _evaluate(TOLERANCE), _Seeded(), checkpoint=states.append)
    state = states[0]
    with pytest.raises(PrunewiseError, match="method 'peak', not 'reversed'"):
        sparsify(_model(), CONFIGS["reversed_peak"], _evaluate({}), _Seeded(), resume=state)
    skip = SparsifyConfig(method="peak", max_rounds=4, skip=(CONV1,))
    with pytest.raises(PrunewiseError, match="does not fit this model and skip list"):
        sparsify(_model(), skip, _evaluate({}), _Seeded(), resume=state)
    with pytest.raises(PrunewiseError, match="not a sparsify state"):
        SparsifyState.from_payload({"method": "peak"})
