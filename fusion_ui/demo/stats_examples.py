"""The examples a data-aware merge of the demo family computes its statistics on.

Each expert's Fisher or Gram statistics (:mod:`fusion_ui.stats`) come from examples of its own
skill: ``n`` distinct words (200 by default, as the RegMean and Fisher papers use a few hundred)
drawn from a seed of their own, never a word of any eval set of the build, so scoring the merge
on the held-out eval sets never sees them. ``benchmarks/datamerge_demo.py`` and the app's
*Compute statistics* both take them from here, so the same expert on the same examples gives the
same dataset hash and the same statistics folder.
"""

from __future__ import annotations

import random
from pathlib import Path

from fusion_ui.demo.build import PRESETS, BuildConfig, hash_seed, held_out_words
from fusion_ui.demo.skills import (
    EXPERT_SKILLS,
    GENERAL,
    Example,
    make_example,
    random_word,
    write_jsonl,
)
from fusion_ui.errors import InputError
from fusion_ui.evals.sets import EvalItem

STATS_EXAMPLES = 200  # examples per expert by default


def stats_examples(
    skill: str, n: int = STATS_EXAMPLES, *, cfg: BuildConfig | None = None
) -> list[EvalItem]:
    """``n`` distinct examples of the expert skill ``skill``, no word of any eval set among them,
    as a JSONL file of them reads back (:func:`write_stats_examples`)."""
    if skill not in EXPERT_SKILLS:
        raise InputError(
            f"{skill!r} is not an expert skill of the demo family; choose from {', '.join(EXPERT_SKILLS)}"
        )
    if n < 1:
        raise InputError(f"the number of examples must be at least 1, got {n}")
    cfg = cfg or PRESETS["full"]
    held_out = held_out_words(cfg, [*EXPERT_SKILLS, GENERAL])
    rng = random.Random(hash_seed(cfg.seed, f"stats/{skill}"))
    words: list[str] = []
    seen: set[str] = set()
    while len(words) < n:
        word = random_word(rng, cfg.min_len, cfg.max_len)
        if word not in held_out and word not in seen:
            seen.add(word)
            words.append(word)
    out = []
    for word in words:
        ex = make_example(skill, word)
        out.append(EvalItem(ex.prompt, ex.answer.strip(), ex.label))  # as write_jsonl writes it
    return out


def write_stats_examples(skill: str, n: int, folder: Path) -> Path:
    """:func:`stats_examples` as ``folder/<skill>_<n>.jsonl`` (prompt, answer, skill)."""
    path = Path(folder) / f"{skill}_{n}.jsonl"
    write_jsonl([Example(i.prompt, i.answer, i.skill) for i in stats_examples(skill, n)], path)
    return path


__all__ = ["STATS_EXAMPLES", "stats_examples", "write_stats_examples"]
