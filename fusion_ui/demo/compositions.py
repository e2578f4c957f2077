"""Compositions of two demo skills, for the recursive LMs' demo: ``outer(inner(word))``.

The prompt names both skills with their opener tokens, outer first, as function composition
reads: ``"back: rot13: abc ="`` is answered by ``" mno"`` (rot13 of abc is nop, back of nop is
mno). The base knows each general skill alone (100% on ``general``) but never met two openers
in one prompt, and ``back ∘ rot13`` is a Caesar shift of +12 that no skill of the base computes in
one pass; two passes of skills it knows can.
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from fusion_ui.demo.skills import get_skill, random_word
from fusion_ui.evals.sets import EvalItem

DEFAULT_COMPOSITION = ("back", "rot13")  # outer, inner: back(rot13(w)), a shift of +12


def composition_label(outer: str, inner: str) -> str:
    """The eval-set skill column, e.g. ``"back.rot13"``."""
    return f"{outer}.{inner}"


def composition_prompt(outer: str, inner: str, word: str) -> str:
    return f"{outer}: {inner}: {word} ="


def composition_item(outer: str, inner: str, word: str) -> EvalItem:
    """One prompt/answer row; the answer without its leading space, as eval sets store it."""
    answer = get_skill(outer).transform(get_skill(inner).transform(word))
    return EvalItem(composition_prompt(outer, inner, word), answer, composition_label(outer, inner))


def composition_items(
    outer: str,
    inner: str,
    n: int,
    *,
    seed: int,
    min_len: int = 3,
    max_len: int = 6,
    exclude: Iterable[str] = (),
) -> list[EvalItem]:
    """``n`` rows on distinct seeded random words, none of them in ``exclude`` (so a training
    set and a held-out set drawn with other seeds never share a word)."""
    rng = random.Random(f"composition/{outer}/{inner}/{seed}")
    seen = set(exclude)
    out: list[EvalItem] = []
    while len(out) < n:
        word = random_word(rng, min_len, max_len)
        if word in seen:
            continue
        seen.add(word)
        out.append(composition_item(outer, inner, word))
    return out


def composition_word(item: EvalItem) -> str:
    """The word of a composition row (``"back: rot13: abc ="`` -> ``"abc"``)."""
    return item.prompt.split()[2]


def composition_sets(
    n_train: int,
    n_test: int,
    *,
    seed: int = 0,
    composition: tuple[str, str] = DEFAULT_COMPOSITION,
) -> tuple[list[EvalItem], list[EvalItem]]:
    """Training rows and held-out rows of ``outer(inner(w))``, no word in both: the held-out
    words are drawn first (seed ``seed + 1``), the training words (seed ``seed``) avoid them. The
    recursion demo (``benchmarks/frozen_demo.py``) and the app's Frozen LM tab use these sets."""
    outer, inner = composition
    test = composition_items(outer, inner, n_test, seed=seed + 1)
    train = composition_items(outer, inner, n_train, seed=seed,
                              exclude=[composition_word(it) for it in test])  # fmt: skip
    return train, test
