"""The app's engine facade: everything the browser UI asks of the engine, in plain data.

The UI (``fusion_ui.ui``) never imports torch; it calls one :class:`Engine` and gets back
DataFrames, plotly figures, strings, dicts and :class:`~fusion_ui.runtime.Job` handles. The
engine side keeps what must not live in a browser session:

- loaded models in a :class:`~fusion_ui.runtime.cache.ModelCache` with an explicit byte budget
  and LRU eviction;
- a :class:`~fusion_ui.runtime.JobRunner`: every merge, analysis, preview, generation, scoring
  run and export is a job of one browser session, run one at a time on the device, with
  progress, partial results and cancel (``start_*`` return the job; the methods without
  ``start_`` run it and wait, for Python callers and tests);
- one preview model per browser session, loaded once with the base's architecture and
  re-merged in place on every "Merge";
- the history of merges and exports (recipes) and recent model selections, on disk;
- the bounds on what a request may ask (:class:`Limits`), so that no request holds the device
  for long: models per selection, prompt length against the model's context, new tokens,
  eval items;
- where the app may write: exports go under one export root.

Errors a user can fix are :class:`~fusion_ui.errors.FusionError`; the UI shows their message.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd
import plotly.graph_objects as go
import torch
import yaml

from fusion_ui import figures
from fusion_ui.deltas import OUTSIDE_BLOCKS, DeltaReport, analyze_deltas, dare_preview
from fusion_ui.deltas.preview import default_preview_tensor
from fusion_ui.errors import (
    ExportError,
    FusionError,
    GenerationError,
    InputError,
    RecipeError,
)
from fusion_ui.evals import EvalItem, limit_per_skill, load_causal_lm, load_eval_set
from fusion_ui.evals.run import predict, summarize
from fusion_ui.export import export_merge
from fusion_ui.figures.deltas import HEATMAP_METRICS
from fusion_ui.inspect import inspect_models
from fusion_ui.io import Checkpoint
from fusion_ui.io.source import short_names
from fusion_ui.io.writer import ModelSink, parse_size
from fusion_ui.kernels import warm_up_in_background
from fusion_ui.merge import plan_merge, run_merge
from fusion_ui.methods import METHODS
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.recipe import Recipe, recipe_from_dict
from fusion_ui.runtime.cache import LoadedModel, ModelCache, default_memory_budget
from fusion_ui.runtime.jobs import Job, JobContext, JobRunner, JobView

T = TypeVar("T")
Selection = dict[str, Any]  # {"base": ref, "models": [ref...], "labels": [label...]}: small, copyable

# Merges of models up to this size (as loaded) re-run on slider release when "live" is on.
LIVE_LIMIT_BYTES = 512 * 2**20
DEFAULT_EXPORT_ROOT = Path("~/fusion_ui/exports")
_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@/")
_EVAL_CHUNK = 16  # items scored between two cancel checks and progress reports
# Every control change re-reads the recipe: libyaml's safe loader is ~10x the pure-Python one.
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
DEFAULT_HEATMAP_METRIC = "median_abs"


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the app: each bound keeps a job short and the page usable."""

    max_finetunes: int = 6  # fine-tunes per selection (the Merge tab's slots)
    max_new_tokens: int = 256  # tokens generated per Compare column
    max_prompt_chars: int = 100_000  # characters before tokenizing (tokens are checked against the context)
    max_eval_items: int = 2_000  # items scored per model in one run
    max_upload_bytes: int = 20 * 2**20  # an uploaded eval set


LIMITS = Limits()


# -- the demo family -------------------------------------------------------------------------


@dataclass(frozen=True)
class DemoFamily:
    """The built-in demo family found on disk: ``base/``, ``expert_<skill>/``, ``evals/*.jsonl``."""

    root: Path
    base: Path
    experts: dict[str, Path]  # skill -> model folder
    eval_sets: dict[str, Path]  # skill -> JSONL file

    @classmethod
    def find(cls, root: str | os.PathLike[str] | None) -> DemoFamily | None:
        """The family under ``root``, or None when it is not (yet) built there."""
        if root is None:
            return None
        root = Path(root).expanduser().resolve()
        if not (root / "base" / "config.json").is_file():
            return None
        experts = {
            p.name.removeprefix("expert_"): p
            for p in sorted(root.glob("expert_*"))
            if (p / "config.json").is_file()
        }
        evals = {p.stem: p for p in sorted((root / "evals").glob("*.jsonl"))}
        return cls(root, root / "base", experts, evals) if experts else None

    def selection(self) -> Selection:
        models = [str(p) for p in self.experts.values()]
        return {"base": str(self.base), "models": models, "labels": short_names(models)}


def make_selection(base: str, models: Sequence[str], *, limits: Limits = LIMITS) -> Selection:
    """A selection from what a user typed; empty lines dropped, paths made absolute.

    Refuses more fine-tunes than the app merges at once, a fine-tune listed twice, and the base
    listed as a fine-tune: each is a mistake, and a long list would hold the app for minutes.
    """
    base = base.strip()
    refs = [m.strip() for m in models if m.strip()]
    if not base:
        raise RecipeError("choose a base model: a folder with config.json and weights, or a hub id")
    if not refs:
        raise RecipeError("add at least one fine-tune (one folder or hub id per line)")
    if len(refs) > limits.max_finetunes:
        raise InputError(
            f"{len(refs)} fine-tunes are listed; the app takes up to {limits.max_finetunes} at once. "
            "Remove some, or merge more with a recipe from the command line (fusion-ui merge)"
        )
    base, refs = _absolute(base), [_absolute(r) for r in refs]
    seen: set[str] = set()
    for ref in refs:
        if ref in seen:
            raise InputError(f"{ref} is listed twice; list each fine-tune once")
        if ref == base:
            raise InputError(f"{ref} is the base; list only its fine-tunes below it")
        seen.add(ref)
    return {"base": base, "models": refs, "labels": short_names(refs)}


def _absolute(ref: str) -> str:
    p = Path(ref).expanduser()
    return str(p.resolve()) if p.exists() else ref


def check_ref(ref: str) -> tuple[bool, str]:
    """Quick validation while a user types (no network, no weights read)."""
    ref = ref.strip()
    if not ref:
        return False, "empty"
    p = Path(ref).expanduser()
    try:
        exists = p.exists()
    except OSError as exc:  # a name too long, a folder without permission
        return False, f"`{ref[:80]}`: cannot be read ({exc.strerror or exc})"
    if exists:
        if not p.is_dir():
            return False, f"`{ref}` is a file; give the model's folder"
        if not (p / "config.json").is_file():
            return False, f"`{ref}` has no config.json: not a Hugging Face model folder"
        weights = [*p.glob("*.safetensors"), *p.glob("*.bin"), *p.glob("*.safetensors.index.json")]
        if not weights:
            return False, f"`{ref}` has no *.safetensors or *.bin weights"
        return True, f"`{p.name}`: model folder"
    if ref.startswith((".", "/", "~")) or os.sep in ref.strip("/").replace("/", "", 1):
        return False, f"`{ref}`: no such folder"
    if ref.count("/") == 1 and set(ref) <= _HUB_ID_CHARS:
        offline = os.environ.get("HF_HUB_OFFLINE") == "1"
        note = " (offline: only if already in the local hub cache)" if offline else ""
        return True, f"`{ref}`: hub id{note}"
    return False, f"`{ref}`: no such folder, and not a hub id `org/name`"


# -- results handed to the UI ----------------------------------------------------------------


@dataclass(frozen=True)
class InspectResult:
    table: pd.DataFrame  # one row per model
    verdict: str  # compatible / compatible with adjustments / incompatible
    findings: list[dict[str, str]]  # severity, model, message


@dataclass(frozen=True)
class MergeResult:
    recipe_yaml: str
    seconds: float
    tensors: int
    warnings: list[str]
    allow_large_deltas: bool = False

    @property
    def merged(self) -> dict[str, Any]:
        """What the session's ``merged`` state keeps: enough to rebuild this merge."""
        return {"recipe": self.recipe_yaml, "allow_large_deltas": self.allow_large_deltas}


@dataclass(frozen=True)
class ExportSummary:
    path: str
    files: list[str]
    size_bytes: int
    seconds: float
    card: str  # the model card (README.md) as written
    recipe_yaml: str
    mergekit_yaml: str | None
    warnings: list[str]


@dataclass(frozen=True)
class Column:
    """One Compare column: a model folder / hub id, or this session's preview merge."""

    label: str
    source: str  # folder or hub id; for the merge, the recipe's reference model
    recipe_yaml: str | None = None  # set for the merge column
    allow_large_deltas: bool = False

    @property
    def is_merge(self) -> bool:
        return self.recipe_yaml is not None


@dataclass(frozen=True)
class GenerationSettings:
    """How the Compare tab generates: greedy by default so columns are comparable."""

    max_new_tokens: int = 24
    greedy: bool = True
    temperature: float = 0.8  # only when not greedy
    seed: int = 0  # only when not greedy
    stop_at_newline: bool = True

    @classmethod
    def checked(cls, max_new_tokens: Any, greedy: Any, temperature: Any, seed: Any, stop_at_newline: Any,
                *, limits: Limits = LIMITS) -> GenerationSettings:
        """Settings from a form or an API call, every value checked (InputError naming it)."""
        n = _whole_number(max_new_tokens, "max new tokens")
        if not 1 <= n <= limits.max_new_tokens:
            raise InputError(f"max new tokens must be 1 to {limits.max_new_tokens}, got {n}")
        s = _whole_number(seed if seed is not None else 0, "the sampling seed")
        if not 0 <= s < 2**63:
            raise InputError(f"the sampling seed must be a whole number from 0 to 2**63 - 1, got {seed!r}")
        try:
            t = float(temperature)
        except (TypeError, ValueError):
            raise InputError(f"the temperature must be a number, got {temperature!r}") from None
        if not (math.isfinite(t) and 0 < t <= 10):
            raise InputError(f"the temperature must be above 0 and at most 10, got {temperature!r}")
        return cls(n, bool(greedy), t, s, bool(stop_at_newline))


def _whole_number(value: Any, what: str) -> int:
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise InputError(f"{what} must be a whole number, got {value!r}") from None
    if not math.isfinite(f) or f != int(f):
        raise InputError(f"{what} must be a whole number, got {value!r}")
    return int(f)


@dataclass
class _History:
    """Merges and exports, newest last, as JSON lines (survives restarts)."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        try:
            lines = self.path.read_text(encoding="utf-8").splitlines() if self.path.is_file() else []
        except (OSError, UnicodeDecodeError):
            lines = []  # an unreadable history starts afresh; the file is not touched
        for line in lines:
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash: skip it
            if isinstance(entry, dict) and isinstance(entry.get("id"), int) and "recipe" in entry:
                self.entries.append(entry)

    def add(self, entry: dict[str, Any]) -> dict[str, Any]:
        entry = {"id": (self.entries[-1]["id"] + 1) if self.entries else 1, **entry}
        self.entries.append(entry)
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")
        except OSError:
            pass  # a read-only home keeps the history for this run only
        return entry


# -- the facade ------------------------------------------------------------------------------


class Engine:
    """What the app does, behind one job runner and one model cache. Safe to share across sessions."""

    def __init__(
        self,
        *,
        demo_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        memory_budget: int | str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        export_root: str | os.PathLike[str] | None = None,
        live_limit_bytes: int = LIVE_LIMIT_BYTES,
        limits: Limits = LIMITS,
    ) -> None:
        self.demo = DemoFamily.find(demo_dir)
        self.device = device
        budget = default_memory_budget() if memory_budget is None else parse_size(memory_budget)
        self.cache = ModelCache(budget)
        self.live_limit_bytes = live_limit_bytes
        self.limits = limits
        self.state_dir = Path(state_dir or Path.home() / ".cache" / "fusion_ui" / "app").expanduser()
        self.export_root = Path(export_root or DEFAULT_EXPORT_ROOT).expanduser().absolute()
        self.history = _History(self.state_dir / "history.jsonl")
        self.jobs = JobRunner()
        self._reports: OrderedDict[str, DeltaReport] = OrderedDict()
        self._merges: dict[str, dict[str, Any]] = {}  # session -> what its preview model holds
        self._analyses: dict[tuple[str, str], Job[DeltaReport]] = {}  # (session, models) -> its analysis job
        # The CPU kernels and plotly's figure machinery load while the page opens, not on the first click.
        warm_up_in_background()
        threading.Thread(target=_warm_up_figures, name="fusion-ui-figures-warm-up", daemon=True).start()
        self._overviews: OrderedDict[tuple[str, str, str], dict[str, Any]] = OrderedDict()

    def close(self) -> None:
        """Cancel every job and stop the worker threads."""
        self.jobs.shutdown()

    # -- jobs and sessions ---------------------------------------------------------------------

    def cancel(self, session: str) -> bool:
        """Stop the session's queued and running jobs (a running one at its next unit of work)."""
        return bool(self.jobs.cancel(session))

    def stop(self, session: str, *, wait: float = 30.0) -> list[JobView]:
        """Cancel the session's jobs and wait (up to ``wait`` s each) until they have ended.

        Returns their final snapshots; empty when nothing of this session was running.
        """
        jobs = self.jobs.cancel(session)
        for job in jobs:
            job.wait(wait)
        return [job.view() for job in jobs]

    def last_job(self, session: str, kinds: Sequence[str] | None = None) -> JobView | None:
        """The session's newest job (of ``kinds``, if given), ended or not."""
        for job in reversed(self.jobs.jobs(session)):
            if kinds is None or job.kind in kinds:
                return job.view()
        return None

    def end_session(self, session: str) -> None:
        """A browser session is gone: cancel its jobs and free its preview model."""
        self.jobs.end_session(session)
        self.cache.discard(_preview_key(session))
        self._merges.pop(session, None)

    def session_merge(self, session: str) -> dict[str, Any] | None:
        """The merge the session's preview model holds (``MergeResult.merged``), or None."""
        return self._merges.get(session)

    def _submit(self, session: str, kind: str, fn: Callable[[JobContext], T], *, label: str,
                supersede: bool = True) -> Job[T]:
        return self.jobs.submit(session, kind, fn, label=label, supersede=supersede)

    @staticmethod
    def wait(job: Job[T], progress: ProgressCallback | None = None) -> T:
        """Wait for ``job``, passing its progress on; its result, or its error raised.

        If the waiting caller is interrupted, the job is cancelled.
        """
        try:
            for view in job.watch():
                if progress is not None and view.progress is not None:
                    progress(view.progress)
        except BaseException:
            if job._runner is not None:
                job._runner.cancel_job(job)
            raise
        return job.outcome()

    # -- Models tab ----------------------------------------------------------------------------

    def presets(self) -> dict[str, Selection]:
        """Named selections: the demo family first, then recent choices."""
        out: dict[str, Selection] = {}
        if self.demo is not None:
            out["Built-in demo family"] = self.demo.selection()
        for sel in self.recent():
            name = f"Recent: {Path(sel['base']).name} + " + ", ".join(sel["labels"])
            out.setdefault(name, sel)
        return out

    def recent(self) -> list[Selection]:
        path = self.state_dir / "recent.json"
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return []
        if not isinstance(data, list):
            return []
        out = []
        for s in data:
            if (isinstance(s, dict) and isinstance(s.get("base"), str) and isinstance(s.get("models"), list)
                    and all(isinstance(m, str) for m in s["models"])):
                out.append({"base": s["base"], "models": s["models"], "labels": short_names(s["models"])})
        return out[:8]

    def _remember(self, sel: Selection) -> None:
        items = [sel] + [s for s in self.recent() if (s["base"], s["models"]) != (sel["base"], sel["models"])]
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / "recent.json").write_text(json.dumps(items[:8], indent=1), encoding="utf-8")
        except OSError:
            pass

    def inspect(self, sel: Selection) -> InspectResult:
        """Headers-only compatibility check of the base and fine-tunes (fast, no weights read)."""
        report = inspect_models([sel["base"], *sel["models"]])
        table = report.table()
        table.insert(1, "label", ["base", *sel["labels"]])
        findings = [{"severity": f.severity, "model": f.model, "message": f.message} for f in report.findings]
        if report.verdict != "incompatible":
            self._remember(sel)
        return InspectResult(table, report.verdict, findings)

    def live_ok(self, sel: Selection | None) -> bool:
        """Whether a merge of this selection is small enough to re-run on every slider release."""
        if not sel:
            return False
        try:
            return self._loaded_bytes(sel["base"]) <= self.live_limit_bytes
        except FusionError:
            return False

    # -- Deltas tab ----------------------------------------------------------------------------

    def cached_report(self, sel: Selection) -> DeltaReport | None:
        """The delta analysis of ``sel`` if it is already in memory (no work)."""
        report = self._reports.get(_report_key(sel))
        if report is not None:
            self._reports.move_to_end(_report_key(sel))
        return report

    def start_delta_report(self, session: str, sel: Selection, *, figures_for: str | None = None) -> Job[DeltaReport]:
        """The delta analysis as a job (it finishes at once when the report is cached).

        While the session's analysis of the same models is queued or running (started ahead of
        time by :meth:`prefetch`, or by a click), that job is returned instead.
        ``figures_for`` (a heatmap metric): the job also builds the tab's first figures.
        """
        key = (session, _report_key(sel))
        running = self._analyses.get(key)
        if running is not None and not running.state.final:
            return running

        def run(ctx: JobContext) -> DeltaReport:
            report = self.cached_report(sel)
            if report is None:
                report = analyze_deltas(sel["base"], sel["models"], labels=sel["labels"], device=self.device,
                                        progress=ctx.progress, cancel=ctx.cancel)
                self._reports[_report_key(sel)] = report
                while len(self._reports) > 4:
                    self._reports.popitem(last=False)
            if figures_for is not None:
                self.delta_overview(sel, "", figures_for)
            return report

        job = self._submit(session, "analysis", run, label="delta analysis", supersede=False)
        self._analyses = {k: j for k, j in self._analyses.items() if not j.state.final}
        self._analyses[key] = job
        return job

    def prefetch(self, session: str, sel: Selection | None) -> bool:
        """Do ahead of time, for a small selection, what its first clicks will need: the delta
        analysis with the Deltas tab's first figures, and the session's preview model loaded
        for the first merge. Big models are left for an explicit click. Returns whether it did."""
        if not sel or not self.live_ok(sel):
            return False
        if self.cached_report(sel) is None:
            self.start_delta_report(session, sel, figures_for=DEFAULT_HEATMAP_METRIC)
        base = sel["base"]
        self._submit(session, "prepare", lambda ctx: self._preview_shell_for(session, base), label="preview model",
                     supersede=True)
        return True

    def delta_report(
        self, sel: Selection, *, progress: ProgressCallback | None = None, session: str = ""
    ) -> DeltaReport:
        """The delta analysis of the selection (memory, else computed as a job)."""
        return self.cached_report(sel) or self.wait(self.start_delta_report(session, sel), progress)

    def delta_overview(self, sel: Selection, model: str, metric: str, **kw: Any) -> dict[str, Any]:
        """Figures and tables of the Deltas tab for one fine-tune (``model`` a label), kept for the
        last few (selection, fine-tune, metric) asked for."""
        report = self.delta_report(sel, **kw)
        model = model if model in report.models else report.models[0]
        key = (_report_key(sel), model, metric)
        view = self._overviews.get(key)
        if view is None or view["report"] is not report:
            view = self._overviews[key] = self._overview(report, model, metric)
            while len(self._overviews) > 8:
                self._overviews.popitem(last=False)
        return view

    @staticmethod
    def _overview(report: DeltaReport, model: str, metric: str) -> dict[str, Any]:
        summary = report.summary[["model", "verdict", "reason"]].copy()
        return {
            "report": report,
            "models": list(report.models),
            "model": model,
            "summary": summary,
            "histogram": figures.delta_histogram(report),
            "heatmap": figures.layer_module_heatmap(report, model, metric=metric),
            "cosine": figures.pairwise_heatmap(report, metric="cosine"),
            "conflict": figures.pairwise_heatmap(report, metric="sign_conflict"),
            "top": report.risk_table(model, n=15),
            "tensors": sorted(report.tensors.loc[report.tensors["model"] == model, "tensor"]),
            "layers": [("outside blocks" if x == OUTSIDE_BLOCKS else f"layer {x}", x)
                       for x in sorted({int(x) for x in report.groups["layer"]})],
            "kinds": sorted({str(x) for x in report.groups["kind"]}),
        }

    @staticmethod
    def heatmap_metrics() -> dict[str, str]:
        """Metric key -> label for the layer × module heatmap."""
        return dict(HEATMAP_METRICS)

    def delta_drilldown(
        self, sel: Selection, *, tensor: str | None = None, layer: int | None = None, kind: str | None = None
    ) -> go.Figure:
        """|δ| histograms of every fine-tune for one tensor, or one layer and/or module kind."""
        report = self.delta_report(sel)
        if tensor:
            return figures.delta_histogram(report, tensor=tensor)
        return figures.delta_histogram(report, layer=layer, kind=kind)

    # -- the DARE preview ----------------------------------------------------------------------

    @staticmethod
    def previewable(method: str) -> bool:
        """Whether the DARE preview has something to show for ``method`` (a random drop)."""
        m = METHODS.get(method)
        return m is not None and m.uses_seed and "drop_rate" in {p.name for p in m.model_params()}

    def dare_target(self, recipe_yaml: str, label_or_ref: str, sel: Selection | None = None) -> dict[str, Any] | None:
        """What the DARE preview shows for one fine-tune of a recipe, or None when it shows nothing.

        Taken from the same resolved recipe the merge runs (the model's index in the recipe is
        DARE's random key; the tensor's drop rate and rescale are resolved with layer ramps and
        overrides), so the preview's mask is the merge's mask. ``label_or_ref`` is a selection
        label or a model reference.
        """
        recipe = self.parse_recipe(recipe_yaml)
        if not self.previewable(recipe.method) or not recipe.base:
            return None
        ref = label_or_ref
        if sel and label_or_ref in sel["labels"]:
            ref = sel["models"][sel["labels"].index(label_or_ref)]
        refs = [e.model for e in recipe.models]
        if ref not in refs:
            return {"model": ref, "in_recipe": False}
        index = refs.index(ref)
        return {"model": ref, "in_recipe": True, "index": index, "recipe": recipe}

    def start_dare_preview(
        self, session: str, recipe_yaml: str, label_or_ref: str, *, sel: Selection | None = None,
        tensor: str | None = None,
    ) -> Job[tuple[go.Figure | None, str]]:
        """Before/after histogram of DARE on one tensor of one fine-tune, as the merge will do it."""
        target = self.dare_target(recipe_yaml, label_or_ref, sel)
        label = _label_of(label_or_ref, sel)

        def run(ctx: JobContext) -> tuple[go.Figure | None, str]:
            if target is None:
                return None, "The preview shows DARE's random drop: pick a DARE method."
            if not target["in_recipe"]:
                return None, f"**{label}** is not in the merge (tick “use in the merge” to preview it)."
            recipe: Recipe = target["recipe"]
            index = target["index"]
            model = recipe.models[index].model
            name = tensor or self._preview_tensor(sel, model)
            # The merge's own plan (headers only): the tensor's parameters exactly as it merges them.
            with plan_merge(recipe, preflight=False) as plan:
                job = next((j for j in plan.jobs if j.name == name), None)
            if job is None:
                raise RecipeError(f"the base has no tensor named {name!r}")
            if not job.merged:
                return None, f"`{name}` is kept from the base (include/exclude): nothing is dropped."
            drop_rate = float(job.model_params[index]["drop_rate"])
            rescale = str(job.params.get("rescale", "inverse"))
            preview = dare_preview(recipe.base, model, name, drop_rate=drop_rate, seed=recipe.seed,
                                   model_index=index, rescale=rescale, device=self.device)
            text = (
                f"**{label}**, `{name}`: p = {drop_rate:g} keeps "
                f"{100 * preview.share_kept:.1f}% of the non-zero deltas; relative error of δ "
                f"{preview.rel_error:.2f}, which moves the weights by {100 * preview.rel_change_weights:.3f}%."
            )
            return figures.dare_preview_histogram(preview), text

        return self._submit(session, "preview", run, label="DARE preview")

    def dare_preview(
        self, sel: Selection, index: int, *, drop_rate: float, seed: int = 0, rescale: str = "inverse",
        tensor: str | None = None,
    ) -> tuple[go.Figure, str]:
        """Before/after histogram of DARE on one tensor of fine-tune ``index`` of a one-off recipe
        (every selected fine-tune in the merge, ``drop_rate`` for each)."""
        if not 0 <= index < len(sel["models"]):
            raise RecipeError(f"no fine-tune number {index}; the selection has {len(sel['models'])}")
        recipe = recipe_from_dict({
            "method": "dare_linear", "base": sel["base"], "seed": seed,
            "parameters": {"rescale": rescale},
            "models": [{"model": m, "drop_rate": drop_rate} for m in sel["models"]],
        })
        fig, text = self.wait(self.start_dare_preview("", recipe.to_yaml(), sel["models"][index], sel=sel,
                                                      tensor=tensor))
        return fig, text

    def _preview_tensor(self, sel: Selection | None, model: str) -> str:
        report = self.cached_report(sel) if sel else None
        if report is not None and model in sel["models"]:
            return default_preview_tensor(report.tensors, sel["labels"][sel["models"].index(model)])
        with Checkpoint.open(model) as ck:  # headers only: the largest matrix
            mats = [(i.numel, n) for n, i in ck.tensors.items() if len(i.shape) == 2 and "embed" not in n]
            if not mats:
                raise RecipeError("the fine-tune has no weight matrices to preview")
            return max(mats)[1]

    # -- Merge tab -----------------------------------------------------------------------------

    @staticmethod
    def method_schemas() -> dict[str, dict[str, Any]]:
        return {name: m.schema() for name, m in METHODS.items()}

    @staticmethod
    def parse_recipe(text: str) -> Recipe:
        """A recipe from the YAML box; every mistake is a RecipeError naming the field."""
        try:
            data = yaml.load(text, Loader=_YAML_LOADER)  # noqa: S506 - a safe loader (libyaml's when there)
        except yaml.YAMLError as exc:
            raise RecipeError(f"the recipe is not valid YAML: {exc}") from None
        recipe = recipe_from_dict(data)
        recipe.validate_for_method()
        return recipe

    def start_merge(
        self, session: str, recipe_yaml: str, *, allow_large_deltas: bool = False, record: bool = True,
        live: bool = False,
    ) -> Job[MergeResult]:
        """Merge into the session's preview model (in memory, nothing on disk), as a job.

        A new merge of the session replaces one still queued or running. ``record`` puts it in
        the history (merges the user asked for; live re-merges on slider release are not).
        """
        recipe = self.parse_recipe(recipe_yaml)

        def run(ctx: JobContext) -> MergeResult:
            start = time.perf_counter()
            self._merges.pop(session, None)
            item = self._preview_shell(session, recipe)
            item.recipe_yaml = None  # a failed or cancelled merge leaves a mix: never reuse it
            with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
                ctx.check()
                run_merge(plan, ModelSink(item.model), device=self.device, progress=ctx.progress,
                          cancel=ctx.cancel)
                warnings, tensors = list(plan.warnings), len(plan.jobs)
            item.recipe_yaml = recipe.to_yaml()
            if record:
                self.history.add(self._history_entry("merge", recipe))
            result = MergeResult(recipe.to_yaml(), time.perf_counter() - start, tensors, warnings,
                                 allow_large_deltas)
            self._merges[session] = result.merged
            return result

        return self._submit(session, "merge", run, label="live re-merge" if live else "merge")

    def merge_preview(
        self, session: str, recipe_yaml: str, *, progress: ProgressCallback | None = None,
        allow_large_deltas: bool = False, record: bool = True,
    ) -> MergeResult:
        """:meth:`start_merge` and wait for it."""
        return self.wait(self.start_merge(session, recipe_yaml, allow_large_deltas=allow_large_deltas,
                                          record=record), progress)

    def _preview_shell(self, session: str, recipe: Recipe) -> LoadedModel:
        """The session's preview model: loaded once with the reference model's architecture."""
        return self._preview_shell_for(session, recipe.base or recipe.models[0].model)

    def _preview_shell_for(self, session: str, ref: str) -> LoadedModel:
        key = _preview_key(session)
        item = self.cache.peek(key)
        if item is not None and item.source == ref:
            return item
        self.cache.discard(key)
        return self.cache.get(key, self._loaded_bytes(ref), lambda: self._load(ref))

    def preview_state(self, session: str) -> dict[str, torch.Tensor] | None:
        """The merged preview's weights (for tests and checks), or None if there is none."""
        item = self.cache.peek(_preview_key(session))
        if item is None or item.recipe_yaml is None:
            return None
        return {k: v.detach().cpu() for k, v in item.model.state_dict().items()}

    # -- Compare tab ---------------------------------------------------------------------------

    def columns(self, sel: Selection | None, merged: dict[str, Any] | str | None) -> list[Column]:
        """The Compare columns: base, every fine-tune, then the merge (if there is one)."""
        if not sel:
            return []
        cols = [Column("base", sel["base"])]
        cols += [Column(label, ref) for label, ref in zip(sel["labels"], sel["models"], strict=True)]
        if merged:
            info = {"recipe": merged} if isinstance(merged, str) else dict(merged)
            recipe_yaml = info.get("recipe")
            if recipe_yaml:
                cols.append(Column("merge", sel["base"], str(recipe_yaml), bool(info.get("allow_large_deltas"))))
        return cols

    def _model_for(self, column: Column, session: str, cancel: CancelToken | None = None) -> LoadedModel:
        """A loaded model: a folder/hub id from the cache, or the session's merge (re-merged if evicted)."""
        if column.recipe_yaml is not None:
            recipe = self.parse_recipe(column.recipe_yaml)
            item = self._preview_shell(session, recipe)
            if item.recipe_yaml != recipe.to_yaml():  # evicted or re-merged since: rebuild it
                item.recipe_yaml = None
                with plan_merge(recipe, allow_large_deltas=column.allow_large_deltas) as plan:
                    run_merge(plan, ModelSink(item.model), device=self.device, cancel=cancel)
                item.recipe_yaml = recipe.to_yaml()
            return item
        source = column.source
        return self.cache.get(f"model:{source}", self._loaded_bytes(source), lambda: self._load(source))

    def check_prompt(self, prompt: str) -> str:
        """The prompt, if it may be generated from (not empty, not past the character bound)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise InputError("type a prompt or pick an example first")
        if len(prompt) > self.limits.max_prompt_chars:
            raise InputError(
                f"the prompt has {len(prompt):,} characters; the app takes up to "
                f"{self.limits.max_prompt_chars:,}. Shorten it"
            )
        return prompt

    def start_generation(
        self,
        session: str,
        columns: Sequence[Column],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
    ) -> Job[list[str]]:
        """Generate the continuation of ``prompt`` by each column's model, one after another.

        The job emits ``(column, piece)`` as text appears and returns every column's text. A new
        generation of the session replaces one still running.
        """
        prompt = self.check_prompt(prompt)
        settings = GenerationSettings.checked(settings.max_new_tokens, settings.greedy, settings.temperature,
                                              settings.seed, settings.stop_at_newline, limits=self.limits)
        cols = list(columns)

        def run(ctx: JobContext) -> list[str]:
            texts = [""] * len(cols)
            for i, column in enumerate(cols):
                ctx.check()
                ctx.progress(Progress(i, len(cols), f"generating with {column.label}"))
                item = self._model_for(column, session, ctx.cancel)
                _check_context(item, prompt, settings.max_new_tokens, column.label)
                for piece in _stream(item, prompt, settings, ctx.cancel):
                    texts[i] += piece
                    ctx.emit((i, piece))
            ctx.progress(Progress(len(cols), len(cols), "done"))
            return texts

        return self._submit(session, "generate", run, label="generation")

    def generate_side_by_side(
        self,
        session: str,
        columns: Sequence[Column],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
    ) -> Iterator[list[str]]:
        """The texts so far (one per column) after every new piece, as :meth:`start_generation`
        writes them. Closing the iterator cancels the generation."""
        job = self.start_generation(session, columns, prompt, settings)
        return watch_texts(job, len(columns))

    def start_evaluation(
        self, session: str, columns: Sequence[Column], items: Sequence[EvalItem], *, per_skill: int | None = 20,
    ) -> Job[pd.DataFrame]:
        """Score every column's model on ``items``, as a job: one row per model × skill."""
        items = limit_per_skill(items, per_skill)
        if not items:
            raise RecipeError("the eval set is empty")
        if len(items) > self.limits.max_eval_items:
            raise InputError(
                f"{len(items):,} eval items; the app scores up to {self.limits.max_eval_items:,} per model in "
                "one run. Lower “items per skill” or use `fusion-ui eval` for a full run"
            )
        cols = list(columns)

        def run(ctx: JobContext) -> pd.DataFrame:
            frames = []
            total = len(cols) * len(items)
            done = 0
            for column in cols:
                ctx.check()
                item = self._model_for(column, session, ctx.cancel)
                budget = max(len(item.tokenizer.encode(" " + it.answer, add_special_tokens=False)) for it in items) + 2
                too_long = _first_too_long(item, [it.prompt for it in items], budget)
                if too_long is not None:
                    raise InputError(f"eval item {too_long[0] + 1} is {too_long[1]} tokens long; {column.label} "
                                     f"reads at most {too_long[2]} (with {budget} tokens for the answer)")
                for k in range(0, len(items), _EVAL_CHUNK):
                    ctx.check()
                    chunk = items[k : k + _EVAL_CHUNK]
                    ctx.progress(Progress(done, total, f"scoring {column.label}"))
                    frames.append(predict(item.model, item.tokenizer, chunk, model_name=column.label,
                                          max_new_tokens=budget, device=self.device))
                    done += len(chunk)
            ctx.progress(Progress(total, total, "done"))
            return summarize(pd.concat(frames, ignore_index=True))

        return self._submit(session, "score", run, label="scoring")

    def evaluate(
        self,
        session: str,
        columns: Sequence[Column],
        items: Sequence[EvalItem],
        *,
        per_skill: int | None = 20,
        progress: ProgressCallback | None = None,
    ) -> pd.DataFrame:
        """:meth:`start_evaluation` and wait for it."""
        return self.wait(self.start_evaluation(session, columns, items, per_skill=per_skill), progress)

    def eval_items(self, skills: Sequence[str], upload: str | None) -> list[EvalItem]:
        """Items from the demo eval sets named in ``skills`` and/or an uploaded JSONL/CSV file."""
        items: list[EvalItem] = []
        if self.demo is not None:
            for skill in skills:
                if skill in self.demo.eval_sets:
                    items += load_eval_set(self.demo.eval_sets[skill])
        if upload:
            try:
                size = Path(upload).stat().st_size
            except OSError as exc:
                raise InputError(f"cannot read the uploaded file: {exc.strerror or exc}") from None
            if size > self.limits.max_upload_bytes:
                raise InputError(f"the uploaded eval set is {size / 2**20:.1f} MiB; the app takes up to "
                                 f"{self.limits.max_upload_bytes / 2**20:.0f} MiB")
            items += load_eval_set(upload)
        if not items:
            raise RecipeError("choose at least one demo eval set or upload a .jsonl / .csv file")
        return items

    # -- Export tab ----------------------------------------------------------------------------

    def export_target(self, out_dir: str) -> Path:
        """Where an export from the app goes: a folder under the export root, never elsewhere.

        A relative name is taken under the root; an absolute path must lie inside it once
        symlinks are followed; ``..`` is refused outright.
        """
        text = (out_dir or "").strip()
        if not text:
            raise ExportError(f"choose an output folder: a name under the export root {self.export_root}")
        root = self.export_root.resolve()
        path = Path(text).expanduser()
        if ".." in path.parts:
            raise ExportError(f"{text}: `..` is not allowed in an export folder; give a name under {root}")
        target = (path if path.is_absolute() else root / path).resolve()
        if target == root or not target.is_relative_to(root):
            raise ExportError(
                f"{text} is outside the export root {root}: the app writes only below it. Give a "
                "folder name (it goes under the root), or restart the app with --export-root DIR"
            )
        return target

    def start_export(
        self,
        session: str,
        recipe_yaml: str,
        out_dir: str,
        *,
        dtype: str | None = None,
        max_shard_size: str = "2GB",
        tokenizer_source: str = "base",
        write_mergekit: bool = True,
        force: bool = False,
        allow_large_deltas: bool = False,
    ) -> Job[ExportSummary]:
        """Write the merge to a folder under the export root that ``transformers`` loads (atomic),
        as a job; recorded in the history. ``force`` replaces only an earlier export."""
        target = self.export_target(out_dir)
        recipe = self.parse_recipe(recipe_yaml)
        update: dict[str, Any] = {"tokenizer_source": tokenizer_source or "base"}
        if dtype:
            update["dtype"] = dtype
        recipe = recipe_from_dict({**yaml.safe_load(recipe.to_yaml()), **update})
        parse_size(max_shard_size)  # a bad size fails now, not after the queue

        def run(ctx: JobContext) -> ExportSummary:
            self.export_root.mkdir(parents=True, exist_ok=True)
            result = export_merge(
                recipe, target, force=force, max_shard_size=max_shard_size, device=self.device,
                progress=ctx.progress, cancel=ctx.cancel, write_mergekit=write_mergekit,
                allow_large_deltas=allow_large_deltas,
            )
            path = Path(result.path)
            mergekit = path / "mergekit_config.yml"
            summary = ExportSummary(
                path=str(path),
                files=result.files,
                size_bytes=sum(p.stat().st_size for p in path.iterdir() if p.is_file()),
                seconds=result.seconds,
                card=(path / "README.md").read_text(encoding="utf-8"),
                recipe_yaml=(path / "fusion_ui_recipe.yaml").read_text(encoding="utf-8"),
                mergekit_yaml=mergekit.read_text(encoding="utf-8") if mergekit.is_file() else None,
                warnings=list(result.warnings),
            )
            self.history.add(self._history_entry("export", recipe, path=str(path)))
            return summary

        return self._submit(session, "export", run, label="export", supersede=False)

    def export(
        self,
        session: str,
        recipe_yaml: str,
        out_dir: str,
        *,
        progress: ProgressCallback | None = None,
        **options: Any,
    ) -> ExportSummary:
        """:meth:`start_export` and wait for it."""
        return self.wait(self.start_export(session, recipe_yaml, out_dir, **options), progress)

    def history_table(self) -> pd.DataFrame:
        rows = [
            {"id": e["id"], "when": e.get("time", ""), "kind": e.get("kind", ""), "method": e.get("method", ""),
             "models": e.get("models", ""), "path": e.get("path", "")}
            for e in reversed(self.history.entries)
        ]
        return pd.DataFrame(rows, columns=["id", "when", "kind", "method", "models", "path"])

    def history_choices(self) -> list[tuple[str, int]]:
        """(label, id) of every history entry, newest first, for a picker."""
        return [(f"#{e['id']} · {e.get('kind', '')} · {e.get('method', '')} · {e.get('models', '')} · "
                 f"{e.get('time', '')}", int(e["id"])) for e in reversed(self.history.entries)]

    def history_recipe(self, entry_id: int) -> str:
        for e in self.history.entries:
            if e["id"] == entry_id:
                return str(e["recipe"])
        raise RecipeError(f"no merge #{entry_id} in the history")

    @staticmethod
    def _history_entry(kind: str, recipe: Recipe, **extra: Any) -> dict[str, Any]:
        return {
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "kind": kind,
            "method": recipe.method,
            "models": ", ".join(short_names([e.model for e in recipe.models])),
            "recipe": recipe.to_yaml(),
            **extra,
        }

    # -- loading -------------------------------------------------------------------------------

    def _load_dtype(self, ck: Checkpoint) -> torch.dtype:
        # float32 on the CPU (fast and exact for bf16 weights); the checkpoint's dtype on a GPU.
        return ck.main_dtype if self._device().type == "cuda" else torch.float32

    def _device(self) -> torch.device:
        from fusion_ui.device import resolve_device

        return resolve_device(self.device)

    def _loaded_bytes(self, ref: str) -> int:
        with Checkpoint.open(ref) as ck:
            return ck.num_params * torch.empty((), dtype=self._load_dtype(ck)).element_size()

    def _load(self, ref: str) -> LoadedModel:
        with Checkpoint.open(ref) as ck:
            dtype = self._load_dtype(ck)
        model, tokenizer = load_causal_lm(ref, device=self._device(), dtype=dtype)
        nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
        return LoadedModel(model, tokenizer, nbytes, ref)


def _warm_up_figures() -> None:
    try:
        figures.warm_up()
    except Exception:  # noqa: BLE001 - only an optimisation; the first real figure reports any error
        pass


def watch_texts(job: Job[list[str]], n_columns: int) -> Iterator[list[str]]:
    """Every column's text so far, after each piece a generation job emits; then the final texts.

    Closing the iterator (the browser went away, a new generation began) cancels the job.
    """
    texts = [""] * n_columns
    seen = 0
    try:
        for view in job.watch(every=0.25):
            pieces = job.items(seen)
            seen += len(pieces)
            for i, piece in pieces:
                texts[i] += piece
            if pieces:
                yield list(texts)
            if view.state.final:
                break
        job.outcome()  # raises the job's error (or CancelledError)
        yield list(texts)
    finally:
        if job._runner is not None and not job.state.final:
            job._runner.cancel_job(job)


def _preview_key(session: str) -> str:
    return f"merge:{session}"


def _report_key(sel: Selection) -> str:
    return json.dumps([sel["base"], sel["models"], sel["labels"]])


def _label_of(label_or_ref: str, sel: Selection | None) -> str:
    if sel and label_or_ref in sel["models"]:
        return sel["labels"][sel["models"].index(label_or_ref)]
    return label_or_ref if not sel or label_or_ref in sel["labels"] else Path(label_or_ref).name


def _context_size(model: torch.nn.Module) -> int | None:
    config = getattr(model, "config", None)
    for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _check_context(item: LoadedModel, prompt: str, max_new_tokens: int, label: str) -> None:
    """Refuse a prompt that, with the tokens to generate, does not fit the model's context."""
    context = _context_size(item.model)
    if context is None:
        return
    n = len(item.tokenizer(prompt)["input_ids"])
    if n + max_new_tokens > context:
        raise InputError(
            f"the prompt is {n:,} tokens and {max_new_tokens} more are to be generated, but {label} "
            f"reads at most {context:,} tokens. Shorten the prompt or generate fewer tokens"
        )


def _first_too_long(item: LoadedModel, prompts: Sequence[str], budget: int) -> tuple[int, int, int] | None:
    context = _context_size(item.model)
    if context is None:
        return None
    for k, prompt in enumerate(prompts):
        n = len(item.tokenizer(prompt)["input_ids"])
        if n + budget > context:
            return k, n, context
    return None


@torch.no_grad()
def _stream(item: LoadedModel, prompt: str, settings: GenerationSettings, cancel: CancelToken) -> Iterator[str]:
    """Pieces of text as ``model.generate`` produces them (transformers' TextIteratorStreamer).

    Stops within one token of a cancel; raises CancelledError then.
    """
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    done = threading.Event()

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
            stop = cancel.cancelled or done.is_set()
            return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

    tok, model = item.tokenizer, item.model
    dev = next(model.parameters()).device
    enc = tok(prompt, return_tensors="pt")
    streamer = TextIteratorStreamer(tok, skip_prompt=True, skip_special_tokens=True, timeout=120)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    kwargs: dict[str, Any] = {
        "input_ids": enc["input_ids"].to(dev),
        "attention_mask": enc["attention_mask"].to(dev),
        "max_new_tokens": settings.max_new_tokens,
        "streamer": streamer,
        "stopping_criteria": StoppingCriteriaList([_Stop()]),
        "pad_token_id": pad,
        "do_sample": not settings.greedy,
    }
    if settings.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
    else:
        torch.manual_seed(settings.seed)
        kwargs.update(temperature=max(settings.temperature, 1e-3), top_k=0, top_p=1.0)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            model.generate(**kwargs)
        except BaseException as exc:  # noqa: BLE001 - handed to the caller below
            errors.append(exc)
            streamer.end()

    worker = threading.Thread(target=run, name="fusion-ui-generate-model", daemon=True)
    worker.start()
    try:
        for piece in streamer:
            if settings.stop_at_newline and "\n" in piece:
                piece = piece.split("\n", 1)[0]
                done.set()  # generate() stops at its next step; the streamer then ends
            if piece:
                yield piece
            if done.is_set() or cancel.cancelled:
                break
    finally:
        done.set()
        worker.join()  # the stopping criterion ends generate() within one token
    if errors:
        raise GenerationError(f"generation failed: {errors[0]}") from errors[0]
    cancel.raise_if_cancelled()


__all__ = [
    "LIMITS",
    "Column",
    "DemoFamily",
    "Engine",
    "ExportSummary",
    "GenerationSettings",
    "InspectResult",
    "Limits",
    "LoadedModel",
    "MergeResult",
    "ModelCache",
    "Selection",
    "check_ref",
    "make_selection",
    "watch_texts",
]
