"""The textual recursive LM (Levine et al. 2022, arXiv 2204.10019, section 4): the frozen LM
answers twice.

Pass 1 (the frozen LM, alone or behind a soft prompt) writes ``n`` candidate answers to the
question ``q``: candidate 0 greedy, the others sampled at ``temperature``, seeded. Pass 2, the
*same* frozen LM behind its own learned prompt (:class:`~fusion_ui.frozen.prompts.FixedPrompt`),
reads the question and the candidates and writes the final answer::

    q = "back: rot13: abc ="      candidates ["zoop", "nop"]
    pass 2 reads  "back: rot13: abc = zoop - nop ="  (:func:`second_pass_text`)  ->  " mno"

Pass 2's prompt is trained on that text built from pass 1's candidates on the *training*
questions (:func:`second_pass_items`), so it learns to use what pass 1 really writes.

:class:`RecursiveLM` has a causal LM's call signature: its first call runs pass 1 on the
question's tokens, appends the candidates and opens pass 2 (whose KV cache it keeps); later calls
feed the generated tokens to pass 2 only. The evals' greedy generation (and so
:func:`fusion_ui.evals.evaluate`) runs it as any model. It is not a teacher-forced scorer: pass 1
must *generate*, so answer perplexity of the whole chain is not defined (fed a prompt with its
answer, the first call would show pass 1 the answer); score pass 2 on built items instead.

Sampling reuses the evals' greedy loop: greedy decoding of ``logits / T + Gumbel noise`` draws
from ``softmax(logits / T)`` (:class:`GumbelSampler`), with a seeded generator per candidate.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase
from transformers.utils import ModelOutput

from fusion_ui.errors import IncompatibleModelsError, InputError, RecipeError
from fusion_ui.evals.generate import cache_argument, greedy_batch, left_pad, pad_id_of
from fusion_ui.evals.sets import EvalItem
from fusion_ui.frozen.model import PromptedLM, _cache_of

DEFAULT_CANDIDATES = 3
DEFAULT_TEMPERATURE = 1.0
DEFAULT_SEPARATOR = " - "  # between candidates in pass 2's input
DEFAULT_MAX_NEW_TOKENS = 16  # the longest candidate pass 1 may write


@dataclass(frozen=True)
class RecursionConfig:
    """How pass 1 writes candidates and how pass 2 reads them (recorded in ``recursive.json``)."""

    candidates: int = DEFAULT_CANDIDATES  # n: candidate 0 greedy, n - 1 sampled
    temperature: float = DEFAULT_TEMPERATURE  # of the sampled candidates
    seed: int = 0  # candidate i is drawn with a generator seeded (seed, i)
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS  # per candidate
    separator: str = DEFAULT_SEPARATOR  # joins the candidates in pass 2's input

    def __post_init__(self) -> None:
        problems = []
        if self.candidates < 1:
            problems.append(f"candidates must be >= 1 (got {self.candidates})")
        if not self.temperature > 0:
            problems.append(f"temperature must be > 0 (got {self.temperature})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if "\n" in self.separator:
            problems.append("the separator cannot hold a newline (candidates stop at one)")
        if problems:
            raise RecipeError("invalid recursion settings: " + "; ".join(problems))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RecursionConfig:
        return cls(
            candidates=int(data.get("candidates", DEFAULT_CANDIDATES)),
            temperature=float(data.get("temperature", DEFAULT_TEMPERATURE)),
            seed=int(data.get("seed", 0)),
            max_new_tokens=int(data.get("max_new_tokens", DEFAULT_MAX_NEW_TOKENS)),
            separator=str(data.get("separator", DEFAULT_SEPARATOR)),
        )


def candidates_suffix(candidates: Sequence[str], separator: str = DEFAULT_SEPARATOR) -> str:
    """What pass 2 reads after the question: `` c1<sep>c2<sep>... =``."""
    return " " + separator.join(c.strip() for c in candidates) + " ="


def second_pass_text(
    question: str, candidates: Sequence[str], separator: str = DEFAULT_SEPARATOR
) -> str:
    """Pass 2's input: the question, then the candidates, then ``=``."""
    return question + candidates_suffix(candidates, separator)


@dataclass
class _SampledOutput(ModelOutput):
    logits: torch.Tensor | None = None
    cache: Any = None


class GumbelSampler(nn.Module):
    """``model`` whose logits are ``logits / T + Gumbel noise``: greedy decoding of it samples
    from ``softmax(logits / T)``. The noise comes from ``generator``, so a run is repeatable."""

    def __init__(self, model: nn.Module, temperature: float, generator: torch.Generator) -> None:
        super().__init__()
        self.model = model
        self.temperature = temperature
        self.generator = generator
        self._kw = cache_argument(model)

    def forward(self, input_ids: torch.Tensor, cache: Any = None, **kwargs: Any) -> _SampledOutput:
        out = self.model(input_ids=input_ids, **kwargs, **{self._kw: cache})
        logits = out.logits.float()
        u = torch.rand(logits.shape, generator=self.generator).to(logits.device)
        gumbel = -torch.log(-torch.log(u.clamp(1e-10, 1 - 1e-7)))
        return _SampledOutput(logits=logits / self.temperature + gumbel, cache=_cache_of(out))


@torch.no_grad()
def sample_candidates(
    first: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    ids: torch.Tensor,
    mask: torch.Tensor,
    config: RecursionConfig,
) -> list[list[str]]:
    """Per row of the left-padded questions ``ids``/``mask`` (B, T): pass 1's ``n`` candidates
    (decoded, special tokens dropped, cut at EOS or a newline, as greedy generation's)."""
    eos, pad = tokenizer.eos_token_id, pad_id_of(tokenizer)
    first.eval()
    rows: list[list[str]] = [[] for _ in range(ids.shape[0])]
    for i in range(config.candidates):
        if i == 0:
            model: nn.Module = first
        else:
            gen = torch.Generator().manual_seed(config.seed * 1_000_003 + i)
            model = GumbelSampler(first, config.temperature, gen)
        new = greedy_batch(
            model, ids, mask, max_new_tokens=config.max_new_tokens, eos=eos, pad=pad
        )
        for row, tokens in zip(rows, new.tolist(), strict=True):
            if eos is not None and eos in tokens:
                tokens = tokens[: tokens.index(eos)]
            row.append(tokenizer.decode(tokens, skip_special_tokens=True).split("\n", 1)[0].strip())
    return rows


def question_candidates(
    first: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    questions: Sequence[str],
    config: RecursionConfig,
    *,
    batch_size: int = 64,
) -> list[list[str]]:
    """Pass 1's candidates for each question (text in, as the evals encode prompts)."""
    dev = next(first.parameters()).device
    out: list[list[str]] = []
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        ids, mask = left_pad([tokenizer.encode(q, add_special_tokens=True) for q in chunk],
                             pad_id_of(tokenizer))  # fmt: skip
        out.extend(sample_candidates(first, tokenizer, ids.to(dev), mask.to(dev), config))
    return out


def second_pass_items(
    first: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    items: Sequence[EvalItem],
    config: RecursionConfig,
) -> list[EvalItem]:
    """Pass 2's training rows: each item's question with pass 1's candidates, same answer."""
    cands = question_candidates(first, tokenizer, [it.prompt for it in items], config)
    return [
        EvalItem(second_pass_text(it.prompt, c, config.separator), it.answer, it.skill)
        for it, c in zip(items, cands, strict=True)
    ]


@dataclass
class RecursiveCache:
    """Pass 2's cache and its attention mask so far (pass 1 is done by the first call)."""

    second: Any  # the PromptedLM's PromptCache
    mask: torch.Tensor  # (B, tokens pass 2 has read): its own layout, not the caller's
    positions: torch.Tensor  # (B, 1): the position of the last token read
    prompt_tokens: int  # the caller's prompt length, so get_seq_length speaks the caller's count
    steps: int = 0  # tokens fed after the prompt

    def get_seq_length(self) -> int:
        return self.prompt_tokens + self.steps


@dataclass
class RecursiveOutput(ModelOutput):
    # (B, 1, V) on the first call (pass 2's last position), then (B, T, V)
    logits: torch.Tensor | None = None
    cache: RecursiveCache | None = None

    @property
    def past_key_values(self) -> RecursiveCache | None:
        return self.cache


class RecursiveLM(nn.Module):
    """Textual recursion: ``first`` writes candidates, ``second`` (the same frozen LM behind a
    learned prompt) reads question + candidates and answers. See the module docstring."""

    def __init__(
        self,
        first: nn.Module,
        second: PromptedLM,
        tokenizer: PreTrainedTokenizerBase,
        config: RecursionConfig,
    ) -> None:
        super().__init__()
        lm_of_first = first.lm if isinstance(first, PromptedLM) else first
        if lm_of_first is not second.lm:
            raise IncompatibleModelsError(
                "the two passes of a recursive LM run the same frozen LM; give pass 1 the LM "
                "(or a prompt on it) that pass 2's prompt sits on"
            )
        self.first = first
        self.second = second
        self.tokenizer = tokenizer
        self.recursion = config

    @property
    def lm(self) -> nn.Module:
        return self.second.lm

    @property
    def device(self) -> torch.device:
        return self.second.device

    def train(self, mode: bool = True) -> RecursiveLM:
        super().train(mode)
        self.first.eval()
        self.second.lm.eval()
        return self

    def second_pass_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> list[list[int]]:
        """Per row: the question's real tokens, then the tokens of its candidates' suffix."""
        cands = sample_candidates(self.first, self.tokenizer, ids, mask, self.recursion)
        rows = []
        for row, m, c in zip(ids.tolist(), mask.tolist(), cands, strict=True):
            question = [t for t, keep in zip(row, m, strict=True) if keep]
            suffix = candidates_suffix(c, self.recursion.separator)
            rows.append(question + self.tokenizer.encode(suffix, add_special_tokens=False))
        return rows

    @torch.no_grad()
    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        past_key_values: RecursiveCache | None = None,
        use_cache: bool = False,
        cache: RecursiveCache | None = None,
        **_: Any,
    ) -> RecursiveOutput:
        """First call: ``input_ids`` (B, T) are the questions (left-padded, ``attention_mask``
        1 on real tokens); logits (B, 1, V) of pass 2's next token. Later calls (``use_cache``):
        the generated tokens (B, T'), logits (B, T', V). The caller's masks and positions of
        later calls are not needed: pass 2 keeps its own."""
        past = cache if cache is not None else past_key_values
        dev = input_ids.device
        if past is None:
            if not use_cache:
                raise InputError(
                    "a textual recursive LM only generates (pass 1 must write its candidates): it "
                    "has no teacher-forced scores, so no answer perplexity; score its greedy "
                    "answers (fusion_ui.evals.evaluate without with_perplexity)"
                )
            if attention_mask is None:
                attention_mask = torch.ones_like(input_ids)
            rows = self.second_pass_ids(input_ids, attention_mask)
            ids, mask = left_pad(rows, pad_id_of(self.tokenizer))
            ids, mask = ids.to(dev), mask.to(dev)
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            out = self.second(input_ids=ids, attention_mask=mask, position_ids=positions,
                              use_cache=use_cache)  # fmt: skip
            kept = (
                RecursiveCache(out.cache, mask, positions[:, -1:], input_ids.shape[1])
                if use_cache
                else None
            )
            return RecursiveOutput(logits=out.logits[:, -1:], cache=kept)
        if not isinstance(past, RecursiveCache):
            raise InputError("a recursive LM continues only from the cache its last call returned")
        new = input_ids.shape[1]
        mask = torch.cat([past.mask, torch.ones(past.mask.shape[0], new, dtype=past.mask.dtype,
                                                 device=dev)], dim=1)  # fmt: skip
        positions = past.positions + torch.arange(1, new + 1, device=dev)[None]
        out = self.second(input_ids=input_ids, attention_mask=mask, position_ids=positions,
                          cache=past.second, use_cache=use_cache)  # fmt: skip
        kept = (
            RecursiveCache(out.cache, mask, positions[:, -1:], past.prompt_tokens, past.steps + new)
            if use_cache
            else None
        )
        return RecursiveOutput(logits=out.logits, cache=kept)
