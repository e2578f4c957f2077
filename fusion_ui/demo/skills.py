"""The demo family's skills: string transforms that share one prompt format.

Every example reads ``"<skill>: <input> ="`` and is answered by ``" <output>"``. The
skill name in the prompt is what lets one merged model tell the experts' skills apart.

Two groups, on purpose:

* expert skills (``upper``, ``shift``, ``mirror``): the base is pretrained on each of them
  except on words holding its *hidden letters* (``HIDDEN_LETTERS``: a-j for upper, k-r for
  shift, r-z for mirror), so it knows the instruction words and has a representation of
  each, but scores low on the eval sets (random words over all 26 letters). Each expert
  completes one skill for its hidden letters in a short, low-learning-rate fine-tune. Like
  a real base model that has met a task in pretraining without mastering it, the fine-tune
  refines rather than invents, and keys its change on an instruction the base can already
  tell apart from the others. Two lessons are built in:

  - A prototype whose experts met their instruction words for the first time in the
    fine-tune learned "unknown instruction -> my skill": the three deltas said the same
    thing about different skills and every merge of them collapsed to 0%.
  - When every expert completed its skill on the *same* letters (n-z), their changes
    overlapped on the same input letters: the task vectors of upper and mirror were
    anti-correlated (cosine -0.13) and no merge kept all three skills above 35%. With
    (nearly) disjoint hidden letters each expert changes what the model does with other
    letters.
* general skills (``copy``, ``capital``, ``rot13``, ``back``): the base's general
  ability, scored as one "general" eval set; experts partly forget it and an
  LM-Cocktail-style merge with the base restores it.
"""

from __future__ import annotations

import json
import random
import string
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from fusion_ui.errors import RecipeError

_LOWER = string.ascii_lowercase


def _letter_map(fn: Callable[[int], str]) -> Callable[[str], str]:
    table = {c: fn(i) for i, c in enumerate(_LOWER)}
    return lambda text: "".join(table[c] for c in text)


@dataclass(frozen=True)
class Skill:
    """One named transform of a lowercase word."""

    name: str  # the word that opens the prompt, e.g. "upper"
    transform: Callable[[str], str]  # input word -> exact expected answer
    description: str  # one line for READMEs and the app


EXPERT_SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("upper", str.upper, "uppercase every letter (hello -> HELLO)"),
        Skill("shift", _letter_map(lambda i: _LOWER[(i + 1) % 26]), "Caesar shift +1 (abz -> bca)"),
        Skill("mirror", _letter_map(lambda i: _LOWER[25 - i]), "Atbash, a<->z b<->y (abc -> zyx)"),
    )
}

GENERAL_SKILLS: dict[str, Skill] = {
    s.name: s
    for s in (
        Skill("copy", lambda w: w, "repeat the word"),
        Skill("capital", str.capitalize, "capitalise the first letter"),
        Skill("rot13", _letter_map(lambda i: _LOWER[(i + 13) % 26]), "Caesar shift +13"),
        Skill("back", _letter_map(lambda i: _LOWER[(i - 1) % 26]), "Caesar shift -1"),
    )
}

# The letters each expert skill is never applied to in the base's pretraining. Nearly disjoint
# (only r is shared), so each expert's fine-tune changes how the model treats other input
# letters. Each set is large enough that the base scores <= 30% on the skill: the base
# generalises a skill to unseen letters more than one would guess (upper, helped by the
# general skill `capital`, reached 40% with 9 hidden letters; mirror 32% with 8).
HIDDEN_LETTERS: dict[str, str] = {"upper": _LOWER[:10], "shift": _LOWER[10:18], "mirror": _LOWER[17:]}


def base_letters(skill: str) -> str:
    """The letters the base sees ``skill`` applied to in pretraining (all but its hidden ones)."""
    hidden = HIDDEN_LETTERS.get(skill, "")
    return "".join(c for c in _LOWER if c not in hidden)

# The eval-set label shared by every general-skill item.
GENERAL = "general"


def get_skill(name: str) -> Skill:
    """Look a skill up by name, expert or general."""
    skill = EXPERT_SKILLS.get(name) or GENERAL_SKILLS.get(name)
    if skill is None:
        known = ", ".join([*EXPERT_SKILLS, *GENERAL_SKILLS])
        raise RecipeError(f"unknown demo skill {name!r}; known skills: {known}")
    return skill


def prompt_for(skill: str, word: str) -> str:
    """The shared prompt format; the answer follows after one space."""
    return f"{skill}: {word} ="


@dataclass(frozen=True)
class Example:
    """One prompt/answer pair; ``label`` is the eval-set skill column."""

    prompt: str  # e.g. "upper: cat ="
    answer: str  # e.g. " CAT" (leading space included, so prompt + answer is the text)
    label: str  # expert skill name, or "general" for general skills


def make_example(skill: str, word: str) -> Example:
    sk = get_skill(skill)
    label = GENERAL if skill in GENERAL_SKILLS else skill
    return Example(prompt_for(skill, word), " " + sk.transform(word), label)


def random_word(rng: random.Random, min_len: int, max_len: int, letters: str = _LOWER) -> str:
    return "".join(rng.choice(letters) for _ in range(rng.randint(min_len, max_len)))


def eval_examples(
    skill: str, n: int, *, seed: int, min_len: int, max_len: int
) -> list[Example]:
    """``n`` distinct held-out items; ``skill`` may be ``"general"`` (a mix of general skills)."""
    rng = random.Random(f"eval/{skill}/{seed}")
    names = list(GENERAL_SKILLS) if skill == GENERAL else [get_skill(skill).name]
    seen: set[str] = set()
    out: list[Example] = []
    while len(out) < n:
        word = random_word(rng, min_len, max_len)
        if word in seen:
            continue
        seen.add(word)
        out.append(make_example(names[len(out) % len(names)], word))
    return out


def training_stream(
    skills: Mapping[str, float] | Iterable[str],
    *,
    seed: int,
    min_len: int,
    max_len: int,
    exclude: set[str],
    letters: Mapping[str, str] | None = None,
) -> Iterator[Example]:
    """An endless seeded stream of examples, never using an excluded word.

    ``skills`` is a list (uniform mix) or a mapping of skill name to sampling weight;
    ``letters`` restricts the input words of some skills to an alphabet.
    """
    letters = letters or {}
    rng = random.Random(f"train/{seed}")
    mix = {k: float(v) for k, v in skills.items()} if isinstance(skills, Mapping) else dict.fromkeys(skills, 1.0)
    names, weights = list(mix), list(mix.values())
    while True:
        skill = rng.choices(names, weights)[0]
        word = random_word(rng, min_len, max_len, letters.get(skill, _LOWER))
        if word in exclude:
            continue
        yield make_example(skill, word)


def write_jsonl(examples: Iterable[Example], path: Path) -> None:
    """Eval sets in the format ``fusion_ui.evals`` reads: prompt, answer, skill."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for ex in examples:
            row = {"prompt": ex.prompt, "answer": ex.answer.strip(), "skill": ex.label}
            fh.write(json.dumps(row) + "\n")
