"""The Frozen LM tab's facade: a small part trained beside a frozen LM (arXiv 2204.10019): a
soft prompt (ID-PT or plain prompt tuning) or a recursive LM (a connector between two passes, or
a textual recursion whose pass 2 reads pass 1's candidates), then scored and generated beside the
LM alone, each expert of the demo family and their merge.

The methods offered are the engine's (:data:`fusion_ui.frozen.FROZEN_METHODS`). Training is the
engine's file-level run of the method (``train_frozen``, ``train_connector_run``,
``train_textual_run``) run as a job through :class:`~fusion_ui.app.training.TrainingJobs` (a
live loss history, Stop at the next step, the part written atomically into the session's
workspace only when the run ends). Scoring and generation load the LM once (the app's model
cache) and put a trained prompt in front of it; a connector or a recursion is opened with
:func:`fusion_ui.frozen.load_frozen` (kept in the cache too). Every role runs on the same items,
greedy exact match only: a textual recursion has no answer perplexity, and none is asked.

Besides the demo's expert skills the tab trains and scores on the demo composition
``back: rot13: w =`` (:func:`fusion_ui.demo.compositions.composition_sets`, the recursion
demo's sets), which a recursion method preselects.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import plotly.graph_objects as go
import torch

from fusion_ui import figures
from fusion_ui.app.context import AppContext
from fusion_ui.app.training import TrainingJobs, tensor_params, train_config, whole_number
from fusion_ui.demo.compositions import DEFAULT_COMPOSITION, composition_label, composition_sets
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import EvalItem, limit_per_skill, load_eval_set, predict, summarize
from fusion_ui.frozen.methods import FROZEN_METHODS, FrozenMethod, frozen_method, method_of_folder
from fusion_ui.io import Checkpoint
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.runtime.cache import LoadedModel
from fusion_ui.runtime.jobs import Job, JobContext

KIND = "frozen-train"  # the job kind of a training run (a new one replaces the session's older one)
ARTEFACT = "prompt"  # folder prefix of prompts in the session's workspace (others: their kind)
MARKER = "prompt.json"  # what a finished prompt folder holds
# Defaults measured on the demo base (one CPU thread, 30 held-out items per set): ID-PT with one
# vector, lr 3e-2, 100 steps (~12 s) took upper 12 -> 43-47 % and mirror 20 -> 33 % with general
# kept at 97-100 %. Four fresh vectors start the frozen tiny LM at loss 6.6 instead of 1.0 and
# had not recovered after 100 steps (general fell to 20-87 %).
DEFAULT_STEPS = 100
DEFAULT_LENGTH = 1  # soft-prompt vectors
DEFAULT_LR = 3e-2  # prompt tuning wants a larger step than full fine-tuning
# The connector is an MLP (~66k weights on the demo base): the recursion demo's 3e-3 reached
# 98 % on back: rot13 in 600 steps (README); prompts take the larger step above.
DEFAULT_CONNECTOR_LR = 3e-3
DEFAULT_CANDIDATES = 3  # textual recursion: candidates pass 1 writes (the first greedy)
MAX_CANDIDATES = 8
CANDIDATE_TOKENS = 12  # the longest candidate: the demo's answers are words of up to 10 letters
DEFAULT_ITEMS = 50  # eval items per set and role
TRAIN_ITEMS = 200  # generated training rows per demo skill
# The composition's sets, as the recursion demo draws them (benchmarks/frozen_demo.py defaults:
# 600 training rows, 200 held-out words, seed 0), so the tab scores on the README's items.
COMPOSITION = composition_label(*DEFAULT_COMPOSITION)  # "back.rot13": its skill column
COMPOSITION_TRAIN, COMPOSITION_TEST = 600, 200
MERGE_RECIPE = "dare_ties.yaml"  # the demo's shipped all-expert merge
BASE_ROLE = "frozen LM alone"


@dataclass(frozen=True)
class FrozenTraining:
    """What the Train form gives."""

    model: str  # the frozen LM: a folder or hub id
    kind: str  # one of fusion_ui.frozen.METHOD_KINDS
    sets: tuple[str, ...] = ()  # demo sets to train on (expert skills, the composition)
    data: str = ""  # and/or a user JSONL / CSV file (prompt, answer, skill)
    length: int = DEFAULT_LENGTH  # prompt vectors (textual recursion: pass 2's; connector: none)
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch_size: int = 8
    encoder: str = ""  # ID-PT's frozen encoder (empty: the LM itself)
    first_prompt: str = ""  # textual recursion: pass 1's plain prompt folder (empty: the LM alone)
    candidates: int = DEFAULT_CANDIDATES  # textual recursion: candidates pass 1 writes


@dataclass(frozen=True)
class TrainedPrompt:
    """A finished run: where its part (prompt, connector or recursion) is, and what it trained
    against what stayed frozen."""

    folder: str
    model: str
    kind: str  # the method's kind
    losses: tuple[float, ...]
    seconds: float
    trainable: int  # parameters this run trained
    frozen: int  # parameters of the frozen LM
    trains: str = ""  # what they are ("the connector", ...)


class FrozenFacade:
    def __init__(self, context: AppContext, training: TrainingJobs) -> None:
        self.context = context
        self.training = training

    # -- what the form offers -----------------------------------------------------------------

    @staticmethod
    def methods() -> list[tuple[str, str]]:
        """(label, kind) of each frozen-LM method the engine has, in its order."""
        return [(m.label, m.kind) for m in FROZEN_METHODS]

    @staticmethod
    def is_recursive(kind: str) -> bool:
        """Whether ``kind`` is a recursive LM (the form shows its own fields then)."""
        return _method(kind).recursive

    @staticmethod
    def default_lr(kind: str) -> float:
        return DEFAULT_CONNECTOR_LR if _method(kind).kind == "connector" else DEFAULT_LR

    def default_sets(self, kind: str) -> list[str]:
        """What a method trains on by default: the composition for a recursion, else the skills."""
        if self.is_recursive(kind) and COMPOSITION in self._demo_rows:
            return [COMPOSITION]
        return self.demo_skills()

    def default_tasks(self, kind: str) -> list[str]:
        """What a method is scored on by default: as :meth:`default_sets`, the held-out sets."""
        tasks = self.score_sets()
        if self.is_recursive(kind) and COMPOSITION in tasks:
            return [COMPOSITION]
        return [t for t in tasks if t != COMPOSITION]

    def demo_model(self) -> str:
        """The demo family's base (the frozen LM preselected), or ``""`` without the demo."""
        demo = self.context.demo
        return str(demo.base) if demo is not None else ""

    def demo_skills(self) -> list[str]:
        """The demo's expert skills: the sets it trains on by default."""
        from fusion_ui.demo.skills import EXPERT_SKILLS

        demo = self.context.demo
        return [s for s in demo.experts if s in EXPERT_SKILLS] if demo is not None else []

    def eval_sets(self) -> dict[str, Path]:
        """The demo's shipped held-out sets (skill -> file)."""
        demo = self.context.demo
        return dict(demo.eval_sets) if demo is not None else {}

    def training_sets(self) -> list[tuple[str, str]]:
        """(label, name) of each demo training set: the expert skills, then the composition."""
        return [(_set_label(name), name) for name in self._demo_rows]

    def score_sets(self) -> list[str]:
        """The held-out sets Score offers: the shipped ones, then the composition's."""
        return [*self.eval_sets(), *self._composition]

    @staticmethod
    def set_label(name: str) -> str:
        return _set_label(name)

    @functools.cached_property
    def _demo_rows(self) -> dict[str, tuple[EvalItem, ...]]:
        rows = demo_training_sets(self.context, TRAIN_ITEMS)
        return rows | (
            {COMPOSITION: self._composition[COMPOSITION][0]} if self._composition else {}
        )

    @functools.cached_property
    def _composition(self) -> dict[str, tuple[tuple[EvalItem, ...], tuple[EvalItem, ...]]]:
        """The composition's (training, held-out) rows, with the demo only."""
        if self.context.demo is None:
            return {}
        train, test = composition_sets(COMPOSITION_TRAIN, COMPOSITION_TEST)
        return {COMPOSITION: (tuple(train), tuple(test))}

    def training_items(self, sets: Sequence[str], data: str = "") -> list[EvalItem]:
        """Rows of the chosen demo skill sets and of a user's JSONL / CSV file, mixed in one list."""
        rows = self._demo_rows
        unknown = [s for s in sets if s not in rows]
        if unknown:
            raise InputError(
                f"no demo training set {', '.join(unknown)}; there are: {', '.join(rows) or 'none'}"
            )
        items = [it for s in sets for it in rows[s]]
        path = (data or "").strip()
        if path:
            file = Path(path).expanduser()
            if not file.is_file():
                raise InputError(
                    f"{path}: no such file; give a .jsonl or .csv file with prompt and answer"
                )
            size = file.stat().st_size
            if size > self.context.limits.max_upload_bytes:
                raise InputError(
                    f"{path} is {size / 2**20:.1f} MiB; the app trains on files up to "
                    f"{self.context.limits.max_upload_bytes / 2**20:.0f} MiB"
                )
            items += load_eval_set(file)
        if not items:
            raise InputError(
                "pick a demo skill set or give a JSONL / CSV file (prompt, answer) to train on"
            )
        return items

    # -- training -----------------------------------------------------------------------------

    def start_training(self, session: str, form: FrozenTraining) -> Job[TrainedPrompt]:
        """Train a fresh part of ``form.kind`` beside the frozen LM, as a job; written into a
        new folder of the session's workspace when (and only if) the run finishes."""
        method = _method(form.kind)
        model = (form.model or "").strip()
        if not model:
            raise InputError("give the frozen LM: a model folder or a hub id")
        encoder = (form.encoder or "").strip() or None
        if encoder is not None and method.kind != "idpt":
            raise InputError(
                "only ID-PT reads its input with an encoder; clear the encoder, or pick ID-PT"
            )
        first = (form.first_prompt or "").strip() or None
        if first is not None:
            self._check_first_prompt(method, first)
        length = whole_number(form.length, "the prompt length")
        if method.kind != "connector" and not 1 <= length <= 256:
            raise InputError(f"the prompt length must be from 1 to 256 vectors, got {length}")
        candidates = whole_number(form.candidates, "the candidate count")
        if method.kind == "recursive" and not 1 <= candidates <= MAX_CANDIDATES:
            raise InputError(
                f"pass 1 writes from 1 to {MAX_CANDIDATES} candidates, got {candidates}"
            )
        config = train_config(form.steps, form.lr, form.batch_size)
        items = self.training_items(form.sets, form.data)
        frozen = _num_params(model)
        what = f"{ARTEFACT}-{method.kind}" if method.artefact == "prompt" else method.artefact
        out = self.training.new_folder(session, what)
        device = self.context.device
        common = {"config": config, "device": device}

        def train(progress: ProgressCallback, cancel: CancelToken) -> TrainedPrompt:
            from fusion_ui.frozen import (
                RecursionConfig,
                train_connector_run,
                train_frozen,
                train_textual_run,
            )

            run = {"progress": progress, "cancel": cancel, **common}
            if method.kind == "connector":
                done = train_connector_run(model, items, out, **run)
                trainable = done.trainable
            elif method.kind == "recursive":
                progress(Progress(0, config.steps, f"pass 1 writes {candidates} candidate(s) "
                                  f"per training question"))  # fmt: skip
                recursion = RecursionConfig(candidates=candidates, seed=config.seed,
                                            max_new_tokens=CANDIDATE_TOKENS)  # fmt: skip
                done = train_textual_run(model, items, out, first_prompt=first,
                                         recursion=recursion, length=length, **run)  # fmt: skip
                trainable = done.trainable
            else:
                done = train_frozen(method.kind, model, items, out, encoder=encoder,
                                    length=length, **run)  # fmt: skip
                trainable = tensor_params(Path(done.folder) / "prompt.safetensors")
            return TrainedPrompt(str(done.folder), model, method.kind, tuple(done.result.losses),
                                 done.result.seconds, trainable, frozen, method.trains)  # fmt: skip

        return self.training.start(
            session, KIND, train, steps=config.steps, label=f"{method.label} training"
        )

    def trained(self, session: str) -> list[str]:
        """The session's trained folders (prompts, connectors, recursions), newest first."""
        from fusion_ui.frozen.recursion_artefact import ARTEFACT_FILES

        found = [p for kind, marker in ARTEFACT_FILES.items()
                 for p in self.training.trained(session, kind, marker)]  # fmt: skip
        return [str(p) for p in sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)]

    def first_passes(self, session: str | None) -> list[tuple[str, str]]:
        """(label, folder) of what a textual recursion's pass 1 may be: the LM alone (``""``),
        or the LM behind a plain prompt the session (if any yet) trained."""
        found = self.trained(session) if session is not None else []
        prompts = [f for f in found if _folder_kind(f) == "prompt"]
        return [("the frozen LM alone", ""), *((f"LM + prompt {Path(f).name}", f) for f in prompts)]

    def curve(self, job: Job[TrainedPrompt]) -> go.Figure:
        return self.training.curve(job, "training loss")

    # -- scoring and generating side by side --------------------------------------------------

    def roles(self, prompt_dir: str) -> list[str]:
        """The rows of a comparison: the frozen LM with the trained part, the LM alone, each
        expert, the merge."""
        method = _folder_method(prompt_dir) if prompt_dir else None
        roles = [f"frozen LM + {method.name}"] if method is not None else []
        roles.append(BASE_ROLE)
        demo = self.context.demo
        if demo is not None:
            roles += [f"expert {skill}" for skill in demo.experts]
            if self._merge_recipe() is not None:
                roles.append("merge of the experts")
        return roles

    def start_scores(
        self,
        session: str,
        model: str,
        prompt_dir: str,
        tasks: Sequence[str],
        *,
        items: int = DEFAULT_ITEMS,
    ) -> Job[pd.DataFrame]:
        """Every role scored on the chosen held-out sets (greedy exact match per task, no
        perplexity: a textual recursion has none), as a job."""
        sets, offered = self.eval_sets(), self.score_sets()
        unknown = [t for t in tasks if t not in offered]
        if not tasks or unknown:
            raise InputError(f"pick the sets to score from: {', '.join(offered) or 'none shipped'}")
        n = whole_number(items, "items per set")
        if not 1 <= n <= self.context.limits.max_eval_items:
            raise InputError(
                f"items per set must be from 1 to {self.context.limits.max_eval_items}"
            )
        chosen: list[EvalItem] = []
        for task in tasks:
            chosen += load_eval_set(sets[task]) if task in sets else self._composition[task][1]
        chosen = limit_per_skill(chosen, n)
        lm, prompt_dir = self._check(model, prompt_dir)
        roles = self.roles(prompt_dir)

        def run(ctx: JobContext) -> pd.DataFrame:
            frames = []
            for k, role in enumerate(roles):
                ctx.check()
                ctx.progress(Progress(k, len(roles), f"scoring {role}"))
                item = self._role_model(role, lm, prompt_dir, ctx)
                frames.append(
                    predict(
                        item.model,
                        item.tokenizer,
                        chosen,
                        model_name=role,
                        device=self.context.device,
                    )
                )
            ctx.progress(Progress(len(roles), len(roles), "done"))
            return summarize(pd.concat(frames, ignore_index=True))

        return self.context.submit(session, "frozen-score", run, label="Frozen LM scores")

    def start_generation(
        self, session: str, model: str, prompt_dir: str, prompt: str, *, max_new_tokens: int = 16
    ) -> Job[dict[str, str]]:
        """Greedy answers of every role to one prompt, as a job."""
        from fusion_ui.evals import greedy_generate

        text = (prompt or "").strip()
        if not text:
            raise InputError("type a prompt, e.g. `mirror: hello =`")
        if len(text) > self.context.limits.max_prompt_chars:
            raise InputError(
                f"the prompt is {len(text)} characters; the app takes up to "
                f"{self.context.limits.max_prompt_chars}"
            )
        if not 1 <= int(max_new_tokens) <= self.context.limits.max_new_tokens:
            raise InputError(f"new tokens must be from 1 to {self.context.limits.max_new_tokens}")
        lm, prompt_dir = self._check(model, prompt_dir)
        roles = self.roles(prompt_dir)

        def run(ctx: JobContext) -> dict[str, str]:
            out = {}
            for role in roles:
                ctx.check()
                item = self._role_model(role, lm, prompt_dir, ctx)
                out[role] = greedy_generate(
                    item.model,
                    item.tokenizer,
                    [text],
                    max_new_tokens=int(max_new_tokens),
                    device=self.context.device,
                )[0]
            return out

        return self.context.submit(session, "frozen-generate", run, label="Frozen LM generation")

    @staticmethod
    def chart(scores: pd.DataFrame) -> go.Figure:
        return figures.score_chart(scores)

    def table(self, scores: pd.DataFrame, prompt_dir: str) -> pd.DataFrame:
        """A row per role: exact match (%) per task, and the parameters each trained (no
        perplexity column: a textual recursion could not fill it)."""
        wide = scores.pivot_table(
            index="model", columns="skill", values="exact_match", aggfunc="first"
        )
        order = [r for r in self.roles(prompt_dir) if r in wide.index]
        wide = (100 * wide.reindex(order)).round(1)
        wide.insert(0, "trained parameters", [self._trained_params(r, prompt_dir) for r in order])
        return wide.reset_index().rename_axis(columns=None)

    # -- internals ----------------------------------------------------------------------------

    def _check(self, model: str, prompt_dir: str) -> tuple[str, str]:
        lm = (model or "").strip()
        if not lm:
            raise InputError("give the frozen LM: a model folder or a hub id")
        folder = (prompt_dir or "").strip()
        if folder and _folder_method(folder) is None:
            raise InputError(
                f"{folder} holds no {MARKER} (nor connector.json, recursive.json): train a "
                "prompt or a recursive LM first, or pick one the app trained"
            )
        return lm, folder

    @staticmethod
    def _check_first_prompt(method: FrozenMethod, folder: str) -> None:
        if method.kind != "recursive":
            raise InputError(
                "only the textual recursion has a pass 1 to choose; clear it, or pick "
                "'recursive LM, textual'"
            )
        kind = _folder_kind(folder)
        if kind is None:
            raise InputError(
                f"{folder} holds no {MARKER}: train a plain prompt first for pass 1, or pick "
                "the frozen LM alone"
            )
        if kind != "prompt":
            raise InputError(
                f"pass 1 must be a plain prompt, and {folder} is {_method(kind).label}; train a "
                "plain prompt for it, or pick the frozen LM alone"
            )

    def _merge_recipe(self) -> Path | None:
        demo = self.context.demo
        path = demo.root / "recipes" / MERGE_RECIPE if demo is not None else None
        return path if path is not None and path.is_file() else None

    def _role_model(self, role: str, lm: str, prompt_dir: str, ctx: JobContext) -> LoadedModel:
        demo = self.context.demo
        if role == BASE_ROLE:
            return self.context.model(lm)
        if role.startswith("expert ") and demo is not None:
            return self.context.model(str(demo.experts[role.removeprefix("expert ")]))
        if role == "merge of the experts":
            return self._merged(ctx)
        method = _folder_method(prompt_dir)
        if method is not None and method.artefact != "prompt":
            return self._recursive(lm, prompt_dir)
        # the prompted LM: the cached LM with the trained prompt in front (its encoder, if not the LM)
        from fusion_ui.frozen import attach_prompt, read_prompt_info

        base = self.context.model(lm)
        info = read_prompt_info(prompt_dir)
        encoder = None
        if info.encoder is not None and not info.encoder_is_lm:
            encoder = self.context.model(info.encoder.path or info.encoder.ref).model
        prompted = attach_prompt(prompt_dir, base.model, base.tokenizer, encoder=encoder)
        return LoadedModel(prompted, base.tokenizer, 0, prompt_dir)

    def _recursive(self, lm: str, folder: str) -> LoadedModel:
        """A connector or a textual recursion on ``lm``, opened by the engine's ``load_frozen``
        and kept in the model cache like the LM (its folder never changes: one run, one folder)."""
        from fusion_ui.frozen import load_frozen

        size = self.context.loaded_bytes(lm)

        def load() -> LoadedModel:
            with Checkpoint.open(lm) as ck:
                dtype = self.context.load_dtype(ck)
            model, tokenizer = load_frozen(lm, folder, device=self.context.torch_device(),
                                           dtype=dtype)  # fmt: skip
            return LoadedModel(model, tokenizer, size, folder)

        key = f"frozen-part:{Path(folder).expanduser().absolute()}:{lm}"
        return self.context.cache.get(key, size, load)

    def _merged(self, ctx: JobContext) -> LoadedModel:
        """The demo's shipped merge of its experts, merged once into a model of the cache."""
        from fusion_ui.evals import load_causal_lm
        from fusion_ui.io.writer import ModelSink
        from fusion_ui.merge import plan_merge, run_merge
        from fusion_ui.recipe import load_recipe

        path = self._merge_recipe()
        if path is None:
            raise InputError(
                f"the demo family has no recipes/{MERGE_RECIPE} to merge its experts with"
            )
        recipe = load_recipe(path)
        base = recipe.base or recipe.models[0].model

        def load() -> LoadedModel:
            model, tokenizer = load_causal_lm(
                base, device=self.context.torch_device(), dtype=torch.float32
            )
            with plan_merge(recipe) as plan:
                run_merge(plan, ModelSink(model), device=self.context.device, cancel=ctx.cancel)
            return LoadedModel(model, tokenizer, self.context.loaded_bytes(base), str(path))

        return self.context.cache.get(f"frozen-merge:{path}", self.context.loaded_bytes(base), load)

    def _trained_params(self, role: str, prompt_dir: str) -> str:
        demo = self.context.demo
        if role == BASE_ROLE:
            return "0 (frozen)"
        if role.startswith("expert ") and demo is not None:
            return f"{_num_params(str(demo.experts[role.removeprefix('expert ')])):,} (all)"
        if role == "merge of the experts":
            return "0 (merged from the experts)"
        from fusion_ui.frozen.recursion_artefact import read_recursive_info

        method = _method(_folder_kind(prompt_dir) or "prompt")
        trains = method.trains
        if method.kind == "recursive" and read_recursive_info(prompt_dir).first is not None:
            trains = "the prompts of both passes"
        n = tensor_params(Path(prompt_dir) / f"{method.artefact}.safetensors")
        return f"{n:,} ({trains})"


def demo_training_sets(context: AppContext, per_skill: int) -> dict[str, tuple[EvalItem, ...]]:
    """Training rows of each demo expert skill (seeded; no word of any held-out set among them).

    The demo family ships its eval sets and five examples per skill, not the experts' training
    streams; these rows come from the same skills (:mod:`fusion_ui.demo.skills`), words drawn over
    all 26 letters as the eval words are."""
    from fusion_ui.demo.skills import EXPERT_SKILLS, make_example, random_word

    demo = context.demo
    if demo is None:
        return {}
    held_out = {
        it.prompt.split(": ", 1)[-1].removesuffix(" =")
        for p in demo.eval_sets.values()
        for it in load_eval_set(p)
    }
    sets: dict[str, tuple[EvalItem, ...]] = {}
    for skill in (s for s in demo.experts if s in EXPERT_SKILLS):
        rng = random.Random(f"frozen-app/{skill}/0")
        words: list[str] = []
        while len(words) < per_skill:
            word = random_word(rng, 3, 10)
            if word not in held_out and word not in words:
                words.append(word)
        examples = [make_example(skill, w) for w in words]
        sets[skill] = tuple(EvalItem(ex.prompt, ex.answer.strip(), ex.label) for ex in examples)
    return sets


def _method(kind: str) -> FrozenMethod:
    """The engine's method of ``kind``; an unknown one is a message naming the choices."""
    try:
        return frozen_method(kind)
    except FusionError:
        choices = ", ".join(m.kind for m in FROZEN_METHODS)
        raise InputError(f"unknown method {kind!r}; pick one of {choices}") from None


def _folder_method(folder: str) -> FrozenMethod | None:
    """The method that wrote ``folder``, or None when it holds no frozen-LM part."""
    try:
        return method_of_folder(folder)
    except FusionError:
        return None


def _folder_kind(folder: str) -> str | None:
    method = _folder_method(folder)
    return method.kind if method is not None else None


def _set_label(name: str) -> str:
    """How the form names a demo set (the composition reads as its prompt does)."""
    if name == COMPOSITION:
        outer, inner = DEFAULT_COMPOSITION
        return f"{outer}: {inner}: w (composition)"
    return name


def _num_params(ref: str) -> int:
    with Checkpoint.open(ref) as ck:
        return int(ck.num_params)


__all__ = [
    "COMPOSITION",
    "DEFAULT_CANDIDATES",
    "DEFAULT_ITEMS",
    "DEFAULT_LENGTH",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "FrozenFacade",
    "FrozenTraining",
    "TrainedPrompt",
    "demo_training_sets",
]
