"""The app's engine facade: everything the browser UI asks of the engine, in plain data.

The UI (``fusion_ui.ui``) never imports torch; it calls one :class:`Engine` and gets back
DataFrames, plotly figures, strings and dicts. The engine side keeps what must not live in a
browser session:

- loaded models in a :class:`ModelCache` with an explicit byte budget and LRU eviction;
- one work lock, so merges, generations, evals, exports and analyses never fight for the same
  memory (the UI also puts those events in one Gradio concurrency group);
- one preview model per browser session, loaded once with the base's architecture and
  re-merged in place (``merge_into_model``) on every "Merge";
- the history of merges (recipes) and recent model selections, on disk.

Errors a user can fix are :class:`~fusion_ui.errors.FusionError`; the UI shows their message.
"""

from __future__ import annotations

import json
import os
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import torch
import yaml

from fusion_ui import figures
from fusion_ui.deltas import OUTSIDE_BLOCKS, DeltaReport, analyze_deltas, dare_preview
from fusion_ui.deltas.preview import default_preview_tensor
from fusion_ui.errors import FusionError, ModelSourceError, RecipeError
from fusion_ui.evals import EvalItem, evaluate, limit_per_skill, load_causal_lm, load_eval_set
from fusion_ui.export import export_merge
from fusion_ui.figures.deltas import HEATMAP_METRICS
from fusion_ui.inspect import inspect_models
from fusion_ui.io import Checkpoint
from fusion_ui.io.source import short_names
from fusion_ui.io.writer import ModelSink, parse_size
from fusion_ui.merge import merge_into_model, plan_merge, run_merge
from fusion_ui.methods import METHODS
from fusion_ui.progress import CancelToken, Progress, ProgressCallback
from fusion_ui.recipe import Recipe, recipe_from_dict

Selection = dict[str, Any]  # {"base": ref, "models": [ref...], "labels": [label...]}: small, copyable

# Merges of models up to this size (as loaded) re-run on slider release when "live" is on.
LIVE_LIMIT_BYTES = 512 * 2**20
_HUB_ID_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.@/")


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


def make_selection(base: str, models: Sequence[str]) -> Selection:
    """A selection from what a user typed; empty lines dropped, paths made absolute."""
    base = base.strip()
    refs = [m.strip() for m in models if m.strip()]
    if not base:
        raise RecipeError("choose a base model: a folder with config.json and weights, or a hub id")
    if not refs:
        raise RecipeError("add at least one fine-tune (one folder or hub id per line)")
    base, refs = _absolute(base), [_absolute(r) for r in refs]
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
    if p.exists():
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


# -- the model cache -------------------------------------------------------------------------


@dataclass
class LoadedModel:
    """A model in memory and what it takes."""

    model: torch.nn.Module
    tokenizer: Any
    nbytes: int
    source: str  # the folder or hub id it was loaded from
    recipe_yaml: str | None = None  # for merge previews: the recipe merged into it


class ModelCache:
    """Loaded models under a byte budget; the least recently used go first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return sum(m.nbytes for m in self._items.values())

    def keys(self) -> list[str]:
        return list(self._items)

    def peek(self, key: str) -> LoadedModel | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def get(self, key: str, nbytes: int, load: Callable[[], LoadedModel]) -> LoadedModel:
        """The cached model, or ``load()`` after evicting enough older ones."""
        item = self.peek(key)
        if item is not None:
            return item
        if nbytes > self.budget_bytes:
            raise ModelSourceError(
                f"{key} needs about {nbytes / 2**30:.2f} GiB in memory, more than the app's "
                f"budget of {self.budget_bytes / 2**30:.2f} GiB; restart with a larger "
                "--memory-budget or pick smaller models"
            )
        self.make_room(nbytes)
        item = load()
        with self._lock:
            self._items[key] = item
        return item

    def make_room(self, nbytes: int) -> None:
        with self._lock:
            while self._items and self.used_bytes + nbytes > self.budget_bytes:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


def default_memory_budget() -> int:
    """Half the machine's RAM: room for the models with the OS and the browser beside them."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


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
class GenerationSettings:
    """How the Compare tab generates: greedy by default so columns are comparable."""

    max_new_tokens: int = 24
    greedy: bool = True
    temperature: float = 0.8  # only when not greedy
    seed: int = 0  # only when not greedy
    stop_at_newline: bool = True


@dataclass
class _History:
    """Merges and exports, newest last, as JSON lines (survives restarts)."""

    path: Path
    entries: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.path.is_file():
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    self.entries.append(json.loads(line))
                except json.JSONDecodeError:
                    continue  # a torn last line from a crash: skip it

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
    """What the app does, behind one lock and one model cache. Safe to share across sessions."""

    def __init__(
        self,
        *,
        demo_dir: str | os.PathLike[str] | None = None,
        device: str = "auto",
        memory_budget: int | str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        live_limit_bytes: int = LIVE_LIMIT_BYTES,
    ) -> None:
        self.demo = DemoFamily.find(demo_dir)
        self.device = device
        budget = default_memory_budget() if memory_budget is None else parse_size(memory_budget)
        self.cache = ModelCache(budget)
        self.live_limit_bytes = live_limit_bytes
        self.state_dir = Path(state_dir or Path.home() / ".cache" / "fusion_ui" / "app").expanduser()
        self.history = _History(self.state_dir / "history.jsonl")
        self.work = threading.Lock()  # one queue for all heavy work (plain Lock: any thread may release)
        self._tokens: dict[str, CancelToken] = {}
        self._reports: OrderedDict[str, DeltaReport] = OrderedDict()

    # -- work queue and cancellation -----------------------------------------------------------

    def _token(self, session: str) -> CancelToken:
        token = CancelToken()
        self._tokens[session] = token
        return token

    def cancel(self, session: str) -> bool:
        """Stop the session's running merge, export or analysis at the next tensor."""
        token = self._tokens.get(session)
        if token is None or token.cancelled:
            return False
        token.cancel()
        return True

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
            return [s for s in data if isinstance(s, dict) and "base" in s and "models" in s][:8]
        except (OSError, json.JSONDecodeError):
            return []

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

    def delta_report(
        self, sel: Selection, *, progress: ProgressCallback | None = None, session: str = ""
    ) -> DeltaReport:
        """The delta analysis of the selection (memory, then disk cache, then computed)."""
        key = json.dumps([sel["base"], sel["models"], sel["labels"]])
        report = self._reports.get(key)
        if report is not None:
            self._reports.move_to_end(key)
            return report
        with self.work:
            report = analyze_deltas(
                sel["base"], sel["models"], labels=sel["labels"], device=self.device,
                progress=progress, cancel=self._token(session),
            )
        self._reports[key] = report
        while len(self._reports) > 4:
            self._reports.popitem(last=False)
        return report

    def delta_overview(self, sel: Selection, model: str, metric: str, **kw: Any) -> dict[str, Any]:
        """Figures and tables of the Deltas tab for one fine-tune (``model`` a label)."""
        report = self.delta_report(sel, **kw)
        model = model if model in report.models else report.models[0]
        summary = report.summary[["model", "verdict", "reason"]].copy()
        cols = ["tensor", "shape", "median_abs", "max_abs", "share_above_0.005", "share_above_0.01", "verdict"]
        top = report.top_tensors(model, n=15)
        return {
            "models": list(report.models),
            "model": model,
            "summary": summary,
            "histogram": figures.delta_histogram(report),
            "heatmap": figures.layer_module_heatmap(report, model, metric=metric),
            "cosine": figures.pairwise_heatmap(report, metric="cosine"),
            "conflict": figures.pairwise_heatmap(report, metric="sign_conflict"),
            "top": top[[c for c in cols if c in top.columns]],
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

    def dare_preview(
        self, sel: Selection, index: int, *, drop_rate: float, seed: int = 0, rescale: str = "inverse",
        tensor: str | None = None,
    ) -> tuple[go.Figure, str]:
        """Before/after histogram of DARE on one tensor of fine-tune ``index``, and a sentence."""
        if not 0 <= index < len(sel["models"]):
            raise RecipeError(f"no fine-tune number {index}; the selection has {len(sel['models'])}")
        tensor = tensor or self._preview_tensor(sel, index)
        with self.work:
            preview = dare_preview(
                sel["base"], sel["models"][index], tensor, drop_rate=drop_rate, seed=seed,
                model_index=index, rescale=rescale if rescale in ("inverse", "l1", "none") else "inverse",
                device=self.device,
            )
        text = (
            f"**{sel['labels'][index]}**, `{tensor}`: p = {drop_rate:g} keeps "
            f"{100 * preview.share_kept:.1f}% of the non-zero deltas; relative error of δ "
            f"{preview.rel_error:.2f}, which moves the weights by {100 * preview.rel_change_weights:.3f}%."
        )
        return figures.dare_preview_histogram(preview), text

    def _preview_tensor(self, sel: Selection, index: int) -> str:
        key = json.dumps([sel["base"], sel["models"], sel["labels"]])
        report = self._reports.get(key)
        if report is not None:
            return default_preview_tensor(report.tensors, sel["labels"][index])
        with Checkpoint.open(sel["models"][index]) as ck:  # headers only: the largest matrix
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
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise RecipeError(f"the recipe is not valid YAML: {exc}") from None
        recipe = recipe_from_dict(data)
        recipe.validate_for_method()
        return recipe

    def merge_preview(
        self, session: str, recipe_yaml: str, *, progress: ProgressCallback | None = None
    ) -> MergeResult:
        """Merge into the session's preview model (in memory, nothing on disk)."""
        recipe = self.parse_recipe(recipe_yaml)
        start = time.perf_counter()
        with self.work:
            item = self._preview_shell(session, recipe)
            item.recipe_yaml = None  # a failed or cancelled merge leaves a mix: never reuse it
            # merge_into_model, opened by hand to keep the plan's warnings for the status line.
            with plan_merge(recipe) as plan:
                run_merge(plan, ModelSink(item.model), device=self.device, progress=progress,
                          cancel=self._token(session))
                warnings, tensors = list(plan.warnings), len(plan.jobs)
            item.recipe_yaml = recipe.to_yaml()
        self.history.add(self._history_entry("merge", recipe))
        return MergeResult(recipe.to_yaml(), time.perf_counter() - start, tensors, warnings)

    def _preview_shell(self, session: str, recipe: Recipe) -> LoadedModel:
        """The session's preview model: loaded once with the reference model's architecture."""
        ref = recipe.base or recipe.models[0].model
        key = f"merge:{session}"
        item = self.cache.peek(key)
        if item is not None and item.source == ref:
            return item
        self.cache.discard(key)
        return self.cache.get(key, self._loaded_bytes(ref), lambda: self._load(ref))

    def preview_state(self, session: str) -> dict[str, torch.Tensor] | None:
        """The merged preview's weights (for tests and checks), or None if there is none."""
        item = self.cache.peek(f"merge:{session}")
        if item is None or item.recipe_yaml is None:
            return None
        return {k: v.detach().cpu() for k, v in item.model.state_dict().items()}

    # -- Compare tab ---------------------------------------------------------------------------

    def columns(self, sel: Selection | None, merged: str | None) -> list[tuple[str, str]]:
        """(label, source) of each Compare column: base, every fine-tune, then the merge."""
        if not sel:
            return []
        cols = [("base", sel["base"])] + list(zip(sel["labels"], sel["models"], strict=True))
        if merged:
            cols.append(("merge", f"merge:{merged}"))
        return cols

    def _model_for(self, source: str, session: str) -> LoadedModel:
        """A loaded model: a folder/hub id from the cache, or the session's merge (re-merged if evicted)."""
        if source.startswith("merge:"):
            recipe = self.parse_recipe(source[len("merge:"):])
            item = self._preview_shell(session, recipe)
            if item.recipe_yaml != recipe.to_yaml():  # evicted or re-merged since: rebuild it
                item.recipe_yaml = None
                merge_into_model(recipe, item.model, device=self.device)
                item.recipe_yaml = recipe.to_yaml()
            return item
        return self.cache.get(f"model:{source}", self._loaded_bytes(source), lambda: self._load(source))

    def generate_side_by_side(
        self,
        session: str,
        columns: Sequence[tuple[str, str]],
        prompt: str,
        settings: GenerationSettings = GenerationSettings(),  # noqa: B008 (frozen)
    ) -> Iterator[list[str]]:
        """Stream the continuation of ``prompt`` by each column's model, one column after another.

        Yields the list of texts so far (one per column) after every new piece of text. The work
        runs on a producer thread that holds the work lock; closing the iterator stops it.
        """
        if not prompt.strip():
            raise RecipeError("type a prompt or pick an example first")
        texts = [""] * len(columns)
        updates: queue.Queue[tuple[int, str] | BaseException | None] = queue.Queue()
        stop = threading.Event()

        def produce() -> None:
            try:
                with self.work:
                    for i, (_label, source) in enumerate(columns):
                        if stop.is_set():
                            break
                        item = self._model_for(source, session)
                        for piece in _stream(item, prompt, settings, stop, self.device):
                            updates.put((i, piece))
                updates.put(None)
            except BaseException as exc:  # handed to the consumer, which re-raises it
                updates.put(exc)

        thread = threading.Thread(target=produce, name="fusion-ui-generate", daemon=True)
        thread.start()
        try:
            while True:
                msg = updates.get()
                if msg is None:
                    break
                if isinstance(msg, BaseException):
                    raise msg
                i, piece = msg
                texts[i] += piece
                yield list(texts)
            yield list(texts)
        finally:
            stop.set()

    def evaluate(
        self,
        session: str,
        columns: Sequence[tuple[str, str]],
        items: Sequence[EvalItem],
        *,
        per_skill: int | None = 20,
        progress: ProgressCallback | None = None,
    ) -> pd.DataFrame:
        """Score every column's model on ``items``: one row per model × skill (exact match...)."""
        items = limit_per_skill(items, per_skill)
        if not items:
            raise RecipeError("the eval set is empty")
        tables = []
        with self.work:
            for k, (label, source) in enumerate(columns):
                if progress is not None:
                    progress(Progress(k, len(columns), f"scoring {label}"))
                item = self._model_for(source, session)
                tables.append(evaluate(item.model, item.tokenizer, items, model_name=label, device=self.device))
        return pd.concat(tables, ignore_index=True)

    def eval_items(self, skills: Sequence[str], upload: str | None) -> list[EvalItem]:
        """Items from the demo eval sets named in ``skills`` and/or an uploaded JSONL/CSV file."""
        items: list[EvalItem] = []
        if self.demo is not None:
            for skill in skills:
                if skill in self.demo.eval_sets:
                    items += load_eval_set(self.demo.eval_sets[skill])
        if upload:
            items += load_eval_set(upload)
        if not items:
            raise RecipeError("choose at least one demo eval set or upload a .jsonl / .csv file")
        return items

    # -- Export tab ----------------------------------------------------------------------------

    def export(
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
        progress: ProgressCallback | None = None,
    ) -> ExportSummary:
        """Write the merge to a folder ``transformers`` loads (atomic), and record it in the history."""
        if not out_dir.strip():
            raise RecipeError("choose an output folder")
        recipe = self.parse_recipe(recipe_yaml)
        update: dict[str, Any] = {"tokenizer_source": tokenizer_source or "base"}
        if dtype:
            update["dtype"] = dtype
        recipe = recipe_from_dict({**yaml.safe_load(recipe.to_yaml()), **update})
        with self.work:
            result = export_merge(
                recipe, out_dir, force=force, max_shard_size=max_shard_size, device=self.device,
                progress=progress, cancel=self._token(session), write_mergekit=write_mergekit,
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

    def history_table(self) -> pd.DataFrame:
        rows = [
            {"id": e["id"], "when": e["time"], "kind": e["kind"], "method": e["method"],
             "models": e["models"], "path": e.get("path", "")}
            for e in reversed(self.history.entries)
        ]
        return pd.DataFrame(rows, columns=["id", "when", "kind", "method", "models", "path"])

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


@torch.no_grad()
def _stream(
    item: LoadedModel, prompt: str, settings: GenerationSettings, stop: threading.Event, device: str
) -> Iterator[str]:
    """Pieces of text as ``model.generate`` produces them (transformers' TextIteratorStreamer)."""
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    class _Stop(StoppingCriteria):
        def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **kw: Any) -> torch.Tensor:
            return torch.full((input_ids.shape[0],), stop.is_set() or done.is_set(), dtype=torch.bool)

    done = threading.Event()
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
        except BaseException as exc:
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
            if done.is_set():
                break
    finally:
        done.set()
        worker.join()  # the stopping criterion ends generate() within one token
    if errors:
        raise RecipeError(f"generation failed: {errors[0]}") from errors[0]


__all__ = [
    "DemoFamily",
    "Engine",
    "ExportSummary",
    "GenerationSettings",
    "InspectResult",
    "LoadedModel",
    "MergeResult",
    "ModelCache",
    "Selection",
    "check_ref",
    "make_selection",
]
