"""The fine-grained pruning methods, driven by fake evaluate/finetune callbacks."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunewise.errors import PrunewiseError
from prunewise.graph import trace
from prunewise.prune.fine import (
    Evaluate,
    SparsifyConfig,
    SparsifyResult,
    attach_masks,
    dense_weights,
    group_nonzeros,
    magnitude_mask,
    make_permanent,
    overall_sparsity,
    scan_layer,
    sparsify,
)
from prunewise.prune.fine.masks import round_count

CONV1, CONV2, FC1, FC2 = "features.0", "features.2", "classifier.0", "classifier.2"
LAYERS = (CONV1, CONV2, FC1, FC2)
X = torch.randn(2, 4, 6, 6, generator=torch.Generator().manual_seed(1))


class _Tiny(nn.Module):
    """2 conv + 2 linear."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(4, 8, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
        )
        self.classifier = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _model() -> nn.Module:
    torch.manual_seed(0)
    return _Tiny()


def _zeros(model: nn.Module, name: str) -> float:
    weight = model.get_submodule(name).weight
    return float((weight == 0).sum()) / weight.numel()


def _evaluate(tolerance: dict[str, float], seen: list[int] | None = None) -> Evaluate:
    """Accuracy 90, minus 5 points for each layer sparser than its tolerance (+0.01)."""

    def evaluate(model: nn.Module) -> float:
        if seen is not None:
            seen.append(id(model))
        with torch.no_grad():
            model(X)  # a real forward: the prune hooks recompute the masked weights
        over = [n for n, t in tolerance.items() if _zeros(model, n) > t + 0.01]
        return 90.0 - 5.0 * len(over)

    return evaluate


class _Finetune:
    """Records stage labels and attached masks; one SGD step on random data per call."""

    def __init__(self, on_call: Callable[[], None] | None = None) -> None:
        self.labels: list[str] = []
        self.masked: list[set[str]] = []
        self.on_call = on_call

    def __call__(self, model: nn.Module, label: str) -> None:
        self.labels.append(label)
        self.masked.append({n for n, m in model.named_modules() if hasattr(m, "weight_mask")})
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        opt.zero_grad()
        model(torch.randn(3, 4, 6, 6)).square().mean().backward()
        opt.step()
        if self.on_call is not None:
            self.on_call()


def _exact(ratio: float, numel: int) -> float:
    return round_count(ratio * numel) / numel


def _assert_zeros_match(result: SparsifyResult) -> None:
    """Pruned positions are exactly zero in the final model; kept ones are not (and moved)."""
    original = _model()
    for name, keep in result.masks.items():
        weight = result.model.get_submodule(name).weight
        assert isinstance(weight, nn.Parameter)
        assert bool((weight[~keep] == 0).all())
        assert bool((weight[keep] != 0).all())
        assert not torch.equal(weight[keep], original.get_submodule(name).weight[keep])


def test_magnitude_per_layer_ratios_are_exact_and_stay_zero_after_finetune() -> None:
    tolerance = {CONV1: 0.5}
    finetune = _Finetune(on_call=lambda: tolerance.update({CONV1: 0.9}))
    config = SparsifyConfig(sparsity=0.8, fc_sparsity=0.9)
    lines: list[str] = []
    result = sparsify(_model(), config, _evaluate(tolerance), finetune, log=lines.append)
    assert finetune.labels == ["magnitude"]
    assert finetune.masked == [set(LAYERS)]
    for name in LAYERS:
        ratio = 0.9 if name.startswith("classifier") else 0.8
        numel = result.model.get_submodule(name).weight.numel()
        assert _zeros(result.model, name) == _exact(ratio, numel)
        assert torch.equal(
            result.masks[name], magnitude_mask(_model().get_submodule(name).weight, ratio)
        )
    _assert_zeros_match(result)
    (stage,) = result.stages
    assert stage.layers == LAYERS
    assert (stage.acc_before, stage.acc_pruned, stage.acc_finetuned) == (90.0, 85.0, 90.0)
    assert stage.sparsity[FC1] == _exact(0.9, 64 * 32)
    assert result.scans == ()
    assert len(lines) == 1 and lines[0].startswith("magnitude: 4 layer(s)")
    assert current_is_plain(result.model)


def current_is_plain(model: nn.Module) -> bool:
    """No pruning hooks or weight_orig left on any module."""
    return not any(hasattr(m, "weight_orig") or m._forward_pre_hooks for m in model.modules())


def test_input_model_is_untouched() -> None:
    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    sparsify(model, SparsifyConfig(), _evaluate({}), _Finetune())
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_global_scope_uses_one_threshold() -> None:
    result = sparsify(
        _model(), SparsifyConfig(sparsity=0.7, scope="global"), _evaluate({}), _Finetune()
    )
    original = _model()
    total = sum(m.numel() for m in result.masks.values())
    assert overall_sparsity(result.masks) == round_count(0.7 * total) / total
    ratios = {n: _zeros(result.model, n) for n in LAYERS}
    assert len(set(ratios.values())) > 1  # not the same ratio in every layer
    pruned = torch.cat(
        [original.get_submodule(n).weight[~k].abs() for n, k in result.masks.items()]
    )
    kept = torch.cat([original.get_submodule(n).weight[k].abs() for n, k in result.masks.items()])
    assert pruned.max() <= kept.min()


def test_balanced_groups_keep_exactly_k_and_linear_groups_run_along_inputs() -> None:
    config = SparsifyConfig(method="balanced", sparsity=0.5, fc_sparsity=0.75, group=4, axis="out")
    result = sparsify(_model(), config, _evaluate({}), _Finetune())
    for name in (CONV1, CONV2):
        assert bool((group_nonzeros(result.masks[name], 4, "out") == 2).all())
    for name in (FC1, FC2):
        assert bool((group_nonzeros(result.masks[name], 4, "in") == 1).all())
        # along outputs the Linear groups are not balanced: "out" is not used for Linear
        assert not bool((group_nonzeros(result.masks[name], 4, "out") == 1).all())
    _assert_zeros_match(result)


def test_nm_every_group_of_m_keeps_n() -> None:
    finetune = _Finetune()
    result = sparsify(_model(), SparsifyConfig(method="nm", n=2, m=4), _evaluate({}), finetune)
    assert finetune.labels == ["nm"]
    for name in LAYERS:
        assert bool((group_nonzeros(result.masks[name], 4, "in") == 2).all())
    assert overall_sparsity(result.masks) == 0.5
    _assert_zeros_match(result)


def test_nm_names_the_layers_its_short_groups_keep_dense() -> None:
    depthwise = nn.Conv2d(8, 8, 3, groups=8, padding=1)  # groups of one input channel
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), depthwise, nn.Conv2d(8, 16, 1))
    lines: list[str] = []
    config = SparsifyConfig(method="nm", n=2, m=4)
    sparsify(model, config, _evaluate({}), _Finetune(), log=lines.append)
    assert any(re.search(r"1 layer\(s\) kept dense.*: 2$", line) for line in lines), lines


class _StdConv(nn.Conv2d):
    """A weight-standardised convolution: it convolves with a weight computed from its own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        w = (w - w.mean((1, 2, 3), keepdim=True)) / (w.std((1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding)


def test_layers_masks_cannot_sit_on_are_named_with_their_share() -> None:
    model = nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), _StdConv(8, 16, 3))
    assert dense_weights(model) == {"2.weight": 1152}
    lines: list[str] = []
    result = sparsify(
        model, SparsifyConfig(sparsity=0.5), _evaluate({}), _Finetune(), log=lines.append
    )
    assert set(result.masks) == {"0"}
    share = f"{1152 / (288 + 1152):.0%}"
    assert any(f"1 weight tensor(s) stay dense, {share} of the weights" in ln for ln in lines)
    assert any(": 2.weight; masks sit on Conv1d, Conv2d and Linear" in ln for ln in lines)
    # the same layer as a checkpoint stores it (F.conv2d on its own parameter), a transposed
    # and a 3-D convolution: no mask sits on them either
    functional = trace(model, layers=False)
    assert dense_weights(functional) == {"2.weight": 1152}
    other = nn.Sequential(nn.ConvTranspose2d(4, 8, 2), nn.Conv3d(1, 2, 1), nn.Linear(3, 3))
    assert dense_weights(other) == {"0.weight": 128, "1.weight": 2}


def test_reversed_prunes_classifier_first_and_keeps_earlier_masks() -> None:
    finetune = _Finetune()
    config = SparsifyConfig(method="reversed", sparsity=0.6, fc_sparsity=0.9)
    result = sparsify(_model(), config, _evaluate({}), finetune)
    order = [FC2, FC1, CONV2, CONV1]
    assert finetune.labels == [f"reversed {n}" for n in order]
    assert [s.layers for s in result.stages] == [(n,) for n in order]
    assert finetune.masked == [set(order[: i + 1]) for i in range(4)]
    for name in LAYERS:
        ratio = 0.9 if name.startswith("classifier") else 0.6
        assert _zeros(result.model, name) == _exact(ratio, result.masks[name].numel())
    assert [s.overall for s in result.stages] == sorted(s.overall for s in result.stages)
    _assert_zeros_match(result)


def test_reversed_with_peak_scans_each_layer_before_its_stage() -> None:
    tolerance = {CONV1: 0.5, CONV2: 0.7, FC1: 0.9, FC2: 0.6}
    config = SparsifyConfig(method="reversed", peak=True)
    result = sparsify(_model(), config, _evaluate(tolerance), _Finetune())
    assert [(s.round, s.layer) for s in result.scans] == [
        (1, FC2),
        (2, FC1),
        (3, CONV2),
        (4, CONV1),
    ]
    for scan in result.scans:
        assert scan.peak == tolerance[scan.layer]
        numel = result.masks[scan.layer].numel()
        assert _zeros(result.model, scan.layer) == _exact(scan.peak, numel)


def test_peak_finds_known_peaks_and_stops_when_none_grows() -> None:
    tolerance = {CONV1: 0.5, CONV2: 0.7, FC1: 0.9, FC2: 0.6}
    finetune = _Finetune()
    seen: list[int] = []
    lines: list[str] = []
    config = SparsifyConfig(method="peak", max_rounds=5)
    result = sparsify(_model(), config, _evaluate(tolerance, seen), finetune, log=lines.append)
    assert finetune.labels == ["peak round 1"]
    assert [s.round for s in result.scans] == [1] * 4 + [2] * 4
    assert {s.layer: s.peak for s in result.scans if s.round == 1} == tolerance
    assert all(s.peak == tolerance[s.layer] for s in result.scans)
    for scan in result.scans[4:]:  # round 2 scans only ratios from the current one up
        assert scan.points[0][0] == tolerance[scan.layer]
    for name, tol in tolerance.items():
        assert _zeros(result.model, name) == _exact(tol, result.masks[name].numel())
    assert len(set(seen)) == 1  # every evaluation, scans included, on the same working model
    assert "peak round 1: features.0 peak 0.50 (acc 90.0 -> 90.0)" in lines
    _assert_zeros_match(result)


@pytest.mark.parametrize(("max_rounds", "stages", "scan_rounds"), [(5, 3, 4), (2, 2, 2)])
def test_peak_repeats_while_fine_tuning_raises_peaks(
    max_rounds: int, stages: int, scan_rounds: int
) -> None:
    tolerance = dict.fromkeys(LAYERS, 0.5)

    def grow() -> None:  # each fine-tune lets every layer take 0.1 more, up to 0.7
        tolerance.update({n: min(round(t + 0.1, 2), 0.7) for n, t in tolerance.items()})

    finetune = _Finetune(on_call=grow)
    config = SparsifyConfig(method="peak", max_rounds=max_rounds)
    result = sparsify(_model(), config, _evaluate(tolerance), finetune)
    assert finetune.labels == [f"peak round {r}" for r in range(1, stages + 1)]
    assert max(s.round for s in result.scans) == scan_rounds
    peaks = [s.peak for s in result.scans if s.layer == CONV2]
    assert peaks == [0.5, 0.6, 0.7, 0.7][:scan_rounds]
    assert _zeros(result.model, CONV2) == _exact(peaks[stages - 1], 8 * 16 * 9)


def test_skip_layers_stay_dense() -> None:
    finetune = _Finetune()
    config = SparsifyConfig(method="reversed", skip=(CONV1, FC1))
    result = sparsify(_model(), config, _evaluate({}), finetune)
    assert set(result.masks) == {CONV2, FC2}
    assert finetune.labels == [f"reversed {FC2}", f"reversed {CONV2}"]
    assert _zeros(result.model, CONV1) == 0.0 and _zeros(result.model, FC1) == 0.0
    assert _zeros(result.model, CONV2) == _exact(0.8, 8 * 16 * 9)


def test_unknown_skip_name_is_refused_with_the_known_layers() -> None:
    with pytest.raises(
        PrunewiseError, match=r"skip names no prunable layer: \['conv9'\].*features\.0"
    ):
        sparsify(_model(), SparsifyConfig(skip=("conv9",)), _evaluate({}), _Finetune())


@pytest.mark.parametrize("masked", [False, True])
def test_scan_restores_weights_bit_for_bit(masked: bool) -> None:
    model = _model()
    if masked:
        attach_masks(model, {CONV2: magnitude_mask(model.features[2].weight, 0.3)})
    model(X)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight_before = model.features[2].weight.clone()
    seen: list[float] = []

    def evaluate(m: nn.Module) -> float:
        m(X)
        seen.append(_zeros(m, CONV2))
        return 50.0

    points = scan_layer(model, CONV2, [0.3, 0.6, 0.9], evaluate)
    assert points == [(0.3, 50.0), (0.6, 50.0), (0.9, 50.0)]
    assert seen == [_exact(r, 1152) for r in (0.3, 0.6, 0.9)]
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(model.features[2].weight, weight_before)
    model(X)
    assert torch.equal(model.features[2].weight, weight_before)


def test_result_and_config_to_dict_are_json() -> None:
    config = SparsifyConfig(method="peak", max_rounds=1)
    result = sparsify(_model(), config, _evaluate({CONV1: 0.5}), _Finetune())
    data = json.loads(json.dumps(result.to_dict()))
    assert data["scans"][0]["points"][0] == [0.3, 90.0]
    assert data["stages"][0]["label"] == "peak round 1"
    assert set(data["layer_sparsity"]) == set(LAYERS)
    assert data["overall_sparsity"] == overall_sparsity(result.masks)
    assert json.loads(json.dumps(config.to_dict()))["scan_ratios"][-1] == 0.98


def test_a_finetune_that_drops_the_masks_is_caught() -> None:
    def bad(model: nn.Module, label: str) -> None:
        make_permanent(model)

    with pytest.raises(PrunewiseError, match="finetune removed the masks"):
        sparsify(_model(), SparsifyConfig(), _evaluate({}), bad)


def test_evaluate_must_return_a_number() -> None:
    with pytest.raises(PrunewiseError, match="evaluate must return an accuracy"):
        sparsify(_model(), SparsifyConfig(), lambda m: None, _Finetune())  # type: ignore[arg-type,return-value]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"sparsity": 1.2}, r"sparsity \(--sparsity\) must be a number in \[0, 1\), got 1.2"),
        ({"sparsity": True}, r"sparsity \(--sparsity\) must be a number in \[0, 1\), got True"),
        ({"sparsity": float("nan")}, r"sparsity \(--sparsity\) must be a number in \[0, 1\)"),
        ({"fc_sparsity": -0.1}, r"fc_sparsity .* must be a number in \[0, 1\) or unset, got -0.1"),
        (
            {"method": "lottery"},
            "method .* must be one of magnitude, reversed, peak, balanced, nm, got 'lottery'",
        ),
        ({"scope": "net"}, "scope .* must be one of layer, global, got 'net'"),
        ({"method": "nm", "scope": "global"}, "scope='global' applies only to method 'magnitude'"),
        ({"scope": "global", "fc_sparsity": 0.9}, "leave fc_sparsity unset"),
        (
            {"method": "nm", "fc_sparsity": 0.9},
            r"fc_sparsity \(--fc-sparsity\) = 0.9 has no effect with method 'nm'",
        ),
        ({"group": 1}, r"group \(--group\) must be an integer in \[2, 65536\], got 1"),
        ({"axis": "kernel"}, "axis .* must be one of in, out, flat, got 'kernel'"),
        ({"n": 5, "m": 4}, "N:M needs 1 <= N <= M, got 5:4"),
        ({"n": 1, "m": 1}, r"sparsify.m must be an integer in \[2, 65536\], got 1"),
        (
            {"method": "balanced", "sparsity": 0.97},
            "balanced sparsity 0.97 keeps 0 weights per group of 16",
        ),
        ({"method": "peak", "peak": True}, "peak=True applies only to method 'reversed'"),
        ({"delta": -1}, r"delta \(--delta\) must be a number in \[0, 100\], got -1"),
        ({"scan_ratios": ()}, r"scan_ratios must be a non-empty list of numbers in \(0, 1\)"),
        ({"scan_ratios": (0.5, 1.0)}, r"scan_ratios must be .* in \(0, 1\), got \(0.5, 1.0\)"),
        (
            {"method": "peak", "scan_ratios": (0.5, 0.3)},
            r"scan_ratios must be sorted increasing without repeats, got \(0.5, 0.3\)",
        ),
        ({"max_rounds": 0}, r"max_rounds .* must be an integer in \[1, 1000\], got 0"),
        ({"skip": "features.0"}, r"skip \(--skip\) must be a list of strings, got 'features.0'"),
        ({"skip": (3,)}, r"skip \(--skip\) must be a list of strings, got \(3,\)"),
    ],
)
def test_config_errors_name_the_option(options: dict, message: str) -> None:
    with pytest.raises(PrunewiseError, match=message):
        SparsifyConfig(**options)


@pytest.mark.parametrize(
    "given",
    [
        {"method": "magnitude", "n": 2, "m": 4},
        {"method": "magnitude", "group": 16},
        {"method": "nm", "sparsity": 0.8},
        {"method": "reversed", "delta": 0.5},
    ],
)
def test_an_option_given_at_its_default_is_refused_where_the_method_ignores_it(
    given: dict,
) -> None:
    SparsifyConfig(**given)  # a value equal to the default cannot be told apart when made
    with pytest.raises(PrunewiseError, match="has no effect with method"):
        SparsifyConfig.from_given(given)


def test_options_the_method_reads_are_accepted_when_given() -> None:
    given = {"method": "reversed", "peak": True, "delta": 0.5, "scan_ratios": (0.5, 0.9)}
    assert SparsifyConfig.from_given(given) == SparsifyConfig(**given)
    assert SparsifyConfig.from_given({"method": "peak", "max_rounds": 2}).max_rounds == 2
    assert SparsifyConfig.from_given({"method": "nm", "n": 1, "m": 4, "axis": "out"}).n == 1


def test_config_turns_lists_into_tuples() -> None:
    config = SparsifyConfig(method="peak", scan_ratios=[0.5, 0.9], skip=["features.0"])  # type: ignore[arg-type]
    assert config.scan_ratios == (0.5, 0.9) and config.skip == ("features.0",)
    assert hash(config) == hash(
        SparsifyConfig(method="peak", scan_ratios=(0.5, 0.9), skip=("features.0",))
    )


@pytest.mark.parametrize(
    ("options", "named"),
    [
        ({"method": "nm", "sparsity": 0.3}, "sparsity (--sparsity) = 0.3 has no effect with"),
        ({"method": "peak", "fc_sparsity": 0.9}, "fc_sparsity (--fc-sparsity) = 0.9 has no effect"),
        ({"method": "magnitude", "axis": "out"}, "axis (--axis) = 'out' has no effect"),
        ({"method": "magnitude", "n": 1, "m": 4}, "n:m (--nm) = 1:4 has no effect"),
        ({"method": "nm", "group": 8}, "group (--group) = 8 has no effect with method 'nm'"),
        ({"method": "magnitude", "delta": 1.0}, "delta (--delta) = 1.0 has no effect"),
        ({"method": "reversed", "scan_ratios": (0.5,)}, "scan_ratios = (0.5,) has no effect"),
        ({"method": "reversed", "peak": True, "max_rounds": 2}, "'reversed with peak'"),
        ({"method": "reversed", "peak": True, "sparsity": 0.5}, "sparsity (--sparsity) = 0.5"),
    ],
)
def test_an_option_the_method_ignores_is_refused(options: dict, named: str) -> None:
    with pytest.raises(PrunewiseError, match=re.escape(named)):
        SparsifyConfig(**options)
