"""The CALM demo's three tasks (Bansal et al. 2024, Table 1) and its key split.

- KV-Substitution, m_A's skill: ``"key: qzt ="`` -> ``" 7"`` (string key -> its value 0..9).
- Numeric-Arithmetic, m_B's skill: ``"3 + 4 ="`` -> ``" 7"``, ``"2 - 5 ="`` -> ``" -3"``
  (one-digit operands, + and -; results -9..18).
- KV-Arithmetic, the composition's: ``"qzt + abk ="`` -> ``" 12"`` (values substituted, then
  computed).

Keys are distinct 3-letter strings with seeded values. A seeded share of them (20 %) is the
*composition* split: the only keys the bridges ever see. Every KV-Arithmetic eval item uses two
keys outside it, so the table measures whether the composition generalises to keys that only
m_A knows. Everything derives from one seed (Python's ``random.Random`` with string seeds, which
are stable across processes).
"""

from __future__ import annotations

import itertools
import json
import random
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

from fusion_ui.demo.tokenizer import BOS, EOS, PAD, SPECIAL_TOKENS, UNK
from fusion_ui.errors import RecipeError
from fusion_ui.evals.sets import EvalItem

KV_SUBSTITUTION = "kv_substitution"
NUMERIC_ARITHMETIC = "numeric_arithmetic"
KV_ARITHMETIC = "kv_arithmetic"
TASKS = (KV_SUBSTITUTION, NUMERIC_ARITHMETIC, KV_ARITHMETIC)
TASK_TITLES = {
    KV_SUBSTITUTION: "KV-Substitution",
    NUMERIC_ARITHMETIC: "Numeric-Arithmetic",
    KV_ARITHMETIC: "KV-Arithmetic",
}
OPS = ("+", "-")
DIGITS = tuple(range(10))  # the values and the operands
KEY_OPENER = "key:"  # one whole token, like the merge demo's skill openers
# every character the three tasks use, plus the rest of the lowercase alphabet for keys
ALPHABET = " " + string.ascii_lowercase + string.digits + "+-="


def build_calm_tokenizer() -> PreTrainedTokenizerFast:
    """One id per character (BPE without merges, as :func:`fusion_ui.demo.tokenizer.build_tokenizer`),
    BOS first, ``key:`` one whole token; both demo models share it."""
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *ALPHABET])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    core.add_tokens([AddedToken(KEY_OPENER, normalized=False)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",
        model_max_length=64,
    )


def apply(a: int, op: str, b: int) -> int:
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    raise RecipeError(f"unknown operator {op!r}; the demo knows {', '.join(OPS)}")


@dataclass(frozen=True)
class KeySplit:
    """The keys, their values, and which keys the composition set may use."""

    values: dict[str, int]  # key -> value, every key (m_A learns them all)
    composition: tuple[str, ...]  # the keys the bridges are trained on (sorted)
    held_out: tuple[str, ...]  # the others: every KV eval item uses only these (sorted)


def make_keys(n_keys: int, composition_share: float, *, seed: int) -> KeySplit:
    """``n_keys`` distinct 3-letter keys with uniform values 0..9; ``composition_share`` of
    them (rounded, at least one) for the composition set, the rest held out."""
    if n_keys < 2:
        raise RecipeError("the demo needs at least 2 keys")
    if not 0 < composition_share < 1:
        raise RecipeError("the composition share must be in (0, 1)")
    rng = random.Random(f"calm/keys/{seed}")
    keys: list[str] = []
    seen: set[str] = set()
    while len(keys) < n_keys:
        key = "".join(rng.choice(string.ascii_lowercase) for _ in range(3))
        if key not in seen:
            seen.add(key)
            keys.append(key)
    values = {k: rng.choice(DIGITS) for k in keys}
    n_comp = min(n_keys - 1, max(1, round(n_keys * composition_share)))
    order = keys[:]
    rng.shuffle(order)
    return KeySplit(values, tuple(sorted(order[:n_comp])), tuple(sorted(order[n_comp:])))


def kv_substitution(key: str, values: dict[str, int]) -> EvalItem:
    return EvalItem(f"{KEY_OPENER} {key} =", f" {values[key]}", KV_SUBSTITUTION)


def numeric_arithmetic(a: int, op: str, b: int) -> EvalItem:
    return EvalItem(f"{a} {op} {b} =", f" {apply(a, op, b)}", NUMERIC_ARITHMETIC)


def kv_arithmetic(k1: str, op: str, k2: str, values: dict[str, int]) -> EvalItem:
    return EvalItem(f"{k1} {op} {k2} =", f" {apply(values[k1], op, values[k2])}", KV_ARITHMETIC)


def all_numeric() -> list[EvalItem]:
    """Every one-digit problem (200): m_B's whole skill."""
    return [numeric_arithmetic(a, op, b) for a, op, b in itertools.product(DIGITS, OPS, DIGITS)]


def kv_arithmetic_items(keys: Sequence[str], values: dict[str, int], n: int, *, seed: str) -> list[EvalItem]:
    """``n`` distinct expressions ``k1 op k2`` over ``keys`` (k1 may equal k2), seeded; fewer
    when ``keys`` allow fewer."""
    rng = random.Random(seed)
    space = len(keys) * len(keys) * len(OPS)
    n = min(n, space)
    seen: set[tuple[str, str, str]] = set()
    items: list[EvalItem] = []
    while len(items) < n:
        triple = (rng.choice(keys), rng.choice(OPS), rng.choice(keys))
        if triple not in seen:
            seen.add(triple)
            items.append(kv_arithmetic(triple[0], triple[1], triple[2], values))
    return items


def eval_sets(split: KeySplit, n_items: int, *, seed: int) -> dict[str, list[EvalItem]]:
    """The three held-out eval sets: KV-Substitution on ``n_items`` held-out keys, all 200
    numeric problems, ``n_items`` KV-Arithmetic expressions over held-out keys only."""
    rng = random.Random(f"calm/eval/kv/{seed}")
    keys = list(split.held_out)
    rng.shuffle(keys)
    return {
        KV_SUBSTITUTION: [kv_substitution(k, split.values) for k in keys[:n_items]],
        NUMERIC_ARITHMETIC: all_numeric(),
        KV_ARITHMETIC: kv_arithmetic_items(
            split.held_out, split.values, n_items, seed=f"calm/eval/kva/{seed}"
        ),
    }


def composition_set(split: KeySplit, n_items: int, *, seed: int) -> list[EvalItem]:
    """The bridges' training set: KV-Arithmetic over the composition keys only."""
    return kv_arithmetic_items(split.composition, split.values, n_items, seed=f"calm/train/{seed}")


def keys_in(item: EvalItem) -> list[str]:
    """The keys an item names (a KV-Substitution or KV-Arithmetic prompt), else none."""
    words = item.prompt.replace(KEY_OPENER, " ").replace("=", " ").split()
    return [w for w in words if w.isalpha()]


def write_jsonl(items: Iterable[EvalItem], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for it in items:
            fh.write(json.dumps({"prompt": it.prompt, "answer": it.answer, "skill": it.skill}) + "\n")
    return path
