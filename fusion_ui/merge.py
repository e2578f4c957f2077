"""Planning and running a merge, one tensor at a time.

``plan_merge`` opens the models (headers only), checks them, resolves every tensor's
parameters and samples a few deltas, so that every error a user can fix is raised before any
heavy work. A ``slices:`` recipe (a layer stack) is planned by :mod:`fusion_ui.slices`: each
output tensor then names the source tensors it is made of. ``run_merge`` then reads each tensor
from each model, computes in float32 on the chosen device, casts to the output dtype and hands
the result to a sink (memory, a loaded model, or shards on disk).
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import Executor, Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import torch

from fusion_ui.device import resolve_device
from fusion_ui.errors import IncompatibleModelsError, RecipeError, TensorValueError
from fusion_ui.inspect import CompatibilityReport, check_compatibility
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.io.writer import ModelSink, StateDictSink, TensorSink, TensorSpec
from fusion_ui.kernels import is_warm, warm_up_in_background
from fusion_ui.methods import MergeMethod
from fusion_ui.methods.base import NonFiniteInput, TensorContext
from fusion_ui.progress import CancelToken, ProgressCallback, report
from fusion_ui.recipe import Recipe
from fusion_ui.slices import SliceLayout, plan_slices
from fusion_ui.tensor_names import layer_index, module_kind, num_layers_from_config

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# ‖δ‖/‖θ0‖ above this on sampled tensors: the "fine-tune" is not a fine-tune of this base.
# Fine-tunes sit far below (typically < 0.05); unrelated models of the same shape near 1.4.
UNRELATED_REL_DELTA = 0.5
# DARE works while |δ| mostly stays below ~0.005 and fails from ~0.01 (Yu et al. 2023).
DARE_SAFE_DELTA = 0.005
PIN_MIN_BYTES = 4 << 20  # smaller inputs are copied to a GPU from ordinary memory
# Until the kernels are loaded in this process (kernels.is_warm()), tensors smaller than this
# merge through the torch reference on the CPU: a fresh install's first kernel call compiles
# (~20 s on 2 cores), which a small model (the demo family's largest tensor has 49k elements)
# must not wait for; plans with a larger tensor start the warm-up. Once loaded (the app warms
# them at start), every tensor takes them: the demo's re-merge is 0.29 s with them, 1.1 s
# without. Results are the same bits either way (tests/test_kernels.py).
FUSED_MIN_ELEMENTS = 1 << 18


@dataclass(frozen=True)
class TensorJob:
    """One output tensor: where it comes from and what it becomes."""

    name: str
    shape: tuple[int, ...]  # output shape (the reference model's)
    dtype: torch.dtype  # output dtype
    merged: bool  # False: taken unchanged from the reference model (excluded, or not float)
    params: dict[str, Any] = field(default_factory=dict)  # resolved global parameters
    model_params: tuple[dict[str, Any], ...] = ()  # resolved per-model parameters
    # A layer stack's tensor (slices:): (index in plan.models, tensor name) of each model input,
    # in merge order, and of θ0 where the method reads it; () for a whole-model merge, whose
    # inputs are the output name in the base and in every model.
    inputs: tuple[tuple[int, str], ...] = ()
    base_input: tuple[int, str] | None = None

    @property
    def spec(self) -> TensorSpec:
        return TensorSpec(self.name, self.shape, self.dtype)


@dataclass
class MergePlan:
    """An opened, checked merge, ready to run (possibly several times, into different sinks)."""

    recipe: Recipe
    method: MergeMethod
    base: Checkpoint | None
    models: list[Checkpoint]
    reference: Checkpoint  # layout, config and unmerged tensors come from here
    jobs: list[TensorJob]
    out_dtype: torch.dtype
    num_layers: int | None
    compatibility: CompatibilityReport
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # what the method did where (model card)
    delta_stats: list[dict[str, Any]] = field(default_factory=list)  # pre-flight sample per model
    layout: SliceLayout | None = None  # the layer stack of a slices: recipe
    config_updates: dict[str, Any] = field(default_factory=dict)  # exported config.json changes

    @property
    def total_bytes(self) -> int:
        return sum(j.spec.nbytes for j in self.jobs)

    @property
    def reads_base(self) -> bool:
        """Whether the merge reads θ0 for some tensor: it computes task vectors δ = θ - θ0 there,
        so a wrong base ruins it (the method says so for each tensor's parameters)."""
        return self.base is not None and any(
            self.method.needs_base_with(j.params) for j in self.jobs if j.merged
        )

    def close(self) -> None:
        for c in {self.reference, *self.models}:
            c.close()

    def __enter__(self) -> MergePlan:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def output_dtype(recipe: Recipe, reference: Checkpoint) -> torch.dtype:
    return _DTYPES[recipe.dtype] if recipe.dtype else reference.main_dtype


def plan_merge(
    recipe: Recipe, *, allow_large_deltas: bool = False, preflight: bool = True
) -> MergePlan:
    """Open and check everything a merge needs; raise every fixable error now."""
    recipe.validate_for_method()
    method = recipe.merge_method
    opened: list[Checkpoint] = []
    try:
        base = None
        if recipe.base:
            base = Checkpoint.open(recipe.base)
            opened.append(base)
        models = []
        for entry in recipe.models:
            ckpt = Checkpoint.open(entry.model)
            opened.append(ckpt)
            models.append(ckpt)
        if recipe.slices:
            first = recipe.model_index(recipe.slices[0].sources[0].model)
            reference = base if base is not None else models[first]
            plan = _plan_slices(recipe, method, base, models, reference)
            if any(math.prod(j.shape) >= FUSED_MIN_ELEMENTS for j in plan.jobs):
                warm_up_in_background()
            return plan
        reference = base if base is not None else models[0]
        if any(info.numel >= FUSED_MIN_ELEMENTS for info in reference.tensors.values()):
            warm_up_in_background()  # the CPU kernels load while the models are checked
        others = models if base is not None else models[1:]
        compat = check_compatibility(reference, others)
        if compat.errors:
            raise IncompatibleModelsError(
                "the models cannot be merged tensor by tensor:\n"
                + "\n".join(f"- {f.model}: {f.message}" for f in compat.errors[:30])
                + (f"\n... and {len(compat.errors) - 30} more" if len(compat.errors) > 30 else "")
            )
        if compat.vocab_crops and recipe.vocab == "error":
            raise IncompatibleModelsError(
                "vocabulary sizes differ and the recipe says `vocab: error`; set "
                "`vocab: crop_to_base` to crop the extra embedding rows"
            )
        num_layers = num_layers_from_config(reference.config) or _count_layers(reference)
        out_dtype = output_dtype(recipe, reference)
        jobs = []
        for name, info in reference.tensors.items():
            floating = info.dtype.is_floating_point
            merged = floating and recipe.is_merged(name)
            params, model_params = recipe.resolve(name, num_layers) if merged else ({}, [])
            if merged:
                try:
                    method.check(params, model_params)
                except RecipeError as exc:
                    raise RecipeError(f"tensor {name}: {exc}") from None
            jobs.append(TensorJob(
                name=name,
                shape=info.shape,
                dtype=out_dtype if floating else info.dtype,
                merged=merged,
                params=params,
                model_params=tuple(model_params),
            ))
        if not any(j.merged for j in jobs) and any(j.dtype.is_floating_point for j in jobs):
            raise RecipeError(
                f"the recipe's include/exclude patterns leave no tensor to merge: the output would "
                f"be {reference.ref} unchanged; check `include:` and `exclude:`"
            )
        _check_tokenizer_source(recipe, reference, models, compat)
        # statistics a method reads besides the weights: missing, stale or foreign ones fail now
        notes = method.check_sources(models, {j.name: j.model_params for j in jobs if j.merged})
        plan = MergePlan(
            recipe=recipe, method=method, base=base, models=models, reference=reference,
            jobs=jobs, out_dtype=out_dtype, num_layers=num_layers, compatibility=compat, notes=notes,
        )
        plan.warnings += [f"{f.model}: {f.message}" for f in compat.findings if f.severity == "warning"]
        # A pattern or override that selects nothing is most likely a typo; it is a warning, not
        # an error, because recipes travel between architectures (an `exclude: [lm_head.*]` meant
        # for untied heads selects nothing on a model with tied embeddings) and refusing would
        # break recipes that do exactly what their author meant elsewhere.
        plan.warnings += recipe.selection_warnings(
            list(reference.tensors), [j.name for j in jobs if j.merged], num_layers
        )
        if preflight and base is not None:
            # Methods without task vectors (linear, slerp) merge regardless of the base, but an
            # unrelated model among them still deserves a word; those that use δ = θ - θ0 refuse.
            _preflight_deltas(plan, allow_large_deltas, refuse=plan.reads_base)
        return plan
    except BaseException:
        for c in opened:
            c.close()
        raise


def _plan_slices(
    recipe: Recipe, method: MergeMethod, base: Checkpoint | None, models: list[Checkpoint],
    reference: Checkpoint,
) -> MergePlan:
    """The plan of a layer stack: every output tensor mapped to its sources, from headers only.

    The delta pre-flight is skipped: a stack's layers come from different depths, so there is no
    one base tensor to measure each source against."""
    layout = plan_slices(recipe, models, reference)
    out_dtype = output_dtype(recipe, reference)
    jobs = []
    for t in layout.tensors:
        first = models[t.sources[0].model].tensors[t.sources[0].name]
        floating = first.dtype.is_floating_point
        merged = floating and recipe.is_merged(t.name)
        refs = [src.model for src in recipe.slices[t.slice].sources]
        at_base = refs.index(recipe.base) if recipe.base in refs else None
        pairs = [(s.model, s.name) for s in t.sources]
        params: dict[str, Any] = {}
        model_params: list[dict[str, Any]] = []
        base_input = None
        if merged:
            params, model_params = recipe.resolve_slice(t.slice, t.name, [s.name for s in t.sources], t.pos)
            order = list(range(len(pairs)))
            if at_base is None and method.needs_base_with(params):
                raise RecipeError(
                    f"slices[{t.slice}]: {method.name} with these parameters reads the base's "
                    f"layers (tensor {t.name}), so the base must be one of the slice's sources"
                )
            if at_base is not None:
                order.remove(at_base)
                if method.needs_base_with(params):
                    base_input = pairs[at_base]  # θ0: the base's layers in this slice
                else:
                    order.insert(0, at_base)  # slerp and friends: the base is the t = 0 end
            inputs = tuple(pairs[k] for k in order)
            model_params = [model_params[k] for k in order]
            try:
                method.check(params, model_params)
            except RecipeError as exc:
                raise RecipeError(f"tensor {t.name} (slices[{t.slice}]): {exc}") from None
        else:  # excluded or not float: the slice's base source, else its first, unchanged
            inputs = (pairs[at_base if at_base is not None else 0],)
        jobs.append(TensorJob(
            name=t.name, shape=t.shape, dtype=out_dtype if floating else first.dtype, merged=merged,
            params=params, model_params=tuple(model_params), inputs=inputs, base_input=base_input,
        ))
    compat = check_compatibility(reference, [])
    _check_tokenizer_source(recipe, reference, models, compat)
    notes = method.check_sources(models, {j.name: j.model_params for j in jobs if j.merged})
    plan = MergePlan(
        recipe=recipe, method=method, base=base, models=models, reference=reference, jobs=jobs,
        out_dtype=out_dtype, num_layers=layout.num_layers, compatibility=compat, notes=notes,
        layout=layout, config_updates=dict(layout.config_updates),
    )
    names = [j.name for j in jobs]
    plan.warnings += recipe.selection_warnings(names, [j.name for j in jobs if j.merged], layout.num_layers)
    return plan


def job_sources(plan: MergePlan, job: TensorJob) -> tuple[list[tuple[Checkpoint, str]], bool]:
    """The (checkpoint, tensor name) pairs one job reads, in order, and whether the first is θ0."""
    if job.inputs:
        if not job.merged:
            return [(plan.models[i], name) for i, name in job.inputs[:1]], False
        with_base = job.base_input is not None
        pairs = [job.base_input, *job.inputs] if job.base_input is not None else list(job.inputs)
        return [(plan.models[i], name) for i, name in pairs], with_base
    if not job.merged:
        return [(plan.reference, job.name)], False
    with_base = plan.base is not None and plan.method.needs_base_with(job.params)
    ckpts = [plan.base, *plan.models] if with_base else list(plan.models)
    return [(c, job.name) for c in ckpts if c is not None], with_base


def run_merge(
    plan: MergePlan,
    sink: TensorSink,
    *,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
) -> None:
    """Compute every tensor of the plan and hand it to ``sink``, in plan order.

    While one tensor is computed, the next one's inputs are read on a second thread.
    """
    dev = resolve_device(device)
    sink.begin([j.spec for j in plan.jobs])
    jobs = plan.jobs
    # One thread reads the next tensor's inputs, one writes the previous result: disk and
    # memory copies overlap with the computation, with at most one tensor pending each way.
    # On a GPU, inputs are read into pinned memory: copies to the device then run at full
    # speed and without blocking, while the reader thread fills the next tensor's buffers.
    pool = BufferPool(pinned=dev.type == "cuda")
    # Results come back from a GPU into reused pinned buffers when the sink only copies them:
    # a fresh pageable tensor per result page-faults on every byte and copies at a fraction of the speed.
    # On the CPU the fused kernels write into reused buffers too, sparing a page fault per 4 KB.
    out_pool = BufferPool(pinned=dev.type == "cuda") if not getattr(sink, "retains_tensors", True) else None
    reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusion-ui-read")
    writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="fusion-ui-write")
    # With cores to spare, the checkpoints of one tensor are read side by side: one thread
    # copying from the page cache moves ~1.5-6 GB/s, far below what a GPU or many cores take.
    workers = read_workers(len(plan.models) + (plan.base is not None))
    fan_out = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="fusion-ui-read-ckpt") if workers > 1 else None
    pending: Future[Inputs] | None = None
    written: Future[None] | None = None
    try:
        pending = reader.submit(read_inputs, plan, jobs[0], pool, fan_out) if jobs else None
        for k, job in enumerate(jobs):
            if cancel is not None:
                cancel.raise_if_cancelled()
            if pending is None:  # every job's read starts during the previous one
                raise RuntimeError(f"internal: no read was started for {job.name}")
            inputs = pending.result()
            pending = reader.submit(read_inputs, plan, jobs[k + 1], pool, fan_out) if k + 1 < len(jobs) else None
            out = compute_tensor(plan, job, dev, inputs, out_pool)
            pool.give_back(inputs.buffers, keep_alive=out)
            del inputs
            if written is not None:
                written.result()
            written = writer.submit(_write, sink, job.name, out, out_pool)
            if progress is not None:
                report(progress, k + 1, len(jobs), job.name)
        if written is not None:
            written.result()
        sink.finish()
    except BaseException:
        for future in (pending, written):
            if future is not None:
                future.cancel()
        for thread in (reader, writer):  # a read or write in flight ends before the sink aborts
            thread.shutdown(wait=True)
        sink.abort()
        raise
    finally:
        for thread in (reader, writer, fan_out):
            if thread is not None:
                thread.shutdown(wait=True)


def read_workers(checkpoints: int, cores: int | None = None) -> int:
    """Threads reading one tensor's checkpoints at once: one per 4 cores, at most one each.

    On 2 cores the compute threads need both, so a single thread reads (ahead, in the
    background); on 16 cores four checkpoints are read together.
    """
    cores = cores if cores is not None else (os.cpu_count() or 1)
    return max(1, min(checkpoints, cores // 4))


def _write(sink: TensorSink, name: str, tensor: torch.Tensor, out_pool: BufferPool | None) -> None:
    sink.write(name, tensor)
    if out_pool is not None and out_pool.owns(tensor):
        out_pool.give_back_storage(tensor)


class BufferPool:
    """Byte buffers reused from tensor to tensor.

    Fresh multi-MB allocations page-fault on first touch; over a 0.9B-parameter merge that
    doubled the reading time (measured: 3.4 vs 6.1 GB/s). Buffers are taken by the reader
    thread and given back by the main thread once the tensor is computed.
    """

    def __init__(self, *, pinned: bool = False) -> None:
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()
        self._issued: set[int] = set()  # addresses of the buffers this pool made
        self.pinned = pinned

    def take(self, nbytes: int) -> torch.Tensor:
        """The smallest free buffer that holds ``nbytes``, or a new one."""
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.numel() >= nbytes]
            if fits:
                return self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        # Pinning costs a driver call per buffer: worth it only for tensors that take a while to copy.
        buf = torch.empty(nbytes, dtype=torch.uint8, pin_memory=self.pinned and nbytes >= PIN_MIN_BYTES)
        with self._lock:
            self._issued.add(buf.untyped_storage().data_ptr())
        return buf

    def owns(self, tensor: torch.Tensor) -> bool:
        """Whether ``tensor`` lies in a buffer of this pool (from its start)."""
        return tensor.device.type == "cpu" and tensor.untyped_storage().data_ptr() in self._issued

    def give_back_storage(self, tensor: torch.Tensor) -> None:
        """Return the whole buffer behind ``tensor`` (taken from this pool, no longer used)."""
        buf = torch.empty(0, dtype=torch.uint8).set_(tensor.untyped_storage())
        with self._lock:
            self._free.append(buf)

    def give_back(self, buffers: list[torch.Tensor], *, keep_alive: torch.Tensor) -> None:
        """Return buffers, except one that ``keep_alive`` (an output) still points into."""
        ptr = keep_alive.untyped_storage().data_ptr() if keep_alive.device.type == "cpu" else -1
        with self._lock:
            self._free.extend(b for b in buffers if b.untyped_storage().data_ptr() != ptr)


@dataclass
class Inputs:
    """The raw (storage dtype, CPU) tensors one job reads, cropped to the output rows."""

    base: torch.Tensor | None
    models: list[torch.Tensor]
    buffers: list[torch.Tensor] = field(default_factory=list)  # pool buffers behind the tensors


def read_inputs(
    plan: MergePlan, job: TensorJob, pool: BufferPool | None = None, fan_out: Executor | None = None
) -> Inputs:
    """One job's input tensors; with ``fan_out``, its checkpoints are read in parallel."""
    rows = job.shape[0] if job.shape else None
    sources, with_base = job_sources(plan, job)
    buffers = [
        pool.take(c.tensors[name].nbytes) if pool is not None and c.format == "safetensors" else None
        for c, name in sources
    ]

    def read(i: int) -> torch.Tensor:
        return _read(sources[i][0], sources[i][1], rows, buffers[i])

    if fan_out is not None and len(sources) > 1:
        tensors = list(fan_out.map(read, range(len(sources))))
    else:
        tensors = [read(i) for i in range(len(sources))]
    taken = [b for b in buffers if b is not None]
    if not job.merged:
        return Inputs(base=tensors[0], models=[], buffers=taken)
    return Inputs(base=tensors[0] if with_base else None, models=tensors[with_base:], buffers=taken)


def compute_tensor(
    plan: MergePlan,
    job: TensorJob,
    device: torch.device,
    inputs: Inputs | None = None,
    out_pool: BufferPool | None = None,
) -> torch.Tensor:
    """One output tensor, on the CPU in the output dtype (from ``out_pool``'s buffers, if given)."""
    if inputs is None:
        inputs = read_inputs(plan, job)
    out = _compute(plan, job, device, inputs, out_pool)
    if job.dtype == torch.float16 and out.is_floating_point():
        _check_fits_float16(out, job.name)
    return out


def _compute(
    plan: MergePlan, job: TensorJob, device: torch.device, inputs: Inputs, out_pool: BufferPool | None
) -> torch.Tensor:
    sources, _ = job_sources(plan, job)
    if not job.merged:
        t = inputs.base
        if t is None:
            raise RuntimeError(f"internal: no input read for {job.name}")
        if t.is_floating_point():
            _check_finite(t, sources[0][0], sources[0][1])
            return t.to(job.dtype)
        return t
    ctx = TensorContext(
        name=job.name,
        base=inputs.base,
        models=inputs.models,
        model_params=list(job.model_params),
        params=dict(job.params),
        seed=plan.recipe.seed,
        model_indices=tuple(range(len(inputs.models))),
    )
    if device.type == "cpu" and (math.prod(job.spec.shape) >= FUSED_MIN_ELEMENTS or is_warm()):
        buffer = out_pool.take(job.spec.nbytes) if out_pool is not None else None
        ctx.out_buffer = buffer
        fused = None
        try:
            fused = plan.method.merge_fused_cpu(ctx, job.dtype)
        except NonFiniteInput as exc:  # the kernel found NaN/inf: name the checkpoint
            with_base = inputs.base is not None
            ckpt, name = sources[0 if exc.index is None else exc.index + with_base]
            raise _nonfinite_error(ckpt, name) from None
        finally:
            ctx.out_buffer = None
            if buffer is not None and not (fused is not None and out_pool.owns(fused)):
                out_pool.give_back_storage(buffer)  # the result is elsewhere, or there is none
        if fused is not None:
            return fused
    with_base = inputs.base is not None
    raw = [inputs.base, *inputs.models] if with_base else inputs.models
    on_device = [_to_compute(t, device) for t in raw]
    _check_all_finite(on_device, sources)
    ctx.base = on_device[0] if with_base else None
    ctx.models = on_device[with_base:]
    out = plan.method.merge(ctx).to(dtype=job.dtype)
    if out_pool is None or device.type != "cuda":
        return out.cpu()
    nbytes = job.spec.nbytes
    host = out_pool.take(nbytes)[:nbytes].view(out.dtype).view(out.shape)
    host.copy_(out, non_blocking=host.is_pinned())
    torch.cuda.current_stream(device).synchronize()
    return host


def _check_fits_float16(out: torch.Tensor, name: str) -> None:
    """float16 ends at ±65504: a merged value past it became inf in the cast. Never silently."""
    finite = torch.isfinite(out)
    if bool(finite.all()):
        return
    count = out.numel() - int(finite.sum())
    raise TensorValueError(
        f"tensor {name!r} of the merge has {count} value(s) beyond float16's range (±65504), which "
        f"would be written as inf; export in bfloat16 or float32, which hold them",
        fixes={
            "cli": "pass --dtype bfloat16 (or float32)",
            "app": "choose bfloat16 or float32 as the dtype",
            "python": "set dtype='bfloat16' (or 'float32') in the recipe",
        },
    )


def _to_compute(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The tensor as float32 on ``device``. A pinned CPU tensor crosses to a GPU in its storage
    dtype (half the bytes of float32 for bf16) without blocking, and is widened there."""
    if device.type == "cpu":
        return t.to(dtype=torch.float32)
    return t.to(device, non_blocking=t.is_pinned()).to(torch.float32)


def _check_all_finite(tensors: list[torch.Tensor], sources: list[tuple[Checkpoint, str]]) -> None:
    """One device-side test for all inputs (a single sync on a GPU); the culprit is named."""
    if not tensors:
        return
    if bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
        return
    for t, (ckpt, name) in zip(tensors, sources, strict=True):
        _check_finite(t, ckpt, name)


def merge_to_state_dict(
    recipe: Recipe,
    *,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    allow_large_deltas: bool = False,
) -> dict[str, torch.Tensor]:
    """Merge in memory and return the merged state dict (CPU tensors)."""
    with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
        sink = StateDictSink()
        run_merge(plan, sink, device=device, progress=progress, cancel=cancel)
        return sink.state_dict


def merge_into_model(
    recipe: Recipe,
    model: torch.nn.Module,
    *,
    device: str | torch.device = "auto",
    progress: ProgressCallback | None = None,
    cancel: CancelToken | None = None,
    allow_large_deltas: bool = False,
) -> torch.nn.Module:
    """Merge straight into a loaded model of the base's architecture (a preview), in place."""
    with plan_merge(recipe, allow_large_deltas=allow_large_deltas) as plan:
        run_merge(plan, ModelSink(model), device=device, progress=progress, cancel=cancel)
    return model


# -- internals ---------------------------------------------------------------------------


def _read(ckpt: Checkpoint, name: str, rows: int | None, buffer: torch.Tensor | None = None) -> torch.Tensor:
    t = ckpt.tensor(name, buffer=buffer)
    if rows is not None and t.dim() >= 1 and t.shape[0] > rows:
        t = t[:rows]  # vocabulary crop to the base's rows (checked in plan_merge)
    return t


def _check_finite(t: torch.Tensor, ckpt: Checkpoint, name: str) -> None:
    if t.is_floating_point() and not bool(torch.isfinite(t).all()):
        raise _nonfinite_error(ckpt, name, t.numel() - int(torch.isfinite(t).sum()))


def _nonfinite_error(ckpt: Checkpoint, name: str, count: int | None = None) -> TensorValueError:
    how_many = f"{count} " if count is not None else ""
    return TensorValueError(
        f"{ckpt.ref}: tensor {name!r} in {ckpt.tensors[name].file} holds {how_many}NaN/inf "
        f"value(s); that checkpoint is broken: re-download it or leave it out of the merge"
    )


def _count_layers(ckpt: Checkpoint) -> int | None:
    layers = [i for i in (layer_index(n) for n in ckpt.tensors) if i is not None]
    return max(layers) + 1 if layers else None


def _check_tokenizer_source(
    recipe: Recipe, reference: Checkpoint, models: list[Checkpoint], compat: CompatibilityReport
) -> None:
    src = recipe.tokenizer_source
    if not src.startswith("model:"):
        return
    i = recipe.model_index(src[len("model:"):])
    model = models[i]
    if model.vocab_size() != reference.vocab_size() and compat.vocab_crops:
        raise RecipeError(
            f"tokenizer_source {src} ({model.ref}) has {model.vocab_size()} tokens but the merge "
            f"keeps the base's {reference.vocab_size()} embedding rows; use tokenizer_source: base"
        )


@torch.no_grad()
def _preflight_deltas(plan: MergePlan, allow_large: bool, *, refuse: bool = True) -> None:
    """Sample a few weight matrices to catch a wrong base before the heavy work.

    ``refuse``: a model that is no fine-tune of the base is an error (unless ``allow_large``);
    otherwise a warning.
    """
    if plan.base is None:
        return
    candidates = [
        j for j in plan.jobs
        if j.merged and len(j.shape) == 2 and module_kind(j.name) not in ("embed", "lm_head")
    ]
    if not candidates:
        return
    picks = sorted({candidates[0].name, candidates[len(candidates) // 2].name, candidates[-1].name})
    caps = plan.method.capabilities
    # a method whose random drop is behind a switch (DARE in front of fisher) drops only while it reads θ0
    drops = caps.random_drop is not None and (caps.base_switch is None or plan.reads_base)
    bases: dict[str, tuple[torch.Tensor, float]] = {}  # read once, shared by every fine-tune
    for name in picks:
        base = _read(plan.base, name, None).float()
        norm0 = float(base.norm())
        if not math.isfinite(norm0):  # only then pay for the element-wise check
            _check_finite(base, plan.base, name)
        bases[name] = (base, norm0)
    for model in plan.models:
        rels, medians = [], []
        for name in picks:
            base, norm0 = bases[name]
            delta = _read(model, name, None).float() - base
            norm = float(delta.norm())
            if not math.isfinite(norm):
                _check_finite(delta, model, name)
            rels.append(norm / norm0 if norm0 > 0 else 0.0)
            # the median only sets a warning: a strided sample of ~100k elements is plenty
            sample = delta.reshape(-1)[:: max(1, delta.numel() // 100_000)].abs()
            medians.append(float(sample.median()))
        rel, median = max(rels), max(medians)
        plan.delta_stats.append({"model": model.ref, "rel_delta": rel, "median_abs_delta": median})
        unrelated = (
            f"{model.ref} does not look like a fine-tune of the base {plan.base.ref}: "
            f"‖δ‖/‖θ0‖ = {rel:.2f} on sampled weights (fine-tunes are usually below 0.05; "
            f"unrelated models of the same shape give ~1.4), median |δ| = {median:.4g}"
        )
        if rel > UNRELATED_REL_DELTA and refuse and not allow_large:
            raise IncompatibleModelsError(
                f"{unrelated}. Check that the base is the model it was fine-tuned from",
                fixes={
                    "cli": "pass --allow-large-deltas to merge anyway",
                    "app": "tick “merge even if a model does not look like a fine-tune of the base”",
                    "python": "pass allow_large_deltas=True to merge anyway",
                },
            )
        if rel > UNRELATED_REL_DELTA and refuse:
            plan.warnings.append(f"{model.ref}: ‖δ‖/‖θ0‖ = {rel:.2f}; merging anyway as asked")
        elif rel > UNRELATED_REL_DELTA:
            plan.warnings.append(
                f"{unrelated}; {plan.method.name} merges the weights anyway, but models trained "
                f"from different starting points rarely merge into a working model"
            )
        if drops and median > DARE_SAFE_DELTA:
            plan.warnings.append(
                f"{model.ref}: median |δ| = {median:.4g} on sampled weights; DARE works while deltas "
                f"stay below ~{DARE_SAFE_DELTA} and tends to fail from ~0.01 (Yu et al. 2023)"
            )
