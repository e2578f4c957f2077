"""Statistics for data-aware merges from the app: the Merge tab's *Compute statistics*.

Fisher merging and RegMean read, for every model, a statistics folder (``fisher: DIR`` /
``gram: DIR``, :mod:`fusion_ui.stats`). Here one job computes them for every fine-tune of a
merge on a data set: the demo's skill examples (each demo expert on ≤ 200 examples of its own
skill, :mod:`fusion_ui.demo.stats_examples`, what ``benchmarks/datamerge_demo.py`` measures) or
a JSONL/CSV file of prompt/answer rows given by the user (the same file for every model).

Folders live under ``<state dir>/statistics/``, one per (kind, model fingerprint, dataset hash):
``<kind>-<model folder name>-<digest>``. Statistics are of a model and its data, not of a
session, so every session shares them: a folder that already holds statistics of the same
model (architecture and weights fingerprints, :mod:`fusion_ui.stats.check`) on the same data
(its sha256) is reused, not computed again. Each folder is written atomically
(:func:`fusion_ui.stats.save_statistics`): Stop ends the pass before its next batch and leaves
the folders finished before it, never half a folder.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from fusion_ui.app.context import AppContext
from fusion_ui.demo.stats_examples import STATS_EXAMPLES
from fusion_ui.errors import FusionError, InputError
from fusion_ui.progress import Progress
from fusion_ui.runtime.jobs import Job, JobContext
from fusion_ui.stats.data import Dataset

if TYPE_CHECKING:
    from fusion_ui.compose.artefact import ModelIdentity
    from fusion_ui.io.checkpoint import Checkpoint

MAX_EXAMPLES = 5000  # examples per model one pass from the app may read (the CLI has no bound)
FOLDER = "statistics"  # under the state dir


@dataclass(frozen=True)
class ModelStatistics:
    """One model's statistics folder, and whether this pass computed or reused it."""

    ref: str  # the model, as the merge names it
    folder: Path
    reused: bool  # an earlier pass wrote it (same model, same data)
    examples: int
    tokens: int
    seconds: float  # the pass (0 when reused)


@dataclass(frozen=True)
class StatisticsResult:
    """What a *Compute statistics* job gives back: a folder per model, in the models' order."""

    kind: str  # "fisher" or "gram": also the method's per-model parameter that names the folder
    models: tuple[ModelStatistics, ...]
    seconds: float

    def folders(self) -> dict[str, str]:
        """model reference -> its statistics folder (what the per-model path parameter takes)."""
        return {m.ref: str(m.folder) for m in self.models}

    def summary(self) -> str:
        """One sentence for a status line."""
        computed = [m for m in self.models if not m.reused]
        reused = len(self.models) - len(computed)
        parts = [f"{len(computed)} computed" + (f" in {self.seconds:.1f} s" if computed else "")]
        if reused:
            parts.append(f"{reused} reused (same model, same data)")
        return f"{self.kind} statistics of {len(self.models)} model(s): {', '.join(parts)}"


class StatisticsFacade:
    """Statistics passes as jobs, their folders under the state dir, reused when they fit."""

    def __init__(self, context: AppContext) -> None:
        self.context = context

    @property
    def root(self) -> Path:
        return self.context.state_dir / FOLDER

    @staticmethod
    def kind_of(method: str) -> str | None:
        """The statistics ``method`` reads ("fisher", "gram"), or None (not a data-aware merge)."""
        from fusion_ui.methods import METHODS

        m = METHODS.get(method)
        return None if m is None else m.capabilities.statistics

    # -- the data -------------------------------------------------------------------------------

    def demo_skill(self, ref: str) -> str | None:
        """The expert skill of a demo expert (replay or forgetful), or None for another model."""
        demo = self.context.demo
        if demo is None:
            return None
        here = _resolved(ref)
        for skill, path in [*demo.experts.items(), *demo.forgetful.items()]:
            if _resolved(str(path)) == here:
                return skill
        return None

    def demo_data_fits(self, models: Sequence[str]) -> bool:
        """Whether every model is a demo expert (so the demo's skill examples can be preselected)."""
        return bool(models) and all(self.demo_skill(m) is not None for m in models)

    def datasets(
        self, models: Sequence[str], data: str | os.PathLike[str] | None, *, examples: object
    ) -> dict[str, Dataset]:
        """The examples each model's pass reads: ``data`` None, the demo's skill examples (each
        expert its own skill); else the first ``examples`` rows of that JSONL/CSV file for all."""
        from fusion_ui.app.training import whole_number
        from fusion_ui.stats.data import dataset_of, read_dataset

        if not models:
            raise InputError("tick “use in the merge” for at least one fine-tune first")
        n = whole_number(examples, "the number of examples")
        if not 1 <= n <= MAX_EXAMPLES:
            raise InputError(f"the number of examples must be from 1 to {MAX_EXAMPLES:,}, got {n}")
        if data is None:
            from fusion_ui.demo.stats_examples import stats_examples

            out = {}
            for ref in models:
                skill = self.demo_skill(ref)
                if skill is None:
                    raise InputError(
                        f"{ref} is not one of the demo experts, so it has no demo skill examples: "
                        "choose “a file” and give a JSONL or CSV file of prompt/answer rows"
                    )
                out[ref] = dataset_of(stats_examples(skill, n), source=f"demo {skill} examples ({n})")
            return out
        text = os.fspath(data).strip()
        if not text:
            raise InputError(
                "give the path of a .jsonl or .csv file with prompt and answer columns (a few "
                "hundred rows is plenty), or choose the demo's examples"
            )
        path = Path(text).expanduser().absolute()
        if not path.is_file():
            raise InputError(
                f"the data file {path} does not exist: give a .jsonl or .csv file (on the machine "
                "that runs the app) with prompt and answer columns"
            )
        dataset = read_dataset(path, limit=n)
        return dict.fromkeys(models, dataset)

    # -- the job --------------------------------------------------------------------------------

    def start(
        self,
        session: str,
        method: str,
        models: Sequence[str],
        *,
        data: str | os.PathLike[str] | None = None,
        examples: object = STATS_EXAMPLES,
    ) -> Job[StatisticsResult]:
        """Compute (or reuse) ``method``'s statistics for every model of ``models``, as a job.

        The data is read now, so a bad path or an empty file is an error before anything runs.
        """
        kind = self.kind_of(method)
        if kind is None:
            raise InputError(
                f"method {method!r} reads no statistics: pick fisher or regmean to compute them"
            )
        models = list(dict.fromkeys(models))
        sets = self.datasets(models, data, examples=examples)
        total = sum(len(d.items) for d in sets.values())

        def run(ctx: JobContext) -> StatisticsResult:
            start = time.perf_counter()
            done: list[ModelStatistics] = []
            offset = 0
            for i, ref in enumerate(models):
                ctx.check()
                name = Path(ref).name or ref
                dataset = sets[ref]
                ctx.progress(Progress(offset, total, f"{name}: checking earlier statistics"))
                done.append(self._one(ctx, kind, ref, dataset, offset, total, f"{i + 1}/{len(models)} {name}"))
                offset += len(dataset.items)
                ctx.progress(Progress(offset, total, f"{name}: done"))
            return StatisticsResult(kind, tuple(done), time.perf_counter() - start)

        return self.context.submit(session, "statistics", run, label=f"{kind} statistics")

    def compute(
        self,
        session: str,
        method: str,
        models: Sequence[str],
        *,
        data: str | os.PathLike[str] | None = None,
        examples: object = STATS_EXAMPLES,
    ) -> StatisticsResult:
        """:meth:`start` and wait for it."""
        return self.context.wait(self.start(session, method, models, data=data, examples=examples))

    def _one(
        self, ctx: JobContext, kind: str, ref: str, dataset: Dataset, offset: int, total: int, what: str
    ) -> ModelStatistics:
        from fusion_ui.io import Checkpoint
        from fusion_ui.stats.identity import identify_checkpoint
        from fusion_ui.stats.run import compute_statistics

        with Checkpoint.open(ref) as ckpt:
            identity = identify_checkpoint(ckpt)
            folder = self.folder_for(kind, Path(ref).name or ref, identity, dataset)
            earlier = _reusable(folder, kind, ckpt, identity, dataset)
        if earlier is not None:
            return ModelStatistics(ref, folder, True, earlier[0], earlier[1], 0.0)

        def progress(p: Progress) -> None:
            ctx.progress(Progress(offset + p.done, total, f"{what}: {p.message}"))

        run = compute_statistics(kind, ref, dataset, folder, device=self.context.device, force=True,
                                 progress=progress, cancel=ctx.cancel)
        return ModelStatistics(ref, run.path, False, run.examples, run.tokens, run.seconds)

    def folder_for(self, kind: str, name: str, identity: ModelIdentity, dataset: Dataset) -> Path:
        """Where ``kind`` statistics of the model ``identity`` on ``dataset`` are kept (``name``:
        the model's folder name, for a person reading the state dir)."""
        key = json.dumps([kind, identity.config_sha256, identity.weights_sha256, dataset.sha256, "eos"])
        digest = hashlib.sha256(key.encode()).hexdigest()[:16]
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "model"
        return self.root / f"{kind}-{safe[:48]}-{digest}"


def _reusable(
    folder: Path, kind: str, ckpt: Checkpoint, identity: ModelIdentity, dataset: Dataset
) -> tuple[int, int] | None:
    """(examples, tokens) of the statistics already in ``folder`` if they are ``kind`` statistics
    of exactly this model on exactly this data; None when they must be computed."""
    from fusion_ui.stats.artefact import CONFIG_FILE
    from fusion_ui.stats.check import check_statistics

    if not (folder / CONFIG_FILE).is_file():
        return None
    try:
        info = check_statistics(str(folder), kind, ckpt, identity, who=str(folder))
    except FusionError:
        return None  # unreadable or of another model: computed again, over it
    if info.dataset.get("sha256") != dataset.sha256:
        return None
    return info.examples, info.tokens


def _resolved(ref: str) -> str:
    try:
        return str(Path(ref).expanduser().resolve())
    except OSError:
        return ref


__all__ = ["MAX_EXAMPLES", "STATS_EXAMPLES", "ModelStatistics", "StatisticsFacade", "StatisticsResult"]
