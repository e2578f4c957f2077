"""The recursive LMs' trained parts as artefacts, like the prompts' (:mod:`.artefact`)::

    connector/                       neural recursion
      connector.safetensors          the connector MLP (float32 as trained)
      connector.json                 format, shape, the LM's identity, tokenizer, training
    recursive/                       textual recursion
      recursive.safetensors          pass 2's prompt (``second.prompt``), and pass 1's when it
                                     had one (``first.prompt``)
      recursive.json                 format, how candidates are drawn and joined, both prompts'
                                     shapes, the LM's identity, tokenizer, training

Never the frozen LM. Loading refuses an LM of another width or other weights than the one the
artefact was trained for (:func:`~.artefact.check_lm_fits`) and another tokenizer. Written
beside the target and renamed into place (:func:`fusion_ui.io.staging.write_artefact`).

:func:`load_frozen` opens any of the three kinds of folder (prompt, connector, recursive).
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import load_file
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusion_ui.compose.artefact import ModelIdentity, identify, tokenizer_fingerprint
from fusion_ui.compose.calm import check_vocab_fits
from fusion_ui.errors import IncompatibleModelsError, ModelSourceError, RecipeError
from fusion_ui.frozen.artefact import CONFIG_FILE as PROMPT_CONFIG_FILE
from fusion_ui.frozen.artefact import check_lm_fits, load_prompted
from fusion_ui.frozen.connector import Connector, ConnectorConfig, ConnectorLM
from fusion_ui.frozen.model import PromptedLM
from fusion_ui.frozen.prompts import FixedPrompt, PromptConfig
from fusion_ui.frozen.recursive import RecursionConfig, RecursiveLM
from fusion_ui.io.source import ModelSource
from fusion_ui.io.staging import check_artefact_target, read_artefact_json, write_artefact

VERSION = 1
CONNECTOR_FORMAT = "fusion_ui/frozen-connector"
CONNECTOR_TENSORS, CONNECTOR_CONFIG = "connector.safetensors", "connector.json"
RECURSIVE_FORMAT = "fusion_ui/frozen-recursive"
RECURSIVE_TENSORS, RECURSIVE_CONFIG = "recursive.safetensors", "recursive.json"
CONNECTOR_METHOD = "neural recursive LM (Levine et al. 2022, arXiv 2204.10019)"
RECURSIVE_METHOD = "textual recursive LM (Levine et al. 2022, arXiv 2204.10019)"

ArtefactKind = Literal["prompt", "connector", "recursive"]
ARTEFACT_FILES: dict[ArtefactKind, str] = {
    "prompt": PROMPT_CONFIG_FILE,
    "connector": CONNECTOR_CONFIG,
    "recursive": RECURSIVE_CONFIG,
}
ARTEFACT_KINDS: tuple[ArtefactKind, ...] = tuple(ARTEFACT_FILES)


def artefact_kind(folder: str | os.PathLike[str]) -> ArtefactKind:
    """Which trained part ``folder`` holds, from the JSON file in it."""
    path = Path(folder).expanduser()
    for kind, name in ARTEFACT_FILES.items():
        if (path / name).is_file():
            return kind
    names = ", ".join(ARTEFACT_FILES.values())
    raise ModelSourceError(
        f"{path} holds no prompt.json (nor any of {names}): give the folder written by "
        "`fusion-ui frozen train`"
    )


@dataclass(frozen=True)
class ConnectorInfo:
    """``connector.json``, read back."""

    connector: ConnectorConfig
    lm: ModelIdentity
    tokenizer_sha256: str
    training: dict[str, Any]


@dataclass(frozen=True)
class RecursiveInfo:
    """``recursive.json``, read back."""

    recursion: RecursionConfig
    second: PromptConfig  # pass 2's prompt
    first: PromptConfig | None  # pass 1's prompt (None: pass 1 is the LM alone)
    lm: ModelIdentity
    tokenizer_sha256: str
    training: dict[str, Any]


def _state(module: nn.Module, prefix: str = "") -> dict[str, torch.Tensor]:
    return {prefix + k: v.detach().to("cpu").contiguous() for k, v in module.state_dict().items()}


def save_connector(
    model: ConnectorLM,
    folder: str | os.PathLike[str],
    *,
    tokenizer: PreTrainedTokenizerBase,
    lm_source: ModelSource | None = None,
    training: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model``'s connector (never the LM) into ``folder``, atomically."""
    target = Path(folder).expanduser().absolute()
    check_artefact_target(target, force=force, marker=CONNECTOR_CONFIG, kind="connector")
    info = {
        "format": CONNECTOR_FORMAT,
        "version": VERSION,
        "method": CONNECTOR_METHOD,
        "connector": model.config.to_dict(),
        "lm": asdict(identify(model.lm, lm_source)),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "training": training or {},
    }
    return write_artefact(target, _state(model.connector), info, force=force,
                          tensors_file=CONNECTOR_TENSORS, config_file=CONNECTOR_CONFIG,
                          format=CONNECTOR_FORMAT, kind="connector")  # fmt: skip


def save_recursive(
    model: RecursiveLM,
    folder: str | os.PathLike[str],
    *,
    lm_source: ModelSource | None = None,
    training: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write the textual recursion's prompts and settings (never the LM) into ``folder``.

    Pass 1 may be the LM alone or the LM behind a plain prompt (an ID-PT pass 1 would need its
    encoder recorded too: not supported)."""
    target = Path(folder).expanduser().absolute()
    check_artefact_target(target, force=force, marker=RECURSIVE_CONFIG, kind="recursive LM")
    first = model.first
    if isinstance(first, PromptedLM) and not isinstance(first.prompt, FixedPrompt):
        raise RecipeError(
            "a saved recursive LM's pass 1 is the LM alone or a plain prompt, not ID-PT"
        )
    if not isinstance(model.second.prompt, FixedPrompt):
        raise RecipeError("a saved recursive LM's pass 2 is a plain prompt")
    tensors = _state(model.second.prompt, "second.")
    if isinstance(first, PromptedLM):
        tensors.update(_state(first.prompt, "first."))
    info = {
        "format": RECURSIVE_FORMAT,
        "version": VERSION,
        "method": RECURSIVE_METHOD,
        "recursion": model.recursion.to_dict(),
        "second": model.second.config.to_dict(),
        "first": first.config.to_dict() if isinstance(first, PromptedLM) else None,
        "lm": asdict(identify(model.lm, lm_source)),
        "tokenizer_sha256": tokenizer_fingerprint(model.tokenizer),
        "training": training or {},
    }
    return write_artefact(target, tensors, info, force=force, tensors_file=RECURSIVE_TENSORS,
                          config_file=RECURSIVE_CONFIG, format=RECURSIVE_FORMAT,
                          kind="recursive LM")  # fmt: skip


def _read_json(folder: str | os.PathLike[str], name: str, fmt: str) -> tuple[Path, dict]:
    return read_artefact_json(folder, config_file=name, format=fmt, version=VERSION, kind=fmt,
                              made_by="fusion-ui frozen train")


def read_connector_info(folder: str | os.PathLike[str]) -> ConnectorInfo:
    file, data = _read_json(folder, CONNECTOR_CONFIG, CONNECTOR_FORMAT)
    try:
        return ConnectorInfo(
            connector=ConnectorConfig.from_dict(data["connector"]),
            lm=ModelIdentity(**data["lm"]),
            tokenizer_sha256=str(data["tokenizer_sha256"]),
            training=dict(data.get("training") or {}),
        )
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise ModelSourceError(f"{file} cannot be read ({exc}); train the connector again") from exc


def read_recursive_info(folder: str | os.PathLike[str]) -> RecursiveInfo:
    file, data = _read_json(folder, RECURSIVE_CONFIG, RECURSIVE_FORMAT)
    try:
        first = data.get("first")
        return RecursiveInfo(
            recursion=RecursionConfig.from_dict(data["recursion"]),
            second=PromptConfig.from_dict(data["second"]),
            first=None if first is None else PromptConfig.from_dict(first),
            lm=ModelIdentity(**data["lm"]),
            tokenizer_sha256=str(data["tokenizer_sha256"]),
            training=dict(data.get("training") or {}),
        )
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise ModelSourceError(
            f"{file} cannot be read ({exc}); train the recursive LM again"
        ) from exc


def _check_tokenizer(tokenizer: PreTrainedTokenizerBase, want: str, folder: object) -> None:
    if tokenizer_fingerprint(tokenizer) != want:
        raise IncompatibleModelsError(
            f"the tokenizer given is not the one the artefact in {folder} was trained with; "
            "load the LM's own tokenizer files"
        )


def _load_state(folder: str | os.PathLike[str], name: str) -> dict[str, torch.Tensor]:
    file = Path(folder).expanduser() / name
    try:
        return load_file(file)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {file}: {exc}; train it again") from exc


def _fill(module: nn.Module, state: dict[str, torch.Tensor], folder: object) -> None:
    try:
        module.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelSourceError(f"the tensors in {folder} do not match its JSON: {exc}") from exc


def attach_connector(
    folder: str | os.PathLike[str], lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> ConnectorLM:
    """``lm`` run twice through the saved connector of ``folder``."""
    info = read_connector_info(folder)
    check_vocab_fits(lm, tokenizer, "language")
    check_lm_fits(info.lm, info.connector.d_model, lm, what="connector")
    _check_tokenizer(tokenizer, info.tokenizer_sha256, folder)
    connector = Connector(info.connector)
    _fill(connector, _load_state(folder, CONNECTOR_TENSORS), folder)
    return ConnectorLM(lm, connector)


def attach_recursive(
    folder: str | os.PathLike[str], lm: PreTrainedModel, tokenizer: PreTrainedTokenizerBase
) -> RecursiveLM:
    """``lm`` as the saved textual recursion of ``folder`` (pass 1, then pass 2's prompt)."""
    info = read_recursive_info(folder)
    check_vocab_fits(lm, tokenizer, "language")
    check_lm_fits(info.lm, info.second.d_model, lm, what="recursive LM")
    _check_tokenizer(tokenizer, info.tokenizer_sha256, folder)
    state = _load_state(folder, RECURSIVE_TENSORS)

    def prompt(config: PromptConfig, prefix: str) -> PromptedLM:
        fixed = FixedPrompt(config, torch.zeros(config.length, config.d_model))
        part = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
        _fill(fixed, part, folder)
        return PromptedLM(lm, fixed.to(lm.device))

    first: nn.Module = lm if info.first is None else prompt(info.first, "first.")
    return RecursiveLM(first, prompt(info.second, "second."), tokenizer, info.recursion)


def load_frozen(
    lm: str | os.PathLike[str],
    folder: str | os.PathLike[str],
    *,
    encoder: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[nn.Module, PreTrainedTokenizerBase]:
    """LM + any saved frozen-LM part (a prompt, a connector or a textual recursion), ready for
    generation and evals, and the LM's tokenizer. The folder is read first, so a wrong one
    fails before any model loads."""
    kind = artefact_kind(folder)
    if kind == "prompt":
        return load_prompted(lm, folder, encoder=encoder, device=device, dtype=dtype)
    if encoder is not None:
        raise RecipeError(f"a {kind} reads no encoder; drop --encoder")
    (read_connector_info if kind == "connector" else read_recursive_info)(folder)
    from fusion_ui.device import resolve_device
    from fusion_ui.evals.run import load_causal_lm
    from fusion_ui.io.source import resolve_model

    source = resolve_model(lm)
    model, tokenizer = load_causal_lm(str(source.path), device=resolve_device(device), dtype=dtype)
    attach = attach_connector if kind == "connector" else attach_recursive
    return attach(folder, model, tokenizer), tokenizer
