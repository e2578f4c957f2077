"""A trained soft prompt as its own artefact: ``prompt.safetensors`` + ``prompt.json``.

The folder holds only what was trained, never the frozen LM or encoder::

    prompt/
      prompt.safetensors   the prompt's tensors (float32 as trained): P, and for ID-PT the
                           encoder prompt, the queries and the cross-attention
      prompt.json          format, kind and shape, the LM's and the encoder's identities,
                           the tokenizer's fingerprint, training settings and outcome

Identities are CALM's (:class:`fusion_ui.compose.artefact.ModelIdentity`: where a model came from
and two fingerprints that do not depend on where it is). Loading refuses a prompt made for an
LM of another width (naming both widths) and one trained for another LM or encoder (other
fingerprints). The folder is written beside the target and renamed into place
(:mod:`fusion_ui.io.staging`): a failure or a cancel leaves nothing half-written.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from fusion_ui.compose.artefact import ModelIdentity, identify, same_model, tokenizer_fingerprint
from fusion_ui.compose.calm import check_same_tokenizer, check_vocab_fits, hidden_size
from fusion_ui.errors import IncompatibleModelsError, ModelSourceError, RecipeError
from fusion_ui.frozen.model import PromptedLM
from fusion_ui.frozen.prompts import FixedPrompt, PromptConfig, PromptGenerator
from fusion_ui.io.source import ModelSource, resolve_model
from fusion_ui.io.staging import check_artefact_target, read_artefact_json, write_artefact

FORMAT = "fusion_ui/frozen-prompt"
VERSION = 1
TENSORS_FILE = "prompt.safetensors"
CONFIG_FILE = "prompt.json"
METHODS = {
    "idpt": "input-dependent prompt tuning (Levine et al. 2022, arXiv 2204.10019)",
    "prompt": "prompt tuning (Lester et al. 2021), the baseline of arXiv 2204.10019",
}


@dataclass(frozen=True)
class PromptInfo:
    """``prompt.json``, read back."""

    prompt: PromptConfig
    lm: ModelIdentity
    encoder: ModelIdentity | None  # None for plain prompt tuning
    encoder_is_lm: bool  # ID-PT read the input with the LM itself
    tokenizer_sha256: str
    training: dict[str, Any]  # settings and outcome of the run that made it (informational)


def save_prompt(
    model: PromptedLM,
    folder: str | os.PathLike[str],
    *,
    tokenizer: PreTrainedTokenizerBase,
    lm_source: ModelSource | None = None,
    encoder_source: ModelSource | None = None,
    training: dict[str, Any] | None = None,
    force: bool = False,
) -> Path:
    """Write ``model``'s prompt (never the frozen models) into ``folder``, atomically.

    An existing ``folder`` is refused unless ``force`` and it is an earlier prompt (or empty).
    """
    target = Path(folder).expanduser().absolute()
    check_artefact_target(target, force=force, marker=CONFIG_FILE, kind="prompt")
    encoder = model.encoder
    encoder_is_lm = encoder is model.lm
    info = {
        "format": FORMAT,
        "version": VERSION,
        "method": METHODS[model.config.kind],
        "prompt": model.config.to_dict(),
        "lm": asdict(identify(model.lm, lm_source)),
        "encoder": None
        if encoder is None
        else asdict(identify(encoder, lm_source if encoder_is_lm else encoder_source)),
        "encoder_is_lm": encoder_is_lm,
        "tokenizer_sha256": tokenizer_fingerprint(tokenizer),
        "training": training or {},
    }
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.prompt.state_dict().items()}
    return write_artefact(
        target,
        tensors,
        info,
        force=force,
        tensors_file=TENSORS_FILE,
        config_file=CONFIG_FILE,
        format=FORMAT,
        kind="prompt",
    )


def read_prompt_info(folder: str | os.PathLike[str]) -> PromptInfo:
    """``prompt.json`` of ``folder``, checked for format and version."""
    file, data = read_artefact_json(folder, config_file=CONFIG_FILE, format=FORMAT, version=VERSION,
                                    kind="frozen-LM prompt", made_by="fusion-ui frozen train")
    try:
        encoder = data.get("encoder")
        return PromptInfo(
            prompt=PromptConfig.from_dict(data["prompt"]),
            lm=ModelIdentity(**data["lm"]),
            encoder=None if encoder is None else ModelIdentity(**encoder),
            encoder_is_lm=bool(data.get("encoder_is_lm", False)),
            tokenizer_sha256=str(data["tokenizer_sha256"]),
            training=dict(data.get("training") or {}),
        )
    except (KeyError, TypeError, ValueError, RecipeError) as exc:
        raise ModelSourceError(f"{file} cannot be read ({exc}); train the prompt again") from exc


def check_lm_fits(want: ModelIdentity, width: int, lm: PreTrainedModel, *, what: str) -> None:
    """Refuse an LM of another width (``width``: what the trained part reads and writes) or
    other weights than ``want``, the LM the trained part (``what``: "prompt", "connector", ...)
    was trained for."""
    if width != hidden_size(lm):
        raise IncompatibleModelsError(
            f"hidden-size mismatch: this {what} was trained for {want.describe()}, an LM of width "
            f"{width}, but the LM given is {hidden_size(lm)} wide; give the LM it "
            f"was trained for, or train a new {what} for this one"
        )
    got = identify(lm)
    if not same_model(want, got):
        why = "another architecture" if want.config_sha256 != got.config_sha256 else "other weights"
        raise IncompatibleModelsError(
            f"this {what} was trained for another LM: the LM given ({got.describe()}) is not "
            f"{want.describe()} ({why}); give the LM it was trained for, or train a new {what}"
        )


def check_prompt_fits(
    info: PromptInfo, lm: PreTrainedModel, encoder: PreTrainedModel | None
) -> None:
    """Refuse an LM (or encoder) of another width or other weights than the prompt's, naming
    which and what to give instead."""
    check_lm_fits(info.lm, info.prompt.d_model, lm, what="prompt")
    if info.encoder is None:
        return
    if encoder is None:
        raise RecipeError(
            f"this ID-PT prompt reads its inputs with the encoder {info.encoder.describe()}; give that encoder"
        )
    if info.prompt.d_encoder != hidden_size(encoder):
        raise IncompatibleModelsError(
            f"hidden-size mismatch: the prompt generator reads an encoder of width {info.prompt.d_encoder} "
            f"({info.encoder.describe()}), but the encoder given is {hidden_size(encoder)} wide; "
            "give the encoder it was trained with"
        )
    got_enc = identify(encoder)
    if not same_model(info.encoder, got_enc):
        raise IncompatibleModelsError(
            f"this prompt generator was trained with another encoder: the one given "
            f"({got_enc.describe()}) is not {info.encoder.describe()}; give the encoder it was trained with"
        )


def attach_prompt(
    folder: str | os.PathLike[str],
    lm: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    *,
    encoder: PreTrainedModel | None = None,
) -> PromptedLM:
    """``lm`` with the saved prompt of ``folder``. For ID-PT give its ``encoder`` (or nothing,
    when it was the LM itself)."""
    info = read_prompt_info(folder)
    if encoder is None and info.encoder_is_lm:
        encoder = lm
    check_vocab_fits(lm, tokenizer, "language")
    check_prompt_fits(info, lm, encoder)
    if tokenizer_fingerprint(tokenizer) != info.tokenizer_sha256:
        raise IncompatibleModelsError(
            f"the tokenizer given is not the one the prompt in {folder} was trained with; "
            "load the LM's own tokenizer files"
        )
    file = Path(folder).expanduser() / TENSORS_FILE
    try:
        state = load_file(file)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot read {file}: {exc}; train the prompt again") from exc
    config = info.prompt
    zeros = torch.zeros(config.length, config.d_model)
    if config.kind == "prompt":
        prompt: FixedPrompt | PromptGenerator = FixedPrompt(config, zeros)
    elif encoder is None:  # check_prompt_fits refuses this first; kept for the type checker
        raise RecipeError("an ID-PT prompt needs its encoder")
    else:
        encoder_zeros = torch.zeros(config.encoder_prompt_length, int(config.d_encoder or 0))
        prompt = PromptGenerator(config, encoder, zeros, encoder_zeros)
    try:
        prompt.load_state_dict(state)
    except RuntimeError as exc:
        raise ModelSourceError(
            f"{file} does not match {CONFIG_FILE}: {exc}; train the prompt again"
        ) from exc
    return PromptedLM(lm, prompt.to(lm.device))


def load_encoder(
    ref: str | os.PathLike[str],
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, ModelSource]:
    """A frozen encoder's body (no LM head) and tokenizer, from a folder or hub id."""
    from transformers import AutoModel, AutoTokenizer

    source = resolve_model(ref)
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(source.path))
        model = AutoModel.from_pretrained(str(source.path), dtype=dtype)
    except (OSError, ValueError) as exc:
        raise ModelSourceError(f"cannot load an encoder from {str(ref)!r}: {exc}") from exc
    return model.to(device).eval().requires_grad_(False), tokenizer, source


def load_lm_and_encoder(
    lm_ref: str | os.PathLike[str],
    encoder_ref: str | os.PathLike[str] | None,
    *,
    device: torch.device,
    dtype: torch.dtype = torch.float32,
) -> tuple[
    PreTrainedModel,
    PreTrainedTokenizerBase,
    ModelSource,
    PreTrainedModel | None,
    ModelSource | None,
]:
    """The frozen LM and its tokenizer, and the encoder (None: none asked for) checked to share
    the LM's tokenizer (it reads the LM's token ids)."""
    from fusion_ui.evals.run import load_causal_lm

    source = resolve_model(lm_ref)
    lm, tokenizer = load_causal_lm(str(source.path), device=device, dtype=dtype)
    if encoder_ref is None:
        return lm, tokenizer, source, None, None
    encoder, enc_tokenizer, enc_source = load_encoder(encoder_ref, device=device, dtype=dtype)
    check_same_tokenizer(tokenizer, enc_tokenizer)
    return lm, tokenizer, source, encoder, enc_source


def load_prompted(
    lm: str | os.PathLike[str],
    prompt_dir: str | os.PathLike[str],
    *,
    encoder: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = "auto",
    dtype: torch.dtype = torch.float32,
) -> tuple[PromptedLM, PreTrainedTokenizerBase]:
    """LM + saved prompt (+ its encoder: ``encoder``, else where ``prompt.json`` says it was),
    ready for generation and evals, and the LM's tokenizer. The prompt's folder is read first,
    so a wrong one fails before any model loads."""
    from fusion_ui.device import resolve_device

    info = read_prompt_info(prompt_dir)
    dev = resolve_device(device)
    encoder_ref: str | os.PathLike[str] | None = encoder
    if encoder_ref is None and info.encoder is not None and not info.encoder_is_lm:
        encoder_ref = info.encoder.path or info.encoder.ref
    model, tokenizer, _, enc_model, _ = load_lm_and_encoder(
        lm, encoder_ref, device=dev, dtype=dtype
    )
    return attach_prompt(prompt_dir, model, tokenizer, encoder=enc_model), tokenizer
