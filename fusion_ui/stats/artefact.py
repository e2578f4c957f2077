"""Statistics as their own artefact: ``statistics.safetensors`` + ``statistics.json``::

    stats/
      statistics.safetensors   one float32 tensor per weight (Fisher) or per distinct linear input (Gram)
      statistics.json          format, kind, the model's identity, the dataset's sha256, counts

Computed once per model and dataset (``fusion-ui stats``), reused by every merge that names the
folder, and shareable: the JSON says whom they were computed for (the same
:class:`~fusion_ui.compose.artefact.ModelIdentity` CALM's bridges record), so a merge given
another model, or a changed one, refuses them (:mod:`fusion_ui.stats.check`).

Written through :func:`fusion_ui.io.staging.write_artefact` (a hidden working folder renamed into
place: a failure or a cancel leaves nothing half-written). Read lazily: :func:`read_statistic`
opens the file and reads one tensor, so a merge never holds more than one tensor's statistics
per model.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError, safe_open

from fusion_ui.errors import ModelSourceError

FORMAT = "fusion_ui/merge-statistics"
VERSION = 1
TENSORS_FILE = "statistics.safetensors"
CONFIG_FILE = "statistics.json"
Kind = Literal["fisher", "gram"]
KINDS: tuple[str, ...] = ("fisher", "gram")


@dataclass(frozen=True)
class StatsInfo:
    """``statistics.json``, read back."""

    folder: Path
    kind: Kind
    model: dict[str, Any]  # asdict(ModelIdentity) of the model they were computed on
    dataset: dict[str, Any]  # source, sha256, examples
    tokens: int  # fisher: answer tokens scored; gram: non-padding tokens (rows of X)
    examples: int
    shapes: dict[str, tuple[int, ...]]  # stored tensor name -> shape
    aliases: dict[str, str] = field(default_factory=dict)  # gram: weight name -> stored name
    # gram: weights stored (in, out), the transpose of nn.Linear's (transformers' Conv1D, GPT-2)
    transposed: frozenset[str] = frozenset()
    fisher_norm: float | None = None  # fisher: sqrt(Σ ‖F‖²) over every tensor (for normalising)
    settings: dict[str, Any] = field(default_factory=dict)  # how they were computed (informational)

    def names(self) -> set[str]:
        """Every weight name these statistics cover (aliases included)."""
        return set(self.shapes) | set(self.aliases)

    def stored_name(self, name: str) -> str | None:
        """The tensor holding ``name``'s statistics, or None when there is none."""
        key = self.aliases.get(name, name)
        return key if key in self.shapes else None


def save_statistics(
    folder: str | os.PathLike[str],
    tensors: dict[str, torch.Tensor],
    *,
    kind: Kind,
    model: dict[str, Any],
    dataset: dict[str, Any],
    tokens: int,
    examples: int,
    aliases: dict[str, str] | None = None,
    transposed: tuple[str, ...] | list[str] = (),
    settings: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write the statistics into ``folder`` atomically; an existing folder is refused unless
    ``force`` and it holds earlier statistics (or is empty)."""
    from fusion_ui.io.staging import write_artefact

    if kind not in KINDS:
        raise ValueError(f"unknown statistics kind {kind!r}; expected one of {KINDS}")
    target = Path(folder).expanduser().absolute()
    stored = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    info: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "kind": kind,
        "model": model,
        "dataset": dataset,
        "tokens": int(tokens),
        "examples": int(examples),
        "settings": settings or {},
    }
    if kind == "fisher":
        info["definition"] = (
            "mean over examples of (d loss_example / d theta)^2, loss = mean answer-token NLL"
        )
        info["fisher_norm"] = math.sqrt(
            sum(float(t.double().square().sum()) for t in stored.values())
        )
    else:
        info["definition"] = "sum over non-padding tokens of x x^T of each nn.Linear input x"
        info["aliases"] = dict(aliases or {})
        info["transposed"] = sorted(transposed)  # Conv1D weights: (in, out), W x -> x W
    return write_artefact(
        target,
        stored,
        info,
        force=force,
        tensors_file=TENSORS_FILE,
        config_file=CONFIG_FILE,
        format=FORMAT,
        kind=f"{kind} statistics",
    )


def check_target(folder: str | os.PathLike[str], *, force: bool) -> None:
    """Raise now if ``folder`` may not be written (before a long pass, not after it)."""
    from fusion_ui.io.staging import check_artefact_target

    check_artefact_target(
        Path(folder).expanduser().absolute(), force=force, marker=CONFIG_FILE, kind="statistics"
    )


def read_statistics_info(folder: str | os.PathLike[str]) -> StatsInfo:
    """``statistics.json`` of ``folder`` (and the tensor headers), checked for format and version."""
    path = Path(folder).expanduser()
    file = path / CONFIG_FILE
    if not file.is_file():
        raise ModelSourceError(
            f"{path} holds no {CONFIG_FILE}: give a folder written by `fusion-ui stats`"
        )
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT:
            raise ModelSourceError(
                f"{file} is not a fusion_ui statistics file (format {data.get('format')!r})"
            )
        if int(data.get("version", 0)) > VERSION:
            raise ModelSourceError(
                f"{file} is version {data['version']}; this fusion_ui reads up to {VERSION}: upgrade fusion_ui"
            )
        with safe_open(str(path / TENSORS_FILE), "pt", device="cpu") as f:
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
        return StatsInfo(
            folder=path,
            kind=data["kind"],
            model=dict(data["model"]),
            dataset=dict(data["dataset"]),
            tokens=int(data["tokens"]),
            examples=int(data["examples"]),
            shapes=shapes,
            aliases=dict(data.get("aliases") or {}),
            transposed=frozenset(data.get("transposed") or ()),
            fisher_norm=float(data["fisher_norm"]) if data.get("fisher_norm") is not None else None,
            settings=dict(data.get("settings") or {}),
        )
    except (json.JSONDecodeError, KeyError, TypeError, ValueError, OSError, SafetensorError) as exc:
        raise ModelSourceError(
            f"{path} cannot be read as statistics ({exc}); compute them again with `fusion-ui stats`"
        ) from exc


def read_statistic(
    folder: str | os.PathLike[str],
    name: str,
    *,
    rows: int | None = None,
    device: torch.device | str = "cpu",
) -> torch.Tensor | None:
    """One weight's statistics as float32 on ``device`` (None when they have none), read from
    disk now (the JSON for aliases, then one tensor); ``rows`` crops a Fisher's first dimension
    (a vocabulary cropped to the base's). The folder was checked by :mod:`.check` beforehand."""
    path = Path(folder).expanduser()
    try:
        data = json.loads((path / CONFIG_FILE).read_text(encoding="utf-8"))
        key = dict(data.get("aliases") or {}).get(name, name)
        with safe_open(str(path / TENSORS_FILE), "pt", device="cpu") as f:
            if key not in f.keys():  # noqa: SIM118 - a safetensors handle, not a dict
                return None
            part = f.get_slice(key)
            shape = part.get_shape()
            if rows is not None and data.get("kind") == "fisher" and shape and shape[0] > rows:
                t = part[:rows]
            else:
                t = f.get_tensor(key)
    except (OSError, ValueError, SafetensorError) as exc:
        raise ModelSourceError(
            f"cannot read the statistics of {name!r} from {path}: {exc}; compute them again with `fusion-ui stats`"
        ) from exc
    return t.to(device=device, dtype=torch.float32)


def is_transposed(folder: str | os.PathLike[str], name: str) -> bool:
    """Whether the weight ``name`` is stored (in, out) in the model these Gram statistics are of
    (transformers' Conv1D), so that its Gram multiplies the weight from the left, not its
    transpose. Read from disk now, like :func:`read_statistic`."""
    file = Path(folder).expanduser() / CONFIG_FILE
    try:
        return name in (json.loads(file.read_text(encoding="utf-8")).get("transposed") or ())
    except (OSError, ValueError) as exc:
        raise ModelSourceError(
            f"cannot read {file}: {exc}; compute the statistics again with `fusion-ui stats`"
        ) from exc


def identity_dict(identity: Any) -> dict[str, Any]:
    """A :class:`~fusion_ui.compose.artefact.ModelIdentity` as the JSON records it."""
    return asdict(identity)


def read_fisher_norm(folder: str | os.PathLike[str]) -> float:
    """``sqrt(Σ ‖F‖²)`` over every tensor of a Fisher folder, as saved (for normalising)."""
    file = Path(folder).expanduser() / CONFIG_FILE
    try:
        return float(json.loads(file.read_text(encoding="utf-8"))["fisher_norm"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelSourceError(
            f"cannot read fisher_norm from {file}: {exc}; compute the statistics again"
        ) from exc
