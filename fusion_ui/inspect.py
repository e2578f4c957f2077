"""Compatibility of a base and its fine-tunes, from headers and configs alone.

Everything a merge needs to know before reading any tensor data: same architecture family,
same tensor names and shapes (every mismatch is reported, not the first), vocabulary rows that
can be cropped to the base's, dtype differences.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

import torch

if TYPE_CHECKING:
    import pandas as pd

from fusion_ui.errors import RecipeError
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.tensor_names import num_layers_from_config

Severity = Literal["error", "warning", "info"]
Verdict = Literal["compatible", "compatible with adjustments", "incompatible"]


@dataclass(frozen=True)
class Finding:
    """One thing the check noticed, with what it means for a merge."""

    severity: Severity
    model: str  # the model concerned (its reference)
    message: str


@dataclass(frozen=True)
class ModelSummary:
    """What ``fusion-ui inspect`` shows for one model."""

    ref: str
    path: str
    model_type: str | None
    architecture: str
    dtype: str  # dtype holding most parameters
    params: int
    tensors: int
    size_bytes: int
    vocab_size: int | None
    layers: int | None
    format: str  # safetensors or pytorch
    shards: int
    tokenizer: bool


@dataclass
class CompatibilityReport:
    """Result of checking fine-tunes against a base (the first model is the reference)."""

    models: list[ModelSummary]  # reference first
    findings: list[Finding] = field(default_factory=list)
    # model index (in ``models``) -> names of tensors whose extra vocabulary rows get cropped
    vocab_crops: dict[int, list[str]] = field(default_factory=dict)

    @property
    def errors(self) -> list[Finding]:
        return [f for f in self.findings if f.severity == "error"]

    @property
    def verdict(self) -> Verdict:
        if self.errors:
            return "incompatible"
        if any(f.severity == "warning" for f in self.findings):
            return "compatible with adjustments"
        return "compatible"

    def table(self) -> pd.DataFrame:
        """One row per model, for a UI table or CLI print."""
        import pandas as pd  # only tables need it; merges should not pay its import

        rows = []
        for i, m in enumerate(self.models):
            rows.append({
                "role": "base" if i == 0 else f"model {i}",
                "model": m.ref,
                "type": m.model_type or "?",
                "architecture": m.architecture,
                "dtype": m.dtype,
                "params": _human(m.params),
                "tensors": m.tensors,
                "size": _human_bytes(m.size_bytes),
                "vocab": m.vocab_size if m.vocab_size is not None else "?",
                "layers": m.layers if m.layers is not None else "?",
                "shards": m.shards,
                "tokenizer": "yes" if m.tokenizer else "no",
            })
        return pd.DataFrame(rows)

    def format(self, max_findings: int = 25) -> str:
        """Plain text for a terminal: the table, the findings, the verdict."""
        lines = [self.table().to_string(index=False), ""]
        shown = self.findings[:max_findings]
        for f in shown:
            lines.append(f"[{f.severity}] {f.model}: {f.message}")
        if len(self.findings) > len(shown):
            lines.append(f"... and {len(self.findings) - len(shown)} more findings")
        lines.append(f"verdict: {self.verdict}")
        return "\n".join(lines)


def summarize(ckpt: Checkpoint) -> ModelSummary:
    return ModelSummary(
        ref=ckpt.ref,
        path=str(ckpt.path),
        model_type=ckpt.model_type,
        architecture=", ".join(ckpt.architectures) or "?",
        dtype=_dtype_name(ckpt.main_dtype),
        params=ckpt.num_params,
        tensors=len(ckpt.tensors),
        size_bytes=ckpt.nbytes,
        vocab_size=ckpt.vocab_size(),
        layers=num_layers_from_config(ckpt.config),
        format=ckpt.format,
        shards=len(ckpt.files),
        tokenizer=bool(ckpt.tokenizer_files()),
    )


def check_compatibility(reference: Checkpoint, others: Sequence[Checkpoint]) -> CompatibilityReport:
    """Compare each model with the reference (normally the base) using headers only."""
    report = CompatibilityReport(models=[summarize(reference), *(summarize(m) for m in others)])
    ref_vocab = reference.vocab_size()
    if not reference.tokenizer_files():
        report.findings.append(Finding(
            "warning", reference.ref,
            "has no tokenizer files; an export takes its tokenizer from `tokenizer_source`",
        ))
    for idx, model in enumerate(others, start=1):
        _compare(report, idx, reference, model, ref_vocab)
    return report


def _compare(
    report: CompatibilityReport, idx: int, ref: Checkpoint, model: Checkpoint, ref_vocab: int | None
) -> None:
    add = report.findings.append
    who = model.ref
    if ref.model_type and model.model_type and ref.model_type != model.model_type:
        add(Finding("error", who, f"architecture family {model.model_type!r} differs from the base's {ref.model_type!r}"))
    elif ref.architectures and model.architectures and ref.architectures != model.architectures:
        add(Finding("warning", who, f"architecture {model.architectures} differs from the base's {ref.architectures}"))
    missing = [n for n in ref.tensors if n not in model.tensors]
    extra = [n for n in model.tensors if n not in ref.tensors]
    if missing:
        add(Finding("error", who, f"lacks {len(missing)} tensor(s) the base has: {_names(missing)}"))
    if extra:
        add(Finding("error", who, f"has {len(extra)} tensor(s) the base lacks: {_names(extra)}"))
    model_vocab = model.vocab_size()
    crops: list[str] = []
    for name, rt in ref.tensors.items():
        mt = model.tensors.get(name)
        if mt is None or mt.shape == rt.shape:
            continue
        vocab_like = (
            len(mt.shape) == len(rt.shape) >= 1
            and mt.shape[1:] == rt.shape[1:]
            and (rt.shape[0] == ref_vocab or mt.shape[0] == model_vocab)
        )
        if vocab_like and mt.shape[0] > rt.shape[0]:
            crops.append(name)
        elif vocab_like:
            add(Finding("error", who, f"{name}: {mt.shape[0]} vocabulary rows, fewer than the base's {rt.shape[0]}; it cannot be cropped"))
        else:
            add(Finding("error", who, f"{name}: shape {tuple(mt.shape)} differs from the base's {tuple(rt.shape)}"))
    if crops:
        report.vocab_crops[idx] = crops
        add(Finding(
            "warning", who,
            f"vocabulary of {model_vocab} rows vs the base's {ref_vocab}: {', '.join(crops)} will be "
            f"cropped to the base's rows (recipe `vocab: crop_to_base`, as mergekit does); the added "
            f"tokens' embeddings are dropped, so export with the base's tokenizer",
        ))
    elif model_vocab != ref_vocab and model_vocab is not None and ref_vocab is not None:
        add(Finding("info", who, f"config vocab_size {model_vocab} differs from the base's {ref_vocab}"))
    if model.main_dtype != ref.main_dtype:
        add(Finding(
            "info", who,
            f"stored as {_dtype_name(model.main_dtype)}, the base as {_dtype_name(ref.main_dtype)}; "
            f"merging computes in float32 and writes the recipe's dtype",
        ))


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f", ... (+{len(names) - limit})" if len(names) > limit else "")


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _human_bytes(n: int) -> str:
    for unit, size in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


def inspect_models(refs: Sequence[str]) -> CompatibilityReport:
    """Open the models (first = base) from headers and configs and check them."""
    if isinstance(refs, str) or not refs:
        raise RecipeError("give the models to inspect as a list, the base first: inspect_models([base, ft1, ...])")
    opened: list[Checkpoint] = []
    try:
        for ref in refs:
            opened.append(Checkpoint.open(ref))
        return check_compatibility(opened[0], opened[1:])
    finally:
        for c in opened:
            c.close()
