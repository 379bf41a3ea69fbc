"""`prunewise sparsify`: fine-grained pruning with fine-tuning, sparse storage, PE-array model.

One folder per job: the method's stages and scans, the sparse model, its compressed file (read
back and checked), the storage table and the PE-array table, and a report. After every step of
the method the state goes to `state.pt`; `resume=True` continues from it with the same options
(each stage's fine-tuning is seeded by its label, so a resumed job equals an uninterrupted one).
"""

from __future__ import annotations

import io
import logging
import zlib
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from prunewise.data import DataBundle, make_loader
from prunewise.data.tensors import derive_seed
from prunewise.errors import PrunewiseError
from prunewise.hw import PEArray, layer_cycles, total
from prunewise.io import (
    atomic_write_bytes,
    atomic_write_json,
    load_state,
    read_json,
    save_checkpoint,
)
from prunewise.pipeline.job import SPARSIFY_JOB, check_job_folder, claim_folder
from prunewise.prune.fine import (
    SparsifyConfig,
    SparsifyState,
    balanced_mask,
    mask_sparsity,
    pick_layers,
    prunable_weights,
    sparsify,
)
from prunewise.records import RunFolder, Scores
from prunewise.settings import Settings, same_as, setting, spec_of
from prunewise.storage import Spec, default_candidates, read_toc
from prunewise.storage.summary import model_weights, plan_storage, write_model
from prunewise.torchfile import torch_load
from prunewise.train import (
    TrainConfig,
    evaluate,
    pick_device,
    recalibrate_bn,
    recalibrated_bn,
    train,
)

__all__ = [
    "SparsifySettings",
    "check_sparsify_job",
    "layer_positions",
    "pe_comparison",
    "run_sparsify",
]

_VALUES = ("fp32", "int8", "codebook")
_STATE = "state.pt"
_RECORDS = ("sparsify", "storage", "pe_array")
# settings that may change between a job and its resumption (they do not change the result)
_FREE = ("progress", "device")


@dataclass(frozen=True)
class SparsifySettings(Settings):
    """Everything of a sparsify job besides the method: training, evaluation, storage, PEs."""

    section: ClassVar[str] = "sparsify"

    finetune_epochs: int = setting(
        1, "fine-tune epochs per stage", low=0, high=100_000, flag="--finetune-epochs"
    )
    lr: float = same_as(TrainConfig, "lr", help="fine-tune learning rate")
    scan_images: int | None = setting(
        None,
        "validation images for scans (unset: the whole validation split)",
        kind="int",
        low=1,
        high=10**9,
        flag="--scan-images",
        metavar="N",
    )
    bn_images: int = setting(
        1024,
        "re-estimate BatchNorm statistics on N training images before every accuracy the "
        "method measures (scans, stages); 0: off",
        low=0,
        high=10**9,
        flag="--bn-images",
        metavar="N",
    )
    batch_size: int = setting(128, "batch size", low=1, high=65536, flag="--batch-size")
    values: str = setting("int8", "stored weight values", choices=_VALUES, flag="--values")
    codebook_bits: int = setting(5, "codebook: q bits", low=1, high=8, flag="--codebook-bits")
    pes: int = setting(16, "PE-array model: P elements", low=1, high=65536, flag="--pes")
    group: int = setting(16, "PE-array model: group size g", low=1, high=65536)
    seed: int = same_as(TrainConfig, "seed")
    device: str = same_as(TrainConfig, "device")
    progress: bool = same_as(TrainConfig, "progress")

    @classmethod
    def from_given(cls, given: dict[str, Any]) -> SparsifySettings:
        """The settings of the options a user gave (field names to values), refusing a codebook
        size given for values without a codebook, even at its default value."""
        settings = cls(**given)
        if "codebook_bits" in given:
            settings.refuse_codebook_bits()
        return settings

    def check(self) -> None:
        """Refuse a codebook size for values that have no codebook (it would be ignored)."""
        default = next(f.default for f in fields(self) if f.name == "codebook_bits")
        if self.codebook_bits != default:
            self.refuse_codebook_bits()

    def refuse_codebook_bits(self) -> None:
        """Raise PrunewiseError when the values have no codebook (codebook_bits is ignored)."""
        if self.values != "codebook":
            raise PrunewiseError(
                f"{self.label('codebook_bits', spec_of(type(self), 'codebook_bits'))} = "
                f"{self.codebook_bits} has no effect with values {self.values!r} (it applies to "
                "'codebook'); leave it unset"
            )


def layer_positions(model: nn.Module, input_shape: tuple[int, ...]) -> dict[str, int]:
    """Output positions (H x W of the output; 1 for linear layers) of every conv/linear layer."""
    positions: dict[str, int] = {}
    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv1d | nn.Conv2d | nn.Linear):

            def hook(_m: nn.Module, _i: Any, out: torch.Tensor, name: str = name) -> None:
                positions[name] = int(np.prod(out.shape[2:])) if out.dim() > 2 else 1

            hooks.append(m.register_forward_hook(hook))
    device = next(model.parameters()).device
    try:
        with torch.no_grad():
            model.eval()(torch.zeros((1, *input_shape), device=device))
    finally:
        for h in hooks:
            h.remove()
    return positions


def storage_candidates(method: SparsifyConfig, settings: SparsifySettings) -> tuple[Spec, ...]:
    """Every storage format, plus the balanced layout of the job's own groups (--group and
    --axis of a balanced job, M and --axis of an N:M one) when it is not the default g = 16
    along input channels: the smallest format per layer can then be the masks' own."""
    specs = default_candidates(values=settings.values, codebook_bits=settings.codebook_bits)
    own = _own_groups(method)
    if own is None or own == (16, "in"):
        return specs
    group, axis = own
    values = {"values": settings.values, "codebook_bits": settings.codebook_bits}
    return (*specs, Spec("balanced", group=group, axis=axis, **values))


def pe_array_for(method: SparsifyConfig, settings: SparsifySettings) -> PEArray:
    """The PE array the job's masks are timed on: a balanced or N:M job's own groups (--group
    or M, along its --axis), so that its masks are compared with balanced ones of its layout;
    otherwise --group g (the array's group size) along input channels."""
    own = _own_groups(method)
    if own is not None and own[0] >= 2:
        return PEArray(pes=settings.pes, group=own[0], axis=own[1])
    return PEArray(pes=settings.pes, group=settings.group)


def _own_groups(method: SparsifyConfig) -> tuple[int, str] | None:
    """(group size, axis) of a balanced (--group) or N:M (M) job's masks, else None."""
    groups = {"balanced": method.group, "nm": method.m}
    return (groups[method.method], method.axis) if method.method in groups else None


def pe_comparison(
    masks: dict[str, torch.Tensor],
    weights: dict[str, torch.Tensor],
    positions: dict[str, int],
    array: PEArray,
) -> dict[str, Any]:
    """PE-array cycles of the masks against balanced masks of the same per-layer sparsity.

    A balanced mask keeps at least one weight per group, so a layer sparser than 1 - 1/g is
    compared with a balanced mask at 1 - 1/g (recorded as `balanced_sparsity`); a layer
    shorter than a group along the array's axis (a depthwise or one-channel convolution along
    input channels) keeps every weight of its one short group. The totals' `sparsity` (by
    weight count) say what was compared: equal when every layer could be balanced.
    """
    rows, unstructured, balanced = [], [], []
    for name, mask in masks.items():
        ratio = mask_sparsity(mask)
        axis = "flat" if mask.dim() == 2 else array.axis
        bal_ratio = min(ratio, 1.0 - 1.0 / array.group)
        bal = balanced_mask(weights[name], bal_ratio, group=array.group, axis=axis)
        u = layer_cycles(mask, array, positions[name])
        b = layer_cycles(bal, array, positions[name])
        unstructured.append(u)
        balanced.append(b)
        rows.append(
            {
                "name": name,
                "sparsity": ratio,
                "balanced_sparsity": mask_sparsity(bal),
                "unstructured": asdict(u),
                "balanced": asdict(b),
            }
        )
    tu, tb = total(unstructured), total(balanced)
    sizes = [masks[r["name"]].numel() for r in rows]
    weighted = {
        key: sum(r[key] * n for r, n in zip(rows, sizes, strict=True)) / max(1, sum(sizes))
        for key in ("sparsity", "balanced_sparsity")
    }
    return {
        "array": asdict(array),
        "layers": rows,
        "total": {
            "unstructured": {**asdict(tu), "sparsity": weighted["sparsity"]},
            "balanced": {**asdict(tb), "sparsity": weighted["balanced_sparsity"]},
        },
        "balanced_over_unstructured": tu.modelled / tb.modelled if tb.modelled else None,
    }


def _loaders(data: DataBundle, s: SparsifySettings) -> dict[str, DataLoader]:
    n = len(data.val) if s.scan_images is None else min(s.scan_images, len(data.val))
    g = torch.Generator().manual_seed(s.seed)
    subset = Subset(data.val, torch.randperm(len(data.val), generator=g)[:n].tolist())
    loaders = {
        "scan": make_loader(subset, 512, shuffle=False),
        "val": make_loader(data.val, 512, shuffle=False),
        "test": make_loader(data.test, 512, shuffle=False),
    }
    if s.bn_images:
        order = torch.randperm(len(data.train), generator=g)[: s.bn_images].tolist()
        loaders["bn"] = make_loader(Subset(data.train, order), 256, shuffle=False)
    return loaders


def _accuracies(model: nn.Module, loaders: dict[str, DataLoader], device: torch.device) -> Scores:
    val, test = (evaluate(model, loaders[s], device) for s in ("val", "test"))
    return Scores(val_score=val, test_score=test)


def _stored_accuracy(
    model: nn.Module, stored: dict[str, np.ndarray], loader: DataLoader, device: torch.device
) -> float:
    """Test accuracy with every weight replaced by what the compressed file holds."""
    copy = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for name, m in model.named_modules():
            if name in stored:
                m.weight.copy_(torch.from_numpy(stored[name]).to(m.weight))
    try:
        return evaluate(model, loader, device)
    finally:
        load_state(model, copy)


def _job(method: SparsifyConfig, settings: SparsifySettings) -> dict[str, Any]:
    """What config.json holds: the method and the settings."""
    return {"method": method.to_dict(), "settings": asdict(settings)}


def _same_as(job: dict[str, Any], out: Path) -> Callable[[dict[str, Any]], None]:
    """The check that a resumed job has the options it was started with (progress and device
    may change)."""

    def check(saved: dict[str, Any]) -> None:
        for part in ("method", "settings"):
            old, new = dict(saved.get(part, {})), job[part]
            for key in sorted(set(old) | set(new)):
                if key not in _FREE and old.get(key) != new.get(key):
                    raise PrunewiseError(
                        f"{out} was started with {part} {key}={old.get(key)!r}, not "
                        f"{new.get(key)!r}; resume with the options it was started with"
                    )

    return check


def check_sparsify_job(
    out: str | Path, method: SparsifyConfig, settings: SparsifySettings, resume: bool
) -> None:
    """Everything a sparsify job can check before it writes or loads data: its folder, a
    resumed job's options, and the device. Raises PrunewiseError naming the first problem."""
    folder = RunFolder(Path(out))
    check_job_folder(folder, SPARSIFY_JOB, resume=resume)
    if resume:
        _same_as(_job(method, settings), folder.root)(read_json(folder.config))
    pick_device(settings.device)


def _load_state(path: Path) -> SparsifyState | None:
    """The state saved after the last finished step, or None when there is none yet."""
    if not path.is_file():
        return None
    try:
        payload = torch_load(path)
    except PrunewiseError:
        raise
    except Exception as exc:  # any unreadable file gets the same advice
        raise PrunewiseError(
            f"{path} cannot be read ({type(exc).__name__}); delete it to redo the job's steps"
        ) from exc
    if not isinstance(payload, dict):
        raise PrunewiseError(f"{path} is not a sparsify state; delete it to redo the job's steps")
    return SparsifyState.from_payload(payload)


def _save_state(path: Path, state: SparsifyState) -> None:
    """Write the state atomically (a kill leaves the previous one)."""
    buffer = io.BytesIO()
    torch.save(state.to_payload(), buffer)
    atomic_write_bytes(path, buffer.getvalue())


def run_sparsify(
    model: nn.Module,
    input_shape: tuple[int, ...],
    data: DataBundle,
    method: SparsifyConfig,
    settings: SparsifySettings,
    out: str | Path,
    *,
    resume: bool = False,
) -> dict[str, Any]:
    """Sparsify `model` with `method`, then store, check, model and report it in `out`; the
    records by name (sparsify, storage, pe_array).

    `resume=True` continues a job in `out` that was started with the same options (a finished
    one is read back); without it, `out` must not hold a job yet. The folder is held while
    the job works (a second process is refused) and an attempt that fails writes failed.json.
    """
    folder = RunFolder(Path(out))
    job = _job(method, settings)
    pick_device(settings.device)  # before anything is written; claim_folder checks the rest
    pick_layers(model, method.skip)
    same = _same_as(job, folder.root)
    with claim_folder(folder, job, resume=resume, kind=SPARSIFY_JOB, same=same) as log:
        records = {name: folder.root / f"{name}.json" for name in _RECORDS}
        if not records["sparsify"].is_file():
            _sparsify(model, input_shape, data, method, settings, folder.root, log, resume)
        else:
            log.info("resume: the job had finished; nothing to do")
        return {name: read_json(path) for name, path in records.items()}


def _sparsify(
    model: nn.Module,
    input_shape: tuple[int, ...],
    data: DataBundle,
    method: SparsifyConfig,
    settings: SparsifySettings,
    out: Path,
    log: logging.Logger,
    resume: bool,
) -> None:
    state = _load_state(out / _STATE) if resume else None
    device = pick_device(settings.device)
    model = model.to(device)
    loaders = _loaders(data, settings)
    base = _accuracies(model, loaders, device)
    log.info(f"baseline: val {base.val_score:.2f} %, test {base.test_score:.2f} %")
    dense = {k: v.clone().cpu() for k, v in prunable_weights(model).items()}

    def finetune(m: nn.Module, label: str) -> None:
        seed = derive_seed(settings.seed, zlib.crc32(label.encode()))
        cfg = TrainConfig(
            epochs=settings.finetune_epochs,
            lr=settings.lr,
            seed=seed,
            device=str(device),
            progress=settings.progress,
        )
        loader = make_loader(data.train, settings.batch_size, shuffle=True, seed=seed)
        train(m, loader, cfg, desc=f"fine-tune ({label})")

    def score(m: nn.Module) -> float:
        if "bn" not in loaders:
            return evaluate(m, loaders["scan"], device)
        with recalibrated_bn(m, loaders["bn"], device, settings.seed):
            return evaluate(m, loaders["scan"], device)

    def checkpoint(state: SparsifyState) -> None:
        _save_state(out / _STATE, state)

    result = sparsify(
        model, method, score, finetune, log=log.info, checkpoint=checkpoint, resume=state
    )
    sparse = result.model
    if "bn" in loaders and recalibrate_bn(sparse, loaders["bn"], device, settings.seed):
        log.info(f"final model: BatchNorm statistics re-estimated on {len(loaders['bn'].dataset)} "
                 "training images, as every accuracy the method measured")  # fmt: skip
    final = _accuracies(sparse, loaders, device)
    save_checkpoint(out / "model.pt", sparse, input_shape=input_shape, meta={"stage": "sparsify"})
    weights, other = model_weights(sparse)
    summary = plan_storage(weights, other, candidates=storage_candidates(method, settings))
    size, stored, back = write_model(out / "model.pws", weights, summary)
    exact = all(np.array_equal(back[n], stored[n]) for n in weights)
    stored_acc = _stored_accuracy(sparse, back, loaders["test"], device)
    header = read_toc(out / "model.pws").header_bytes
    storage = {
        **summary.to_dict(),
        "file_bytes": size,
        "header_bytes": header,
        "counts_equal_file": size == header + sum(r.bytes for r in summary.layers),
        "read_back_exact": exact,
        **Scores(test_score=stored_acc).to_dict(),
    }
    positions = layer_positions(sparse, input_shape)
    masks = {n: (w != 0) for n, w in prunable_weights(sparse).items()}
    pe = pe_comparison(masks, dense, positions, pe_array_for(method, settings))
    record = {
        "baseline": base.to_dict(),
        "final": final.to_dict(),
        "stored_test_acc": stored_acc,
        **result.to_dict(),  # overall_sparsity first
    }
    atomic_write_json(out / "storage.json", storage)
    atomic_write_json(out / "pe_array.json", pe)
    atomic_write_json(out / "sparsify.json", record)  # last: the job is finished
    (out / _STATE).unlink(missing_ok=True)
    log.info(
        f"sparsified: test {final.test_score:.2f} % (stored {stored_acc:.2f} %), "
        f"{summary.dense_bytes:,} -> {summary.compressed_bytes:,} bytes ({summary.ratio:.1f}x), "
        f"PE array: balanced takes {1 / pe['balanced_over_unstructured']:.2f}x the job's cycles"
    )
