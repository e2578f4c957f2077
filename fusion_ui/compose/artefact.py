"""CALM's bridges as their own artefact: ``bridges.safetensors`` + ``bridges.json``.

The folder never holds the frozen models, only what was trained and whom it was trained for::

    bridges/
      bridges.safetensors   the bridges' tensors (float32 as trained)
      bridges.json          format, the two models' identities, layer pairs, dims, heads, training

A model's identity is where it came from (the reference as given, its folder, hub id) and two
fingerprints that do not depend on where it is: a hash of its architecture and a hash of a
sample of a few tensors (the embeddings, the first and last block), taken after rounding to
bfloat16 so that a float32 model and the same model loaded in bfloat16 agree. Loading refuses
bridges whose fingerprints do not match the models given (moved folders are fine).

The folder is written into a hidden working folder beside the target and renamed into place
(:mod:`fusion_ui.io.staging`): a failure or a cancel leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusion_ui.compose.bridges import BridgeConfig, Bridges
from fusion_ui.compose.calm import (
    CalmModel,
    check_same_tokenizer,
    check_vocab_fits,
    decoder_blocks,
    hidden_size,
)
from fusion_ui.errors import IncompatibleModelsError, ModelSourceError
from fusion_ui.io.source import ModelSource, resolve_model
from fusion_ui.io.staging import check_artefact_target, read_artefact_json, write_artefact

FORMAT = "fusion_ui/calm-bridges"
VERSION = 1
TENSORS_FILE = "bridges.safetensors"
CONFIG_FILE = "bridges.json"
_SAMPLE = 4096  # elements sampled per fingerprinted tensor


@dataclass(frozen=True)
class ModelIdentity:
    """Who a model is, as ``bridges.json`` records it."""

    ref: str  # the model as it was named (folder or hub id)
    path: str | None  # its resolved local folder, when it came from one
    hub_id: str | None  # set when it came through the hub cache
    model_type: str  # config.model_type
    num_layers: int  # decoder blocks
    hidden_size: int
    vocab_size: int  # rows of the input embeddings
    config_sha256: str  # architecture fingerprint (model type, widths, depths, heads, vocab)
    weights_sha256: str  # fingerprint of a sample of a few tensors (bfloat16-rounded)

    def describe(self) -> str:
        return f"{self.ref} ({self.model_type}, {self.num_layers} blocks, width {self.hidden_size})"


def _sample_bytes(t: torch.Tensor) -> bytes:
    flat = t.detach().reshape(-1)
    step = max(1, flat.numel() // _SAMPLE)
    sample = flat[::step][:_SAMPLE].to("cpu", torch.bfloat16).contiguous()
    return sample.view(torch.int16).numpy().tobytes()


def weights_fingerprint(model: PreTrainedModel) -> str:
    """sha256 of a strided sample of the input embeddings and the first and last block's tensors."""
    blocks = decoder_blocks(model)
    h = hashlib.sha256()
    named = [("embed", model.get_input_embeddings().weight)]
    for label, block in (("first", blocks[0]), ("last", blocks[-1])):
        named += [(f"{label}.{n}", p) for n, p in sorted(block.named_parameters())]
    for name, tensor in named:
        h.update(f"{name}:{tuple(tensor.shape)};".encode())
        h.update(_sample_bytes(tensor))
    return h.hexdigest()


def config_fingerprint(model: PreTrainedModel) -> str:
    cfg = model.config
    fields = {
        "model_type": getattr(cfg, "model_type", ""),
        "num_layers": len(decoder_blocks(model)),
        "hidden_size": hidden_size(model),
        "vocab_size": model.get_input_embeddings().num_embeddings,
        "heads": getattr(cfg, "num_attention_heads", None),
        "kv_heads": getattr(cfg, "num_key_value_heads", None),
        "intermediate_size": getattr(cfg, "intermediate_size", None),
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


def identify(model: PreTrainedModel, source: ModelSource | None = None) -> ModelIdentity:
    ref = (
        source.ref
        if source is not None
        else str(getattr(model.config, "_name_or_path", "") or "in-memory model")
    )
    path = str(source.path) if source is not None else (ref if Path(ref).is_dir() else None)
    return ModelIdentity(
        ref=ref,
        path=path,
        hub_id=source.hub_id if source is not None else None,
        model_type=str(getattr(model.config, "model_type", "")),
        num_layers=len(decoder_blocks(model)),
        hidden_size=hidden_size(model),
        vocab_size=model.get_input_embeddings().num_embeddings,
        config_sha256=config_fingerprint(model),
        weights_sha256=weights_fingerprint(model),
    )


def tokenizer_fingerprint(tokenizer: PreTrainedTokenizerBase) -> str:
    vocab = sorted(tokenizer.get_vocab().items())
    key = json.dumps([vocab, tokenizer.bos_token_id, tokenizer.eos_token_id])
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class BridgesInfo:
    """``bridges.json``, read back."""

    bridges: BridgeConfig
    anchor: ModelIdentity
    augment: ModelIdentity
    tokenizer_sha256: str
    training: dict[str, Any]  # settings and outcome of the run that made them (informational)


def save_bridges(
    model: CalmModel,
    folder: str | os.PathLike[str],
    *,
    tokenizer: PreTrainedTokenizerBase,
    anchor_source: ModelSource | None = None,
    augment_source: ModelSource | None = None,
    training: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model``'s bridges (never the frozen models) into ``folder``, atomically.

    An existing ``folder`` is refused unless ``force`` and it is earlier bridges (or empty).
    """
    target = Path(folder).expanduser().absolute()
    check_artefact_target(target, force=force, marker=CONFIG_FILE, kind="bridges")
    info = {
        "format": FORMAT,
        "version": VERSION,
        "method": "CALM (Bansal et al. 2024, arXiv 2401.02412)",
        "bridges": model.config.to_dict(),
        "anchor": asdict(identify(model.anchor, anchor_source)),
        "augment": asdict(identify(model.augment, augment_source)),
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "training": training or {},
    }
    tensors = {
        k: v.detach().to("cpu").contiguous() for k, v in model.bridges.items.state_dict().items()
    }
    return write_artefact(target, tensors, info, force=force, tensors_file=TENSORS_FILE,
                          config_file=CONFIG_FILE, format=FORMAT, kind="bridges")


def read_bridges_info(folder: str | os.PathLike[str]) -> BridgesInfo:
    """``bridges.json`` of ``folder``, checked for format and version."""
    file, data = read_artefact_json(folder, config_file=CONFIG_FILE, format=FORMAT, version=VERSION,
                                    kind="CALM bridges", made_by="fusion-ui compose train")
    try:
        return BridgesInfo(
            bridges=BridgeConfig.from_dict(data["bridges"]),
            anchor=ModelIdentity(**data["anchor"]),
            augment=ModelIdentity(**data["augment"]),
            tokenizer_sha256=str(data["tokenizer_sha256"]),
            training=dict(data.get("training") or {}),
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelSourceError(f"{file} cannot be read ({exc}); train the bridges again") from exc


def check_bridges_fit(info: BridgesInfo, anchor: PreTrainedModel, augment: PreTrainedModel) -> None:
    """Refuse models the bridges were not trained for, naming which and what to give instead."""
    got_anchor, got_augment = identify(anchor), identify(augment)
    if same_model(info.anchor, got_anchor) and same_model(info.augment, got_augment):
        return
    if same_model(info.anchor, got_augment) and same_model(info.augment, got_anchor):
        raise IncompatibleModelsError(
            "the anchor and the augmenting model are swapped: these bridges were trained with "
            f"anchor {info.anchor.ref} and augmenting model {info.augment.ref}; give them in that order"
        )
    wrong = []
    for role, want, got in (
        ("anchor", info.anchor, got_anchor),
        ("augmenting", info.augment, got_augment),
    ):
        if not same_model(want, got):
            why = (
                "another architecture"
                if want.config_sha256 != got.config_sha256
                else "other weights"
            )
            wrong.append(
                f"the {role} model given ({got.describe()}) is not the one they were trained for "
                f"({want.describe()}): {why}"
            )
    raise IncompatibleModelsError(
        "these bridges were trained for other models: "
        + "; ".join(wrong)
        + "; give the models they were trained with, or train new bridges for these"
    )


def same_model(want: ModelIdentity, got: ModelIdentity) -> bool:
    """Both fingerprints agree: the same architecture and weights, wherever the files are."""
    return want.config_sha256 == got.config_sha256 and want.weights_sha256 == got.weights_sha256


def attach_bridges(
    folder: str | os.PathLike[str],
    anchor: PreTrainedModel,
    augment: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    augment_tokenizer: PreTrainedTokenizerBase | None = None,
) -> CalmModel:
    """The composition of ``anchor`` and ``augment`` with the saved bridges of ``folder``."""
    info = read_bridges_info(folder)
    check_same_tokenizer(
        tokenizer, augment_tokenizer if augment_tokenizer is not None else tokenizer
    )
    check_vocab_fits(anchor, tokenizer, "anchor")
    check_vocab_fits(augment, tokenizer, "augmenting")
    check_bridges_fit(info, anchor, augment)
    if tokenizer_fingerprint(tokenizer) != info.tokenizer_sha256:
        raise IncompatibleModelsError(
            f"the tokenizer given is not the one the bridges in {folder} were trained with; "
            "load the models' own tokenizer files"
        )
    file = Path(folder).expanduser() / TENSORS_FILE
    try:
        state = load_file(file)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {file}: {exc}; train the bridges again") from exc
    bridges = Bridges(info.bridges)
    try:
        bridges.items.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelSourceError(
            f"{file} does not match {CONFIG_FILE}: {exc}; train the bridges again"
        ) from exc
    return CalmModel(anchor, augment, bridges.to(anchor.device))


def load_models(
    anchor: str | os.PathLike[str],
    augment: str | os.PathLike[str],
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[
    PreTrainedModel,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerBase,
    ModelSource,
    ModelSource,
]:
    """Both models and their tokenizers from folders or hub ids (see
    :func:`fusion_ui.io.source.resolve_model`), frozen, on ``device``."""
    from fusion_ui.evals.run import load_causal_lm

    src_b, src_a = resolve_model(anchor), resolve_model(augment)
    model_b, tok_b = load_causal_lm(str(src_b.path), device=device, dtype=dtype)
    model_a, tok_a = load_causal_lm(str(src_a.path), device=device, dtype=dtype)
    return model_b, model_a, tok_b, tok_a, src_b, src_a


def load_composition(
    anchor: str | os.PathLike[str],
    augment: str | os.PathLike[str],
    bridges: str | os.PathLike[str],
    *,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[CalmModel, PreTrainedTokenizerBase]:
    """Anchor + augmenting model + saved bridges, ready for generation and evals, and the
    (shared) tokenizer. The bridges' folder is read first, so a wrong one fails before any model loads."""
    read_bridges_info(bridges)
    model_b, model_a, tok_b, tok_a, _, _ = load_models(anchor, augment, device=device, dtype=dtype)
    return attach_bridges(bridges, model_b, model_a, tok_b, tok_a), tok_b
