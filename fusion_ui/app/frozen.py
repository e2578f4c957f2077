"""The Frozen LM tab's facade: a soft prompt trained in front of a frozen LM (ID-PT or plain
prompt tuning, arXiv 2204.10019), then scored and generated beside the LM alone, each expert of
the demo family and their merge.

Training is :func:`fusion_ui.frozen.train_frozen` run as a job through
:class:`~fusion_ui.app.training.TrainingJobs` (a live loss history, Stop at the next step,
the prompt written atomically into the session's workspace only when the run ends). Scoring and
generation load the LM once (the app's model cache), put the trained prompt in front of it, and
run every role on the same items, as the Compose tab does for CALM.
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
from fusion_ui.errors import FusionError, InputError
from fusion_ui.evals import EvalItem, limit_per_skill, load_eval_set, predict, summarize
from fusion_ui.io import Checkpoint
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.runtime.cache import LoadedModel
from fusion_ui.runtime.jobs import Job, JobContext

KIND = "frozen-train"  # the job kind of a training run (a new one replaces the session's older one)
ARTEFACT = "prompt"  # folder prefix in the session's workspace
MARKER = "prompt.json"  # what a finished prompt folder holds
# Defaults measured on the demo base (one CPU thread, 30 held-out items per set): ID-PT with one
# vector, lr 3e-2, 100 steps (~12 s) took upper 12 -> 43-47 % and mirror 20 -> 33 % with general
# kept at 97-100 %. Four fresh vectors start the frozen tiny LM at loss 6.6 instead of 1.0 and
# had not recovered after 100 steps (general fell to 20-87 %).
DEFAULT_STEPS = 100
DEFAULT_LENGTH = 1  # soft-prompt vectors
DEFAULT_LR = 3e-2  # prompt tuning wants a larger step than full fine-tuning
DEFAULT_ITEMS = 50  # eval items per set and role
TRAIN_ITEMS = 200  # generated training rows per demo skill
MERGE_RECIPE = "dare_ties.yaml"  # the demo's shipped all-expert merge
METHOD_NAMES = {"idpt": "ID-PT (input-dependent prompt)", "prompt": "plain prompt tuning"}
BASE_ROLE = "frozen LM alone"


@dataclass(frozen=True)
class FrozenTraining:
    """What the Train form gives."""

    model: str  # the frozen LM: a folder or hub id
    kind: str  # one of fusion_ui.frozen.KINDS
    sets: tuple[str, ...] = ()  # demo skill sets to train on
    data: str = ""  # and/or a user JSONL / CSV file (prompt, answer, skill)
    length: int = DEFAULT_LENGTH
    steps: int = DEFAULT_STEPS
    lr: float = DEFAULT_LR
    batch_size: int = 8
    encoder: str = ""  # ID-PT's frozen encoder (empty: the LM itself)


@dataclass(frozen=True)
class TrainedPrompt:
    """A finished run: where its prompt is, and what it trained against what stayed frozen."""

    folder: str
    model: str
    kind: str
    losses: tuple[float, ...]
    seconds: float
    trainable: int  # parameters of the prompt (generator)
    frozen: int  # parameters of the frozen LM


class FrozenFacade:
    def __init__(self, context: AppContext, training: TrainingJobs) -> None:
        self.context = context
        self.training = training

    # -- what the form offers -----------------------------------------------------------------

    @staticmethod
    def methods() -> list[tuple[str, str]]:
        """(label, kind) of each prompt method the engine has, in its order."""
        from fusion_ui.frozen import KINDS

        return [(METHOD_NAMES.get(k, k), k) for k in KINDS]

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
        """The demo's held-out sets (skill -> file)."""
        demo = self.context.demo
        return dict(demo.eval_sets) if demo is not None else {}

    @functools.cached_property
    def _demo_rows(self) -> dict[str, tuple[EvalItem, ...]]:
        return demo_training_sets(self.context, TRAIN_ITEMS)

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
        """Train a fresh prompt of ``form.kind`` in front of the frozen LM, as a job; written
        into a new folder of the session's workspace when (and only if) the run finishes."""
        from fusion_ui.frozen import KINDS, train_frozen

        model = (form.model or "").strip()
        if not model:
            raise InputError("give the frozen LM: a model folder or a hub id")
        if form.kind not in KINDS:
            raise InputError(f"unknown method {form.kind!r}; pick one of {', '.join(KINDS)}")
        encoder = (form.encoder or "").strip() or None
        if encoder is not None and form.kind != "idpt":
            raise InputError(
                "only ID-PT reads its input with an encoder; clear the encoder, or pick ID-PT"
            )
        length = whole_number(form.length, "the prompt length")
        if not 1 <= length <= 256:
            raise InputError(f"the prompt length must be from 1 to 256 vectors, got {length}")
        config = train_config(form.steps, form.lr, form.batch_size)
        items = self.training_items(form.sets, form.data)
        frozen = _num_params(model)
        out = self.training.new_folder(session, f"{ARTEFACT}-{form.kind}")
        device = self.context.device

        def train(progress: ProgressCallback, cancel: CancelToken) -> TrainedPrompt:
            done = train_frozen(
                form.kind,
                model,
                items,
                out,
                encoder=encoder,
                length=length,
                config=config,
                device=device,
                progress=progress,
                cancel=cancel,
            )
            return TrainedPrompt(
                str(done.folder),
                model,
                form.kind,
                tuple(done.result.losses),
                done.result.seconds,
                tensor_params(Path(done.folder) / "prompt.safetensors"),
                frozen,
            )

        return self.training.start(
            session,
            KIND,
            train,
            steps=config.steps,
            label=f"{METHOD_NAMES.get(form.kind, form.kind)} training",
        )

    def trained(self, session: str) -> list[str]:
        """The session's trained prompt folders, newest first."""
        return [str(p) for p in self.training.trained(session, ARTEFACT, MARKER)]

    def curve(self, job: Job[TrainedPrompt]) -> go.Figure:
        return self.training.curve(job, "prompt training loss")

    # -- scoring and generating side by side --------------------------------------------------

    def roles(self, prompt_dir: str) -> list[str]:
        """The rows of a comparison: the prompted LM, the LM alone, each expert, the merge."""
        kind = _prompt_kind(prompt_dir) if prompt_dir else None
        roles = [f"frozen LM + {METHOD_NAMES.get(kind, kind)}"] if kind else []
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
        """Every role scored on the chosen held-out sets (exact match per task), as a job."""
        sets = self.eval_sets()
        unknown = [t for t in tasks if t not in sets]
        if not tasks or unknown:
            raise InputError(f"pick the sets to score from: {', '.join(sets) or 'none shipped'}")
        n = whole_number(items, "items per set")
        if not 1 <= n <= self.context.limits.max_eval_items:
            raise InputError(
                f"items per set must be from 1 to {self.context.limits.max_eval_items}"
            )
        chosen: list[EvalItem] = []
        for task in tasks:
            chosen += load_eval_set(sets[task])
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
        """A row per role: exact match (%) per task, and the parameters each trained."""
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
        if folder and not (Path(folder).expanduser() / MARKER).is_file():
            raise InputError(
                f"{folder} holds no {MARKER}: train a prompt first, or pick one the app trained"
            )
        return lm, folder

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
        # the prompted LM: the cached LM with the trained prompt in front (its encoder, if not the LM)
        from fusion_ui.frozen import attach_prompt, read_prompt_info

        base = self.context.model(lm)
        info = read_prompt_info(prompt_dir)
        encoder = None
        if info.encoder is not None and not info.encoder_is_lm:
            encoder = self.context.model(info.encoder.path or info.encoder.ref).model
        prompted = attach_prompt(prompt_dir, base.model, base.tokenizer, encoder=encoder)
        return LoadedModel(prompted, base.tokenizer, 0, prompt_dir)

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
        return f"{tensor_params(Path(prompt_dir) / 'prompt.safetensors'):,} (the prompt)"


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


def _prompt_kind(folder: str) -> str | None:
    from fusion_ui.frozen import read_prompt_info

    try:
        return str(read_prompt_info(folder).prompt.kind)
    except FusionError:
        return None


def _num_params(ref: str) -> int:
    with Checkpoint.open(ref) as ck:
        return int(ck.num_params)


__all__ = [
    "DEFAULT_ITEMS",
    "DEFAULT_LENGTH",
    "DEFAULT_LR",
    "DEFAULT_STEPS",
    "FrozenFacade",
    "FrozenTraining",
    "TrainedPrompt",
    "demo_training_sets",
]
