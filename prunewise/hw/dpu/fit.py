"""Fit the DPU model's free constants to published throughput; score by leaving rows out.

The reference files list end-to-end fps of torchvision architectures on boards, with 1 thread
and multi-thread ("mt": the thread count is not published; prunewise takes 2 threads per DPU
core). The fit minimises the squared log error of the modelled fps over all rows it is given
(scipy's least_squares, bounded); `leave_one_out` fits without each row (one architecture, or
one pruned variant of it) in turn and predicts it, so every figure it reports is of a model the
fit never saw.

By default the fit takes two built-in files: `REFERENCE_CSV` (six unpruned architectures) and
`PRUNED_CSV` (the zoo's pruned ResNet-50s and EfficientNet-B0). A row whose architecture has
ops the DPU cannot run (host fallback, e.g. EfficientNet's SiLU) is not fitted on, since the
host cost per element is an assumption no row pins: it is predicted with the constants fitted
on all other rows. Rows of a `validation` file are never fitted on either.

A pruned row (`pruned_ratio` > 0) names the unpruned torchvision architecture and the zoo's
GOPs; the zoo does not publish its channel counts, so `reference_ops` stands in a uniform plan
(`prunewise.prune.uniform_plan`, residual-tied channels kept, as channel pruning of residual
networks usually does) whose GOPs match the published figure.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from prunewise.errors import PrunewiseError
from prunewise.hw.dpu.config import Board, Calibration
from prunewise.hw.dpu.model import fps
from prunewise.hw.dpu.ops import DPUOp, dpu_ops
from prunewise.models.bring import on_meta

__all__ = [
    "FREE",
    "PRUNED_CSV",
    "REFERENCE_CSV",
    "FitReport",
    "Reference",
    "Scored",
    "fit_calibration",
    "fit_report",
    "leave_one_out",
    "mt_threads",
    "read_reference",
    "reference_ops",
]

REFERENCE_CSV = Path(__file__).with_name("dpu_reference.csv")
"""Published fps (Vitis AI model zoo) of six unpruned architectures."""

PRUNED_CSV = Path(__file__).with_name("dpu_reference_pruned.csv")
"""Published fps of the zoo's pruned ResNet-50s and of EfficientNet-B0."""

FREE: tuple[str, ...] = (
    "efficiency", "overhead_us", "host_ms", "bandwidth_efficiency", "port_efficiency",
)  # fmt: skip
_BOUNDS = {
    "efficiency": (0.2, 1.0),
    "overhead_us": (0.0, 500.0),
    "host_ms": (0.0, 10.0),
    "bandwidth_efficiency": (0.05, 1.0),
    "port_efficiency": (0.05, 1.0),
}
_START = {
    "efficiency": 0.7,
    "overhead_us": 20.0,
    "host_ms": 0.3,
    "bandwidth_efficiency": 0.5,
    "port_efficiency": 0.6,
}


_NO_AUX = {"aux_logits": False, "init_weights": False}
"""Builder arguments of the torchvision Inceptions: no auxiliary classifier (inference has
none), no weight init (not needed, and slow for Inception-V3)."""


@dataclass(frozen=True)
class Reference:
    """One architecture's published fps, keyed by (board, "1t" or "mt")."""

    name: str
    torchvision: str
    input_size: int
    gops: float
    fps: dict[tuple[str, str], float]
    pruned_ratio: float = 0.0  # the zoo's nominal pruning ratio; 0 for an unpruned model

    @property
    def label(self) -> str:
        """The architecture, with its pruning ratio when pruned ("resnet50 pruned 0.5")."""
        if self.pruned_ratio:
            return f"{self.torchvision} pruned {self.pruned_ratio:g}"
        return self.torchvision

    @property
    def elements(self) -> int:
        """Input elements of one frame (3 x size x size)."""
        return 3 * self.input_size**2


def mt_threads(board: Board) -> int:
    """Threads taken for a published multi-thread figure: 2 per DPU core."""
    return 2 * board.cores


def read_reference(path: str | Path) -> list[Reference]:
    """The rows of a reference CSV (`#` lines are comments; columns <board>_fps_<1t|mt>)."""
    path = Path(path)
    try:
        lines = [ln for ln in path.read_text().splitlines() if ln and not ln.startswith("#")]
        rows = [
            {(k or "").strip(): v.strip() if isinstance(v, str) else "" for k, v in row.items()}
            for row in csv.DictReader(lines)
        ]  # cells as written, without the spaces around them; missing cells empty
    except FileNotFoundError as exc:
        raise PrunewiseError(f"reference file {path} does not exist") from exc
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PrunewiseError(f"reference file {path} is not a UTF-8 CSV file ({exc})") from exc
    if not rows or "torchvision" not in rows[0]:
        raise PrunewiseError(f"{path} has no rows with a torchvision column")
    out = []
    for number, row in enumerate(rows, start=1):
        where = f"{path} data row {number} ({row.get('zoo_name') or row.get('torchvision')})"
        figures = {}
        for key, value in row.items():
            parts = key.split("_fps_") if key else []
            if len(parts) == 2 and value:
                figures[(parts[0].lower(), parts[1])] = _number(value, key, where, low=0)
        out.append(
            Reference(
                row.get("zoo_name") or row["torchvision"],
                row["torchvision"],
                int(_number(row.get("input") or "224", "input", where, low=0, whole=True)),
                _number(row.get("gops") or "0", "gops", where, low=0, zero=True),
                figures,
                _number(row.get("pruned_ratio") or "0", "pruned_ratio", where, low=0, high=1,
                        zero=True),
            )
        )  # fmt: skip
    return out


def _number(
    text: str,
    key: str,
    where: str,
    *,
    low: float,
    high: float = math.inf,
    zero: bool = False,
    whole: bool = False,
) -> float:
    """A CSV cell as a finite number in (low, high) (`low` itself with `zero`), an integer with
    `whole`. Raises PrunewiseError naming the file, row and column."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    ok = math.isfinite(value) and (low < value or (zero and value == low)) and value < high
    if not ok or (whole and value != int(value)):
        bound = f">= {low:g}" if zero else f"> {low:g}"
        kind = "an integer" if whole else "a number"
        limit = f" and < {high:g}" if math.isfinite(high) else ""
        raise PrunewiseError(f"{where}: {key} must be {kind} {bound}{limit}, got {text!r}")
    return value


def reference_ops(ref: Reference) -> list[DPUOp]:
    """The DPU ops of the torchvision architecture of a reference row (weights not needed);
    for a pruned row, of the uniform plan whose GOPs match the row's (`_pruned_to`)."""
    import torchvision

    if ref.torchvision not in torchvision.models.list_models(module=torchvision.models):
        raise PrunewiseError(f"torchvision has no classification model {ref.torchvision!r}")
    builder = torchvision.models.get_model_builder(ref.torchvision)
    kwargs = _NO_AUX if ref.torchvision in ("googlenet", "inception_v3") else {}
    shape = (3, ref.input_size, ref.input_size)
    if ref.pruned_ratio:
        return _pruned_to(builder(weights=None, **kwargs).eval(), shape, ref.gops)
    return dpu_ops(on_meta(lambda: builder(weights=None, **kwargs)).eval(), shape)


def _gop(ops: Sequence[DPUOp]) -> float:
    return sum(o.gop for o in ops if o.kind in ("conv", "dwconv", "fc"))


_MOST = 0.95
"""The largest share of each group's channels a stand-in plan removes."""
_GOP_TOLERANCE = 0.03
"""How near a stand-in plan's GOPs come to a pruned row's: the zoo publishes them with two or
three significant figures (4.1G, 17.67G)."""


def _pruned_to(model: torch.nn.Module, shape: tuple[int, int, int], gops: float) -> list[DPUOp]:
    """The ops of `model` pruned by a uniform plan (tied channels kept) to `gops` GOP within
    1 %, found by bisection on the ratio, else the nearest within `_GOP_TOLERANCE`. Raises
    PrunewiseError, with the GOPs the uniform plans reach, when no ratio comes that near."""
    from prunewise.graph import build_channel_graph
    from prunewise.prune.policy import uniform_plan
    from prunewise.prune.surgery import apply_plan

    graph = build_channel_graph(model, shape)
    lo, hi, ops = 0.0, _MOST, dpu_ops(model, shape)
    full = _gop(ops)
    if gops <= 0 or full < gops:
        raise PrunewiseError(f"a pruned row needs 0 < gops <= the unpruned {full:.2f}")

    def pruned(ratio: float) -> list[DPUOp]:
        plan = uniform_plan(graph, ratio, prune_tied=False, importance="l1")
        return dpu_ops(apply_plan(model, plan), shape)

    best = ops
    for _ in range(20):
        ratio = (lo + hi) / 2
        ops = pruned(ratio)
        best = min(best, ops, key=lambda o: abs(_gop(o) / gops - 1))
        if abs(_gop(ops) / gops - 1) <= 0.01:
            return ops
        lo, hi = (ratio, hi) if _gop(ops) > gops else (lo, ratio)
    if abs(_gop(best) / gops - 1) <= _GOP_TOLERANCE:
        return best  # many groups of one size change their counts at the same ratio
    name, least = type(model).__name__, _gop(pruned(_MOST))
    if least > gops:
        raise PrunewiseError(
            f"no uniform plan of {name} has {gops:g} GOP: its uniform plans reach {least:.2f} "
            f"to {full:.2f} GOP (channels tied by a residual addition "
            "stay, and so do the groups of a grouped convolution)"
        )
    raise PrunewiseError(
        f"no uniform plan of {name} comes within {_GOP_TOLERANCE:.0%} of {gops:g} GOP "
        f"(closest: {_gop(best):.3g})"
    )


def _predict(ops: list[DPUOp], board: Board, elements: int, mode: str) -> float:
    threads = 1 if mode == "1t" else mt_threads(board)
    return fps(ops, board, elements, threads)


def _with(board: Board, values: Sequence[float], free: Sequence[str]) -> Board:
    cal = replace(board.calibration, **dict(zip(free, (float(v) for v in values), strict=True)))
    return board.with_calibration(cal)


Case = tuple[Reference, list[DPUOp]]


def _residuals(
    values: np.ndarray, cases: Sequence[Case], boards: dict[str, Board], free: Sequence[str]
) -> np.ndarray:
    out = []
    for ref, ops in cases:
        for (board, mode), measured in ref.fps.items():
            if board in boards:
                b = _with(boards[board], values, free)
                out.append(math.log(_predict(ops, b, ref.elements, mode) / measured))
    return np.asarray(out)


def fit_calibration(
    cases: Sequence[Case], boards: dict[str, Board], free: Sequence[str] = FREE
) -> Calibration:
    """Constants that minimise the squared log error of fps over `cases` on `boards`."""
    unknown = [f for f in free if f not in _BOUNDS]
    if unknown:
        raise PrunewiseError(f"cannot fit {unknown}; free constants: {list(_BOUNDS)}")
    if not cases:
        raise PrunewiseError("the fit needs at least one reference row")
    lo = [_BOUNDS[f][0] for f in free]
    hi = [_BOUNDS[f][1] for f in free]
    start = [_START[f] for f in free]
    from scipy.optimize import least_squares  # imported when a fit runs, not with the module

    result = least_squares(_residuals, start, bounds=(lo, hi), args=(cases, boards, free))
    first = next(iter(boards.values()))
    names = ", ".join(ref.label for ref, _ in cases)
    cal = replace(first.calibration, **dict(zip(free, map(float, result.x), strict=True)))
    return replace(cal, source=f"least-squares fit of log fps on {names} ({', '.join(boards)})")


@dataclass(frozen=True)
class Scored:
    """One held-out prediction."""

    model: str
    board: str
    mode: str
    measured: float
    predicted: float
    pruned: bool = False
    held: str = "left out"  # of a leave-one-out fit; HOST_OPS or "validation": never fitted

    @property
    def group(self) -> str:
        """The summary row it counts in: "unpruned, left out", "pruned, validation", ..."""
        return f"{'pruned' if self.pruned else 'unpruned'}, {self.held}"

    @property
    def error(self) -> float:
        """Relative error of the prediction (predicted / measured - 1)."""
        return self.predicted / self.measured - 1.0


def _scores(
    ref: Reference, ops: list[DPUOp], boards: dict[str, Board], cal: Calibration, held: str
) -> list[Scored]:
    """The row's published figures on `boards` against the model with constants `cal`."""
    return [
        Scored(ref.label, board, mode, measured,
               _predict(ops, boards[board].with_calibration(cal), ref.elements, mode),
               bool(ref.pruned_ratio), held)
        for (board, mode), measured in sorted(ref.fps.items())
        if board in boards
    ]  # fmt: skip


def leave_one_out(
    cases: Sequence[Case], boards: dict[str, Board], free: Sequence[str] = FREE
) -> list[Scored]:
    """Fit without each row (architecture or pruned variant) in turn and predict it on every
    board and mode."""
    if len(cases) < 2:
        raise PrunewiseError("leave-one-out needs at least two architectures")
    scored = []
    for i, (ref, ops) in enumerate(cases):
        cal = fit_calibration([c for j, c in enumerate(cases) if j != i], boards, free)
        scored += _scores(ref, ops, boards, cal, "left out")
    return scored


@dataclass(frozen=True)
class FitReport:
    """Leave-one-model-out scores of a reference file and the scores of validation rows
    predicted with the constants fitted on all reference rows; their median and worst |error|
    per group (pruned or not, left out or validation), board and thread mode; the constants."""

    scored: tuple[Scored, ...]
    summary: tuple[tuple[str, str, str, float, float], ...]  # group, board, mode, median %, worst %
    calibration: Calibration
    reference: str = ""  # the reference file (the built-in copy by its package path)

    def calibration_toml(self) -> str:
        """The fitted constants as a [calibration] table of a devices file."""
        lines = [f"{k} = {v!r}" for k, v in self.calibration.__dict__.items() if k != "source"]
        return "[calibration]\n" + "\n".join(lines) + f'\nsource = "{self.calibration.source}"\n'

    def to_dict(self) -> dict[str, object]:
        """JSON-ready: every held-out prediction, the summary rows and the constants."""
        keys = ("group", "board", "threads", "median_pct", "worst_pct")
        return {
            "reference": self.reference,
            "scored": [{**s.__dict__, "group": s.group, "error": s.error} for s in self.scored],
            "summary": [dict(zip(keys, r, strict=True)) for r in self.summary],
            "calibration": self.calibration.__dict__,
        }


HOST_OPS = "not fitted (host ops)"
"""How a row whose architecture has host-fallback ops is held: predicted, never fitted on."""


def _where(path: str | Path) -> str:
    for builtin in (REFERENCE_CSV, PRUNED_CSV):
        if Path(path).resolve() == builtin.resolve():
            return f"prunewise/hw/dpu/{builtin.name} (built in)"
    return str(path)


def _paths(files: str | Path | Sequence[str | Path] | None) -> list[str | Path]:
    if files is None:
        return []
    return [files] if isinstance(files, str | Path) else list(files)


def _rows(files: str | Path | Sequence[str | Path] | None) -> list[tuple[str, Reference]]:
    """The rows of the files, each with where it was read ("FILE data row N")."""
    return [
        (f"{_where(f)} data row {number}", ref)
        for f in _paths(files)
        for number, ref in enumerate(read_reference(f), start=1)
    ]


def _distinct(
    rows: Sequence[tuple[str, Reference]], fitted: Sequence[tuple[str, Reference]] = ()
) -> list[Reference]:
    """The rows, refusing a repeat (the same zoo name, input size and pruning ratio): counted
    twice, it would weigh double in the fit and its medians; and refusing a row of `fitted`
    given again with the same figures (a validation row the fit has seen)."""
    seen: dict[tuple[str, int, float], str] = {}
    for where, ref in rows:
        key = (ref.name, ref.input_size, ref.pruned_ratio)
        if key in seen:
            raise PrunewiseError(
                f"{ref.name} ({ref.input_size} px) is given twice ({seen[key]} and {where}); "
                "keep one row per model"
            )
        seen[key] = where
    same_arch: dict[tuple[str, int, float], list[tuple[str, Reference]]] = {}
    for where, ref in fitted:
        same_arch.setdefault((ref.torchvision, ref.input_size, ref.pruned_ratio), []).append(
            (where, ref)
        )
    for where, ref in rows:  # by architecture: a user's file names rows by torchvision only
        key = (ref.torchvision, ref.input_size, ref.pruned_ratio)
        for fit_where, fit in same_arch.get(key, []):
            if ref.fps and all(fit.fps.get(k) == v for k, v in ref.fps.items()):
                raise PrunewiseError(
                    f"{ref.label} ({ref.input_size} px) in {where} is a reference row too "
                    f"({fit_where}, the same figures): a row the fit has seen does not "
                    "validate it"
                )
    return [ref for _, ref in rows]


def fit_report(
    reference: str | Path | Sequence[str | Path],
    boards_of: Callable[[str], Board],
    validation: str | Path | Sequence[str | Path] | None = None,
) -> FitReport:
    """Score the DPU model on the `reference` files' rows by leaving each row out, fit on all
    of them, and predict with that fit the rows it cannot fit on (architectures with host ops)
    and the `validation` files' rows (never fitted); `boards_of` gives a board by name
    (`Devices.board`). Raises PrunewiseError for an unreadable file, a pruned row no uniform
    plan reaches, or fewer than two rows to fit on."""
    fitted = _rows(reference)
    refs, checks = _distinct(fitted), _distinct(_rows(validation), fitted)
    boards = {n: boards_of(n) for n in sorted({b for r in refs + checks for b, _ in r.fps})}
    rows = [(r, reference_ops(r)) for r in refs]
    cases = [(r, ops) for r, ops in rows if not any(o.kind == "cpu" for o in ops)]
    scored = leave_one_out(cases, boards)
    cal = fit_calibration(cases, boards)
    for ref, ops in rows:
        if any(o.kind == "cpu" for o in ops):
            scored += _scores(ref, ops, boards, cal, HOST_OPS)
    for ref in checks:
        scored += _scores(ref, reference_ops(ref), boards, cal, "validation")
    summary = []
    for group in dict.fromkeys(s.group for s in scored):
        for board in boards:
            for mode in ("1t", "mt"):
                errs = [
                    abs(s.error)
                    for s in scored
                    if s.group == group and s.board == board and s.mode == mode
                ]
                if errs:
                    row = (group, board, mode, 100 * statistics.median(errs), 100 * max(errs))
                    summary.append(row)
    where = "; ".join(_where(f) for f in _paths(reference))
    if checks:
        where += "; validation: " + "; ".join(_where(f) for f in _paths(validation))
    return FitReport(tuple(scored), tuple(summary), cal, where)
