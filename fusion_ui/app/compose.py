"""The Compose tab's facade: CALM's composition of two frozen models, scored and generated side
by side with each model alone.

A composition is an anchor m_B, an augmenting m_A and trained bridges (a folder written by
``fusion-ui compose train`` or shipped with the demo: ``calm/``). Scoring and generation are
jobs of the session; each loads the composition (small: the bridges refuse models they were
not trained for) and runs m_A alone, m_B alone and CALM on the same prompts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.errors import InputError
from fusion_ui.evals import EvalItem, evaluate, greedy_generate, load_eval_set
from fusion_ui.progress import report
from fusion_ui.runtime.jobs import Job, JobContext

ROLES = ("m_A", "m_B", "CALM")  # the augmenting model alone, the anchor alone, the composition
DEFAULT_ITEMS = 50  # per eval set and model


@dataclass(frozen=True)
class Composition:
    anchor: str
    augment: str
    bridges: str


class ComposeFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    def demo_pair(self) -> Composition | None:
        """The CALM demo shipped beside the demo family (``calm/``), if it is there."""
        demo = self.context.demo
        root = demo.root / "calm" if demo is not None else None
        if root is None or not (root / "bridges" / "bridges.json").is_file():
            return None
        return Composition(str(root / "anchor"), str(root / "augment"), str(root / "bridges"))

    def eval_sets(self) -> dict[str, Path]:
        """The CALM demo's held-out sets (task -> file)."""
        pair = self.demo_pair()
        if pair is None:
            return {}
        return {p.stem: p for p in sorted((Path(pair.bridges).parent / "evals").glob("*.jsonl"))}

    def start_scores(self, session: str, pair: Composition, tasks: Sequence[str], *,
                     items: int = DEFAULT_ITEMS) -> Job[pd.DataFrame]:
        """m_A, m_B and CALM scored on the chosen demo sets (exact match per task), as a job."""
        sets = self.eval_sets()
        unknown = [t for t in tasks if t not in sets]
        if not tasks or unknown:
            raise InputError(f"pick the sets to score from: {', '.join(sets) or 'none shipped'}")
        if not 1 <= int(items) <= self.context.limits.max_eval_items:
            raise InputError(f"items per set must be from 1 to {self.context.limits.max_eval_items}")
        chosen: list[EvalItem] = []
        for task in tasks:
            chosen += load_eval_set(sets[task])[: int(items)]
        check(pair)

        def run(ctx: JobContext) -> pd.DataFrame:
            models, tokenizer = self._load(pair)
            tables = []
            for k, role in enumerate(ROLES):
                report(ctx.progress, k, len(ROLES), f"scoring {role}")
                tables.append(evaluate(models[role], tokenizer, chosen, model_name=role, device=self.context.device,
                                       max_new_tokens=8))
                ctx.check()
            return pd.concat(tables, ignore_index=True)

        return self.context.submit(session, "compose-score", run, label="CALM scores")

    def start_generation(self, session: str, pair: Composition, prompt: str, *,
                         max_new_tokens: int = 16) -> Job[dict[str, str]]:
        """Greedy answers of m_A, m_B and CALM to one prompt, as a job."""
        text = (prompt or "").strip()
        if not text:
            raise InputError("type a prompt, e.g. `hpg + amy =`")
        if len(text) > self.context.limits.max_prompt_chars:
            raise InputError(f"the prompt is {len(text)} characters; the app takes up to "
                             f"{self.context.limits.max_prompt_chars}")
        if not 1 <= int(max_new_tokens) <= self.context.limits.max_new_tokens:
            raise InputError(f"new tokens must be from 1 to {self.context.limits.max_new_tokens}")
        check(pair)

        def run(ctx: JobContext) -> dict[str, str]:
            models, tokenizer = self._load(pair)
            out = {}
            for role in ROLES:
                ctx.check()
                out[role] = greedy_generate(models[role], tokenizer, [text], max_new_tokens=int(max_new_tokens),
                                            device=self.context.device)[0]
            return out

        return self.context.submit(session, "compose-generate", run, label="CALM generation")

    @staticmethod
    def chart(scores: pd.DataFrame) -> go.Figure:
        return figures.score_chart(scores)

    @staticmethod
    def table(scores: pd.DataFrame) -> pd.DataFrame:
        """Rows m_A, m_B, CALM; a column per task, exact match in %."""
        wide = scores.pivot_table(index="model", columns="skill", values="exact_match", aggfunc="first")
        wide = (100 * wide.reindex([r for r in ROLES if r in wide.index])).round(1)
        return wide.reset_index().rename_axis(columns=None)

    def _load(self, pair: Composition) -> tuple[dict[str, object], object]:
        from fusion_ui.compose import load_composition

        calm, tokenizer = load_composition(pair.anchor, pair.augment, pair.bridges, device=self.context.device)
        return {"m_A": calm.augment, "m_B": calm.anchor, "CALM": calm}, tokenizer


def check(pair: Composition) -> None:
    """Each part named, before any job (the bridges check the models themselves when loaded)."""
    for what, ref in (("anchor m_B", pair.anchor), ("augmenting model m_A", pair.augment),
                      ("bridges folder", pair.bridges)):
        if not (ref or "").strip():
            raise InputError(f"give the {what}: a folder (or a hub id for the models)")
    if not (Path(pair.bridges).expanduser() / "bridges.json").is_file():
        raise InputError(f"{pair.bridges} holds no bridges.json: give a folder written by `fusion-ui compose train`")


__all__ = ["DEFAULT_ITEMS", "ROLES", "ComposeFacade", "Composition"]
