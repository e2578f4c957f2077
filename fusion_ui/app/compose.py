"""The Compose tab's facade: CALM's composition of two frozen models, scored and generated side
by side with each model alone.

A composition is an anchor m_B, an augmenting m_A and trained bridges (a folder written by
``fusion-ui compose train``, shipped with the demo: ``calm/``, or trained here). Scoring and
generation are jobs of the session; each loads the composition (small: the bridges refuse models
they were not trained for) and runs m_A alone, m_B alone and CALM on the same prompts.

Training bridges is :func:`fusion_ui.compose.train_composition` run as a job through
:class:`~fusion_ui.app.training.TrainingJobs` (a live loss history, Stop at the next step, the
bridges written atomically into the session's workspace only when the run ends); the folder it
writes is then one of the bridges to score and generate with.

What the bridges read (:meth:`ComposeFacade.start_reading`) records, for one prompt and CALM's
answer, each bridge's cross-attention and how much it adds per token; the layer diagram shows
which m_A block feeds which m_B block.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd
import plotly.graph_objects as go

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.app.training import TrainingJobs, tensor_params, train_config
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import EvalItem, evaluate, greedy_generate, load_eval_set
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.runtime.jobs import Job, JobContext
from fusion_ui.tensor_names import num_layers_from_config

if TYPE_CHECKING:
    from fusion_ui.compose import BridgeAttention, BridgesInfo

ROLES = ("m_A", "m_B", "CALM")  # the augmenting model alone, the anchor alone, the composition
DEFAULT_ITEMS = 50  # per eval set and model
TRAIN_KIND = "compose-train"  # the job kind of a training run (a new one replaces the session's older one)
ARTEFACT = "bridges"  # folder prefix in the session's workspace
MARKER = "bridges.json"
TRAIN_STEPS = 300  # about 25 s on one CPU core for the demo pair: the loss falls from ~2 to ~0.5
TRAIN_LR = 3e-3  # what the shipped demo bridges were trained with
TRAIN_BATCH = 16
# The "What the bridges read" example: a held-out KV-arithmetic item (its keys are outside the
# 20 % the bridges were trained on) that the demo's CALM answers (14) and neither model alone does.
READ_PROMPT = "jix + pxx ="
READ_TOKENS = 4  # greedy answer tokens read after the prompt


@dataclass(frozen=True)
class Composition:
    anchor: str
    augment: str
    bridges: str


@dataclass(frozen=True)
class BridgesTraining:
    """What the Train bridges form gives."""

    anchor: str
    augment: str
    data: str = ""  # a composition set (.jsonl / .csv); empty: the demo's
    pairs: str = ""  # "A:B,..." layer pairs; empty: the demo bridges' pairs (or the engine's default)
    steps: int = TRAIN_STEPS
    lr: float = TRAIN_LR
    batch_size: int = TRAIN_BATCH


@dataclass(frozen=True)
class TrainedBridges:
    folder: str
    pairs: str  # "3:0,3:1"
    losses: tuple[float, ...]
    seconds: float
    trainable: int  # the bridges' parameters


@dataclass(frozen=True)
class BridgesRead:
    """What "What the bridges read" gives: the recorded reading, and the demo's answer to the
    prompt when it is one of the demo's items."""

    reading: BridgeAttention
    expected: str | None  # the demo sets' answer, stripped; None for any other prompt

    @property
    def right(self) -> bool | None:
        """Whether CALM's answer is the demo's (None when the prompt is no demo item)."""
        return None if self.expected is None else self.reading.answer.strip() == self.expected


class ComposeFacade:
    def __init__(self, context: AppContext, training: TrainingJobs | None = None) -> None:
        self.context = context
        self.training = training or TrainingJobs(context)

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
        text = self._prompt(prompt)
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

    # -- what the bridges read ----------------------------------------------------------------

    def start_reading(self, session: str, pair: Composition, prompt: str, *,
                      max_new_tokens: int = READ_TOKENS) -> Job[BridgesRead]:
        """Each bridge's cross-attention weights and contribution for one prompt and CALM's greedy
        answer to it (:func:`fusion_ui.compose.read_bridges`), as a job."""
        text = self._prompt(prompt)
        if not 0 <= int(max_new_tokens) <= self.context.limits.max_new_tokens:
            raise InputError(f"answer tokens must be from 0 to {self.context.limits.max_new_tokens}")
        check(pair)
        expected = self.expected_answer(text)

        def run(ctx: JobContext) -> BridgesRead:
            from fusion_ui.compose import load_composition, read_bridges

            calm, tokenizer = load_composition(pair.anchor, pair.augment, pair.bridges, device=self.context.device)
            ctx.check()
            return BridgesRead(read_bridges(calm, tokenizer, text, max_new_tokens=int(max_new_tokens)), expected)

        return self.context.submit(session, "compose-read", run, label="bridges reading")

    def expected_answer(self, prompt: str) -> str | None:
        """The demo sets' answer to ``prompt`` (stripped), or None when it is none of their items."""
        text = prompt.strip()
        for path in self.eval_sets().values():
            for item in load_eval_set(path):
                if item.prompt.strip() == text:
                    return item.answer.strip()
        return None

    @staticmethod
    def attention_chart(read: BridgesRead, *, head: int | None = None) -> go.Figure:
        return figures.bridge_attention_chart(read.reading, head=head)

    @staticmethod
    def layer_diagram(bridges: str) -> go.Figure | None:
        """Which m_A block feeds which m_B block in the bridges of ``bridges`` (a folder); None when
        the folder holds no readable bridges.json (nothing to draw yet)."""
        info = _bridges_info(bridges)
        if info is None:
            return None
        return figures.bridge_layer_diagram(info.bridges.pairs, info.augment.num_layers, info.anchor.num_layers)

    @staticmethod
    def bridge_heads(bridges: str) -> int:
        """The cross-attention heads of the bridges of ``bridges`` (0 when it holds none)."""
        info = _bridges_info(bridges)
        return info.bridges.heads if info is not None else 0

    def planned_layer_diagram(self, anchor: str, augment: str, pairs: str) -> go.Figure | None:
        """The layer pairs typed for a training run (empty: the demo bridges' pairs, else the
        engine's default for the two depths), drawn over the two models' blocks. None while the
        text is not yet pairs inside both models, or a model is not a local folder with a
        config.json (a hub model's depth is known once it is loaded)."""
        from fusion_ui.compose import default_pairs, parse_pairs
        from fusion_ui.compose.bridges import check_pairs

        depths = [_depth(ref) for ref in (augment, anchor)]
        if None in depths:
            return None
        n_augment, n_anchor = depths
        text = (pairs or "").strip() or self.demo_pairs()
        try:
            chosen = parse_pairs(text) if text else default_pairs(n_augment, n_anchor)
            check_pairs(chosen, n_augment, n_anchor)
        except FusionError:
            return None
        return figures.bridge_layer_diagram(chosen, n_augment, n_anchor, planned=True)

    # -- training bridges ---------------------------------------------------------------------

    def demo_training_set(self) -> Path | None:
        """The demo's composition set (KV arithmetic over 20 % of the keys), if it is there."""
        pair = self.demo_pair()
        path = Path(pair.bridges).parent / "train" / "composition.jsonl" if pair is not None else None
        return path if path is not None and path.is_file() else None

    def demo_pairs(self) -> str:
        """The shipped demo bridges' layer pairs (``"3:0,3:1,3:2"``), or ``""``."""
        from fusion_ui.compose import read_bridges_info

        pair = self.demo_pair()
        if pair is None:
            return ""
        try:
            return ",".join(str(p) for p in read_bridges_info(pair.bridges).bridges.pairs)
        except FusionError:
            return ""

    def bridges_choices(self, session: str) -> list[tuple[str, str]]:
        """(label, folder) of the bridges to compose with: the session's trained ones (newest
        first), then the demo's shipped ones."""
        out = [(f"trained here: {p.name}", str(p)) for p in self.training.trained(session, ARTEFACT, MARKER)]
        pair = self.demo_pair()
        if pair is not None:
            out.append(("the demo's shipped bridges", pair.bridges))
        return out

    def start_training(self, session: str, form: BridgesTraining) -> Job[TrainedBridges]:
        """Train fresh bridges between the anchor and the augmenting model, as a job; written into
        a new folder of the session's workspace when (and only if) the run finishes."""
        from fusion_ui.compose import parse_pairs, train_composition

        for what, ref in (("anchor m_B", form.anchor), ("augmenting model m_A", form.augment)):
            if not (ref or "").strip():
                raise InputError(f"give the {what}: a folder or a hub id")
        config = train_config(form.steps, form.lr, form.batch_size)
        data = (form.data or "").strip()
        demo_set = self.demo_training_set()
        if not data and demo_set is None:
            raise InputError("give a composition set: a .jsonl or .csv file with prompt and answer")
        file = Path(data).expanduser() if data else demo_set
        if data and not file.is_file():
            raise InputError(f"{data}: no such file; give a .jsonl or .csv file with prompt and answer")
        items = load_eval_set(file)
        pairs_text = (form.pairs or "").strip() or self.demo_pairs()
        pairs = parse_pairs(pairs_text) if pairs_text else None
        anchor, augment = form.anchor.strip(), form.augment.strip()
        out = self.training.new_folder(session, ARTEFACT)
        device = self.context.device

        def train(progress: ProgressCallback, cancel: CancelToken) -> TrainedBridges:
            done = train_composition(anchor, augment, items, out, pairs=pairs, config=config, device=device,
                                     progress=progress, cancel=cancel)
            return TrainedBridges(str(done.folder), ",".join(str(p) for p in done.pairs), tuple(done.result.losses),
                                  done.result.seconds, tensor_params(Path(done.folder) / "bridges.safetensors"))

        return self.training.start(session, TRAIN_KIND, train, steps=config.steps, label="bridges training")

    def curve(self, job: Job[TrainedBridges]) -> go.Figure:
        return self.training.curve(job, "bridges training loss")

    @staticmethod
    def chart(scores: pd.DataFrame) -> go.Figure:
        return figures.score_chart(scores)

    @staticmethod
    def table(scores: pd.DataFrame) -> pd.DataFrame:
        """Rows m_A, m_B, CALM; a column per task, exact match in %."""
        wide = scores.pivot_table(index="model", columns="skill", values="exact_match", aggfunc="first")
        wide = (100 * wide.reindex([r for r in ROLES if r in wide.index])).round(1)
        return wide.reset_index().rename_axis(columns=None)

    def _prompt(self, prompt: str) -> str:
        text = (prompt or "").strip()
        if not text:
            raise InputError("type a prompt, e.g. `hpg + amy =`")
        if len(text) > self.context.limits.max_prompt_chars:
            raise InputError(f"the prompt is {len(text)} characters; the app takes up to "
                             f"{self.context.limits.max_prompt_chars}")
        return text

    def _load(self, pair: Composition) -> tuple[dict[str, object], object]:
        from fusion_ui.compose import load_composition

        calm, tokenizer = load_composition(pair.anchor, pair.augment, pair.bridges, device=self.context.device)
        return {"m_A": calm.augment, "m_B": calm.anchor, "CALM": calm}, tokenizer


def _bridges_info(bridges: str) -> BridgesInfo | None:
    from fusion_ui.compose import read_bridges_info

    folder = (bridges or "").strip()
    if not folder:
        return None
    try:
        return read_bridges_info(folder)
    except FusionError:
        return None


def _depth(ref: str) -> int | None:
    """Decoder blocks of a local model folder, from its config.json (None if it is not one)."""
    file = Path((ref or "").strip() or "/nonexistent").expanduser() / "config.json"
    try:
        return num_layers_from_config(json.loads(file.read_text()))
    except (OSError, ValueError):
        return None


def check(pair: Composition) -> None:
    """Each part named, before any job (the bridges check the models themselves when loaded)."""
    for what, ref in (("anchor m_B", pair.anchor), ("augmenting model m_A", pair.augment),
                      ("bridges folder", pair.bridges)):
        if not (ref or "").strip():
            raise InputError(f"give the {what}: a folder (or a hub id for the models)")
    if not (Path(pair.bridges).expanduser() / "bridges.json").is_file():
        raise InputError(f"{pair.bridges} holds no bridges.json: give a folder written by `fusion-ui compose train`")


__all__ = ["DEFAULT_ITEMS", "READ_PROMPT", "READ_TOKENS", "ROLES", "TRAIN_BATCH", "TRAIN_LR", "TRAIN_STEPS",
           "BridgesRead", "BridgesTraining", "ComposeFacade", "Composition", "TrainedBridges"]
