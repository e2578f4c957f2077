"""LM-Cocktail's automatic weights: a few examples' losses turned into a linear merge.

Xiao et al. 2023, "LM-Cocktail: Resilient Tuning of Language Models via Model Merging" (arXiv
2311.13534). For candidate models (the base, the fine-tune, other fine-tunes) and a handful of
examples of the target task (5 is enough in the paper):

1. each candidate's loss is its mean answer-only cross-entropy on the examples (nats per
   scored token, pooled over the examples: prompt tokens and padding are not scored, the EOS
   after the answer is);
2. ``w = softmax(-loss / T)`` (T = 5 by default, the reference code's value), optionally with a
   floor for the base (:func:`softmax_weights` states the rule);
3. the merge is an ordinary ``method: linear`` recipe with those weights, which records where
   they came from (``weights_from:``, see :class:`fusion_ui.recipe.WeightsFrom`).

Differences from FlagEmbedding's ``LM_Cocktail`` code, on purpose: candidates are loaded one at
a time and freed before the next (it holds every state dict in RAM); rows are padded to the
batch's longest and padding is masked out of the loss (it pads to 2048 with ``pad_token_id`` and
fails without one); an example longer than the context is cut with a warning, keeping the
answer and the end of the prompt; the loss is pooled over tokens, so it does not depend on the
batch size (it averages per-batch means). Causal LMs only: encoders (the paper's BGE case,
scored with a contrastive loss) are refused with :class:`UnsupportedModelError`.
"""

from __future__ import annotations

import dataclasses
import gc
import hashlib
import json
import math
import numbers
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fusion_ui.errors import FusionError, IncompatibleModelsError, ModelSourceError
from fusion_ui.evals.sets import EvalItem
from fusion_ui.io.source import resolve_model, short_names
from fusion_ui.progress import CancelToken, ProgressCallback, report

if TYPE_CHECKING:
    import pandas as pd

    from fusion_ui.recipe import Recipe

DEFAULT_TEMPERATURE = 5.0  # the reference code's value (its docstring says 3)
PROVENANCE_METHOD = "lm_cocktail"  # ``weights_from.method`` of the recipes made here
# Config model types of encoder-only families: their "LM head" classes are not what LM-Cocktail's
# decoder loss means, and the encoder case needs a contrastive loss (not implemented yet).
ENCODER_MODEL_TYPES = frozenset({
    "albert", "bert", "camembert", "deberta", "deberta-v2", "distilbert", "electra", "ernie",
    "esm", "flaubert", "funnel", "ibert", "layoutlm", "longformer", "luke", "megatron-bert",
    "modernbert", "mpnet", "nomic_bert", "nystromformer", "rembert", "roberta",
    "roberta-prelayernorm", "roformer", "squeezebert", "xlm", "xlm-roberta", "xlm-roberta-xl",
    "xmod", "yoso",
})
_MAX_TRUNCATION_WARNINGS = 5  # one line per cut example, then a count


class CocktailError(FusionError):
    """LM-Cocktail weights cannot be computed from these inputs (examples, options, losses)."""


class UnsupportedModelError(CocktailError):
    """A candidate is not a causal language model (an encoder such as BERT or BGE)."""


@dataclass(frozen=True)
class CocktailResult:
    """Each candidate's loss on the examples and the weights they give.

    Everything needed to recompute the weights is here, so a new temperature or floor is
    :meth:`reweight`, with no model run.
    """

    candidates: tuple[str, ...]  # model references (folder or hub id), in the order given
    labels: tuple[str, ...]  # short names (fusion_ui.io.source.short_names)
    losses: tuple[float, ...]  # per candidate: answer-only cross-entropy, nats/token, pooled over the examples
    example_losses: tuple[tuple[float, ...], ...]  # per candidate, per example: that example's mean answer CE
    temperature: float  # T of softmax(-loss / T)
    weights: tuple[float, ...]  # softmax(-loss / T), after the base floor if any; sums to 1
    examples_sha256: str  # of the examples as scored: see examples_sha256()
    n_examples: int
    base: str | None  # which candidate is the base (for the floor and the recipe)
    base_floor: float  # the least weight the base gets (0: no floor)
    warnings: tuple[str, ...] = ()  # e.g. examples cut to the context

    @property
    def base_index(self) -> int | None:
        return None if self.base is None else self.candidates.index(self.base)

    def reweight(self, temperature: float, base_floor: float | None = None) -> CocktailResult:
        """New weights from the same losses (no model run); ``base_floor=None`` keeps the floor."""
        floor = self.base_floor if base_floor is None else float(base_floor)
        weights = softmax_weights(self.losses, temperature, base_index=self.base_index, base_floor=floor)
        return dataclasses.replace(self, temperature=float(temperature), base_floor=floor, weights=tuple(weights))

    def table(self) -> pd.DataFrame:
        """One row per candidate: label, model, loss (nats/token), weight."""
        import pandas as pd

        return pd.DataFrame({
            "label": list(self.labels),
            "model": list(self.candidates),
            "loss": list(self.losses),
            "weight": list(self.weights),
        })


def format_loss(loss: float) -> str:
    """A loss as tables print it: 4 decimals, or 4 significant digits below 0.001 (a fine-tune
    that knows the examples scores ~5e-05, not 0.0000)."""
    return f"{loss:.4f}" if loss == 0 or abs(loss) >= 1e-3 else f"{loss:.3e}"


def examples_sha256(examples: Sequence[EvalItem]) -> str:
    """SHA-256 of the examples as scored: the UTF-8 bytes of the canonical JSON list
    ``[{"answer": ..., "prompt": ...}, ...]`` (keys sorted, no spaces, non-ASCII kept), in order.
    The skill label is not scored and not hashed."""
    rows = [{"prompt": ex.prompt, "answer": ex.answer} for ex in examples]
    text = json.dumps(rows, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def softmax_weights(
    losses: Sequence[float], temperature: float, *, base_index: int | None = None, base_floor: float = 0.0
) -> list[float]:
    """``w_i = exp(-L_i / T) / sum_j exp(-L_j / T)``, then the base floor.

    The floor ``f`` (0 <= f <= 1) is the least weight the base (``base_index``) gets: when its
    softmax weight ``w_b`` is below ``f``, the base gets exactly ``f`` and every other candidate
    ``w_i * (1 - f) / (1 - w_b)``, so the others share the rest in the proportions the softmax
    gave them (and the weights still sum to 1). A base already at or above ``f`` keeps its
    weight, and nothing changes. E.g. losses [1, 3], T = 2: softmax [0.731, 0.269]; a floor of
    0.5 on candidate 1 gives [0.5, 0.5].
    """
    values = [float(v) for v in losses]
    if not values:
        raise CocktailError("no losses to weight: give at least one candidate")
    bad = [i for i, v in enumerate(values) if not math.isfinite(v)]
    if bad:
        raise CocktailError(f"loss {values[bad[0]]} of candidate {bad[0]} is not finite; weights need finite losses")
    t = float(temperature)
    if not (math.isfinite(t) and t > 0):
        raise CocktailError(f"temperature must be a number above 0, got {temperature}")
    f = float(base_floor)
    if not 0.0 <= f <= 1.0:
        raise CocktailError(f"base floor must be between 0 and 1, got {base_floor}")
    if base_index is not None and not 0 <= base_index < len(values):
        raise CocktailError(f"base index {base_index} is not one of the {len(values)} candidates")
    if f > 0 and base_index is None:
        raise CocktailError("a base floor needs a base: say which candidate is the base")
    low = min(values)  # shift by the smallest loss: exp() never overflows, the largest term is 1
    terms = [math.exp(-(v - low) / t) for v in values]
    total = math.fsum(terms)
    weights = [x / total for x in terms]
    if base_index is not None and weights[base_index] < f:
        rest = 1.0 - weights[base_index]  # > 0, since w_b < f <= 1
        weights = [f if i == base_index else w * (1.0 - f) / rest for i, w in enumerate(weights)]
    return weights


def cocktail_weights(
    candidates: Sequence[str],
    examples: Sequence[EvalItem],
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    base: str | None = None,
    base_floor: float = 0.0,
    device: str = "auto",
    batch_size: int = 8,
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> CocktailResult:
    """Score every candidate on ``examples`` and weight them ``softmax(-loss / T)``.

    Everything that can be checked without weights is checked first (examples, options, every
    candidate's config and tokenizer); then the candidates are loaded one at a time in float32
    on ``device``, scored in batches of ``batch_size`` examples and freed before the next, so
    one model is in memory at a time. Progress is reported per batch (and per model load);
    ``cancel`` is checked between batches.

    Every candidate scores the very same token ids: the tokenizers must agree (same vocabulary,
    same special tokens, same ids for the examples), and an example longer than the smallest
    context among the candidates is cut the same way for all (see
    :func:`fusion_ui.evals.perplexity.encode_scored`), with a warning in ``result.warnings``.
    """
    import torch

    from fusion_ui.device import resolve_device
    from fusion_ui.evals.generate import pad_id_of
    from fusion_ui.evals.perplexity import encode_items, score_pairs
    from fusion_ui.evals.run import load_causal_lm

    refs = [str(c) for c in candidates]
    labels = short_names(refs)
    items = _checked_examples(examples)
    _check_options(refs, base, base_floor, temperature, batch_size)
    base_index = None if base is None else refs.index(base)
    dev = resolve_device(device)  # a device that is not there fails here, before any loading

    # -- before any weights: configs, tokenizers, the token ids every candidate will score ------
    paths = [str(resolve_model(ref).path) for ref in refs]
    _check_distinct_folders(refs, paths)
    configs = [_config(ref, label, path) for ref, label, path in zip(refs, labels, paths, strict=True)]
    for ref, label, config in zip(refs, labels, configs, strict=True):
        _check_causal_lm(ref, label, config)
    _check_vocab_sizes(refs, labels, configs)
    contexts = [_context_length(c) for c in configs]
    known = [(n, i) for i, n in enumerate(contexts) if n is not None]
    max_length, ctx_owner = min(known) if known else (None, None)
    tokenizers = [_tokenizer(ref, label, path) for ref, label, path in zip(refs, labels, paths, strict=True)]
    first = tokenizers[0]
    pairs = encode_items(first, items, with_eos=True, max_length=max_length)
    for k in range(1, len(refs)):
        _check_same_tokenizer(first, tokenizers[k], items, pairs, max_length, refs, labels, k)
    warnings = _encoding_warnings(first, pairs, max_length, None if ctx_owner is None else labels[ctx_owner])
    empty = [k for k, p in enumerate(pairs) if len(p.ids) - p.n_prompt < 1]
    if empty:
        raise CocktailError(
            f"example {empty[0] + 1} has nothing to score: its answer is empty and the tokenizer has "
            "no EOS token; give every example an answer"
        )
    pad_id = pad_id_of(first)
    del tokenizers

    # -- one candidate at a time ---------------------------------------------------------------
    n_batches = math.ceil(len(pairs) / batch_size)
    total_units = len(refs) * (n_batches + 1)  # a load, then each batch
    losses: list[float] = []
    example_losses: list[tuple[float, ...]] = []
    for i, (ref, label, path) in enumerate(zip(refs, labels, paths, strict=True)):
        if cancel is not None:
            cancel.raise_if_cancelled()
        done_before = i * (n_batches + 1)
        model, _ = load_causal_lm(path, device=dev, dtype=torch.float32)
        try:
            report(progress, done_before + 1, total_units, f"{label}: loaded")

            def on_batch(done: int, total: int, *, _label: str = label, _base: int = done_before) -> None:
                report(progress, _base + 1 + math.ceil(done / batch_size), total_units,
                       f"{_label}: {done}/{total} examples scored")
                if cancel is not None:
                    cancel.raise_if_cancelled()

            scores = score_pairs(model, pairs, pad_id=pad_id, batch_size=batch_size, device=dev, on_batch=on_batch)
        finally:
            freed = weakref.ref(model)
            del model
            if freed() is not None:  # held by a reference cycle: a full collection frees it (only
                gc.collect()  # then: one takes ~0.5 s with torch and transformers imported)
            if dev.type == "cuda":
                torch.cuda.empty_cache()
        for k, (nll, _count) in enumerate(scores):
            if not math.isfinite(nll):
                kind = "NaN" if math.isnan(nll) else "an infinite"
                raise CocktailError(
                    f"{label} ({ref}) gives {kind} loss on example {k + 1}: its weights or outputs hold "
                    "NaN or inf, so no weight can be computed for it; check it with `fusion-ui deltas`, "
                    "or leave it out of the candidates"
                )
        example_losses.append(tuple(nll / count for nll, count in scores))
        losses.append(math.fsum(n for n, _ in scores) / sum(c for _, c in scores))
    weights = softmax_weights(losses, temperature, base_index=base_index, base_floor=base_floor)
    return CocktailResult(
        candidates=tuple(refs),
        labels=tuple(labels),
        losses=tuple(losses),
        example_losses=tuple(example_losses),
        temperature=float(temperature),
        weights=tuple(weights),
        examples_sha256=examples_sha256(items),
        n_examples=len(items),
        base=base,
        base_floor=float(base_floor),
        warnings=tuple(warnings),
    )


def cocktail_recipe(
    result: CocktailResult, *, weights: Sequence[float] | None = None, name: str | None = None
) -> Recipe:
    """A ``method: linear`` recipe over the candidates (normalize on, ``base`` = the result's),
    with ``weights`` (the user's edited ones) or the computed ``result.weights``; its
    ``weights_from:`` records the examples' hash and count, T, the floor and every candidate's
    loss and computed weight, so the model card can say where the weights came from."""
    from fusion_ui.recipe import recipe_from_dict

    chosen = list(result.weights if weights is None else weights)
    if len(chosen) != len(result.candidates):
        raise CocktailError(
            f"{len(chosen)} weights for {len(result.candidates)} candidates: give one weight per candidate"
        )
    for label, w in zip(result.labels, chosen, strict=True):
        real = isinstance(w, numbers.Real) and not isinstance(w, bool)  # numpy's scalars too
        if not (real and math.isfinite(float(w)) and float(w) >= 0):
            raise CocktailError(f"weight {w!r} of {label} must be a number >= 0")
    if sum(float(w) for w in chosen) <= 0:
        raise CocktailError("the weights sum to 0; give at least one candidate a positive weight")
    data: dict[str, Any] = {
        "method": "linear",
        "name": name or f"LM-Cocktail of {' + '.join(result.labels)}",
        "base": result.base,
        "models": [{"model": ref, "weight": _short(w)} for ref, w in zip(result.candidates, chosen, strict=True)],
        "parameters": {"normalize": True},
        "weights_from": {
            "method": PROVENANCE_METHOD,
            "examples": result.n_examples,
            "examples_sha256": result.examples_sha256,
            "temperature": result.temperature,
            "base_floor": result.base_floor,
            "candidates": [
                {"label": label, "loss": _short(loss), "weight": _short(w)}
                for label, loss, w in zip(result.labels, result.losses, result.weights, strict=True)
            ],
        },
    }
    return recipe_from_dict(data, source="LM-Cocktail recipe")


def _short(x: float) -> float:
    """Six significant digits: what a recipe shows and keeps (the weights are normalized)."""
    return float(f"{float(x):.6g}")


def _checked_examples(examples: Sequence[EvalItem]) -> list[EvalItem]:
    items = list(examples)
    if not items:
        raise CocktailError(
            "no examples: LM-Cocktail weights need a few examples of the target task (the paper "
            "uses 5), each a prompt and its answer"
        )
    for k, it in enumerate(items):
        if not (isinstance(getattr(it, "prompt", None), str) and isinstance(getattr(it, "answer", None), str)):
            raise CocktailError(f"example {k + 1} is not a prompt/answer pair of strings: {it!r}")
    return items


def _check_options(
    refs: list[str], base: str | None, base_floor: float, temperature: float, batch_size: int
) -> None:
    if len(refs) < 2:
        raise CocktailError(
            f"LM-Cocktail mixes at least 2 models, got {len(refs)}: give the base and the fine-tune(s)"
        )
    seen: set[str] = set()
    for ref in refs:
        if ref in seen:
            raise CocktailError(f"{ref} is listed twice among the candidates; list each model once")
        seen.add(ref)
    if base is not None and base not in refs:
        raise CocktailError(f"the base {base} is not one of the candidates; add it, or name one of them")
    if not (isinstance(batch_size, int) and batch_size >= 1):
        raise CocktailError(f"batch size must be a whole number >= 1, got {batch_size!r}")
    softmax_weights([0.0] * len(refs), temperature, base_index=0 if base is not None else None,
                    base_floor=base_floor)  # the same checks of T and the floor, before any work


def _check_distinct_folders(refs: list[str], paths: list[str]) -> None:
    """Two spellings of one folder (``base`` and ``./base/``) are the same candidate twice."""
    first: dict[str, str] = {}
    for ref, path in zip(refs, paths, strict=True):
        if path in first:
            raise CocktailError(
                f"{ref} is listed twice among the candidates (as {first[path]} too: both are {path}); "
                "list each model once"
            )
        first[path] = ref


def _config(ref: str, label: str, path: str) -> Any:
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSourceError(f"cannot read the config of {label} ({ref}): {exc}") from exc


def _check_causal_lm(ref: str, label: str, config: Any) -> None:
    """Refuse anything but a decoder-only causal LM, from its config alone."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    model_type = getattr(config, "model_type", None) or "unknown"
    archs = list(getattr(config, "architectures", None) or [])
    causal_arch = any(a.endswith(("ForCausalLM", "LMHeadModel")) for a in archs)
    encoder = model_type in ENCODER_MODEL_TYPES and not getattr(config, "is_decoder", False)
    if getattr(config, "is_encoder_decoder", False):
        kind = f"an encoder-decoder model ({model_type})"
    elif encoder:
        kind = f"an encoder ({', '.join(archs) or model_type})"
    elif archs and not causal_arch:
        kind = f"not a causal LM ({', '.join(archs)})"
    elif not archs and model_type not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        kind = f"not a causal LM (model type {model_type})"
    else:
        return
    raise UnsupportedModelError(
        f"{label} ({ref}) is {kind}: LM-Cocktail weights are computed for causal LMs (decoders such "
        "as Llama or GPT-2) only; encoders such as BERT or BGE embedding models (the paper's second "
        "case, weighted with a contrastive loss) are not supported yet"
    )


def _check_vocab_sizes(refs: list[str], labels: list[str], configs: list[Any]) -> None:
    sizes = [getattr(c, "vocab_size", None) for c in configs]
    for k in range(1, len(refs)):
        if sizes[k] != sizes[0]:
            raise IncompatibleModelsError(
                f"{labels[k]} ({refs[k]}) has a vocabulary of {sizes[k]} tokens, {labels[0]} of "
                f"{sizes[0]}: LM-Cocktail compares and mixes models with one vocabulary; leave "
                f"{labels[k]} out of the candidates"
            )


def _context_length(config: Any) -> int | None:
    """The longest sequence the model's positions allow, from its config (None: not stated)."""
    for key in ("max_position_embeddings", "n_positions", "n_ctx", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _tokenizer(ref: str, label: str, path: str) -> Any:
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSourceError(f"cannot load the tokenizer of {label} ({ref}): {exc}") from exc


def _check_same_tokenizer(
    first: Any, other: Any, items: list[EvalItem], pairs: list[Any], max_length: int | None,
    refs: list[str], labels: list[str], k: int,
) -> None:
    """The losses are comparable only if every candidate reads the same ids."""
    from fusion_ui.evals.perplexity import encode_scored

    why = None
    vocab_a, vocab_b = first.get_vocab(), other.get_vocab()
    if vocab_a.keys() != vocab_b.keys():
        only_b = sorted(set(vocab_b) - set(vocab_a))[:3]
        why = (f"a different vocabulary ({len(vocab_b)} tokens against {len(vocab_a)}"
               + (f"; e.g. {only_b} only in {labels[k]}" if only_b else "") + ")")
    elif vocab_a != vocab_b:
        token = min(t for t in vocab_a if vocab_a[t] != vocab_b[t])
        why = (f"the same {len(vocab_a)} tokens with other ids (e.g. {token!r} is {vocab_b[token]} in "
               f"{labels[k]}, {vocab_a[token]} in {labels[0]})")
    else:
        for attr in ("bos_token_id", "eos_token_id"):
            if getattr(first, attr) != getattr(other, attr):
                why = f"a different {attr} ({getattr(other, attr)} against {getattr(first, attr)})"
                break
        else:
            for j, it in enumerate(items):
                mine = encode_scored(other, it.prompt, it.answer, with_eos=True, max_length=max_length)
                if mine != pairs[j]:
                    why = f"different token ids for example {j + 1}"
                    break
    if why is not None:
        raise IncompatibleModelsError(
            f"{labels[k]} ({refs[k]}) has a different tokenizer from {labels[0]} ({refs[0]}): {why}. "
            "LM-Cocktail compares losses on the same tokens and mixes models with one vocabulary; "
            f"leave {labels[k]} out of the candidates"
        )


def _encoding_warnings(tokenizer: Any, pairs: list[Any], max_length: int | None, ctx_owner: str | None) -> list[str]:
    warnings: list[str] = []
    if tokenizer.eos_token_id is None:
        warnings.append("the tokenizer has no EOS token: only the answer tokens are scored, not the end of the answer")
    cut = [(k, p) for k, p in enumerate(pairs) if p.truncated]
    for k, p in cut[:_MAX_TRUNCATION_WARNINGS]:
        length = len(p.ids) + p.dropped_prompt + p.dropped_answer
        where = f"the {max_length}-token context of {ctx_owner}"
        if p.dropped_answer:
            warnings.append(
                f"example {k + 1} is {length} tokens, more than {where}, and its answer alone does not "
                f"fit: scored on the prompt's last token and the first {len(p.ids) - p.n_prompt} of "
                f"{len(p.ids) - p.n_prompt + p.dropped_answer} answer tokens"
            )
        else:
            bos = tokenizer.bos_token_id is not None and p.n_prompt > 1 and p.ids[0] == tokenizer.bos_token_id
            kept = f"BOS and the prompt's last {p.n_prompt - 1} tokens" if bos else f"the prompt's last {p.n_prompt} tokens"
            warnings.append(
                f"example {k + 1} is {length} tokens, more than {where}: scored on the whole answer "
                f"(and EOS) after {kept}; dropped {p.dropped_prompt} tokens from the prompt's start"
            )
    if len(cut) > _MAX_TRUNCATION_WARNINGS:
        warnings.append(f"{len(cut) - _MAX_TRUNCATION_WARNINGS} more examples were cut the same way")
    return warnings
