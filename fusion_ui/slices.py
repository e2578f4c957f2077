"""The layer stack of a ``slices:`` recipe (a frankenmerge): which source tensors make each
output tensor, checked against the opened checkpoints' headers before any tensor is read.

Output layer ``k`` of slice ``i`` is layer ``layer_range[0] + offset`` of each of the slice's
sources, renamed to ``k``. Tensors outside the layer stack come from the first slice's sources
(embeddings, input side) or the last slice's (final norm, head), as in mergekit. The output's
layer count, tensor shapes and parameter count are known from the headers alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from fusion_ui.errors import IncompatibleModelsError, RecipeError
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.recipe import Recipe
from fusion_ui.tensor_names import _LAYER_RE, is_input_side, layer_index, num_layers_from_config

# config keys that hold a per-layer list (one entry per layer): rebuilt for the output stack
_PER_LAYER_CONFIG_KEYS = ("layer_types",)


@dataclass(frozen=True)
class SourceTensor:
    """One input of an output tensor: a model (index in ``recipe.models``) and its tensor name."""

    model: int
    name: str


@dataclass(frozen=True)
class SlicedTensor:
    """One output tensor of the stack and where it comes from."""

    name: str  # output name (layer index renamed)
    shape: tuple[int, ...]
    slice: int  # the slice whose settings resolve its parameters
    sources: tuple[SourceTensor, ...]  # one per source of that slice, in the slice's order
    pos: float  # place on the ramps: offset / (slice layers - 1), 1 for a one-layer slice, 0 outside


@dataclass(frozen=True)
class OutputLayer:
    """Output layer ``index``: layer ``source_layers[k]`` of source ``k`` of ``slices[slice]``."""

    index: int
    slice: int
    source_layers: tuple[int, ...]


@dataclass
class SliceLayout:
    """The whole output: its layers, its tensors (checkpoint order), its config changes."""

    layers: list[OutputLayer]
    tensors: list[SlicedTensor]
    config_updates: dict[str, object] = field(default_factory=dict)

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def num_parameters(self) -> int:
        n = 0
        for t in self.tensors:
            size = 1
            for d in t.shape:
                size *= d
            n += size
        return n

    def describe(self, recipe: Recipe) -> list[str]:
        """One line per slice: output layers <- each source's layers (model card, summaries)."""
        lines, first = [], 0
        for i, sl in enumerate(recipe.slices):
            last = first + sl.num_layers - 1
            out = f"layer {first}" if last == first else f"layers {first}-{last}"
            srcs = " + ".join(
                f"{src.model} layer{'s' if src.num_layers > 1 else ''} "
                f"{src.layer_range[0]}{'-' + str(src.layer_range[1] - 1) if src.num_layers > 1 else ''}"
                for src in sl.sources
            )
            lines.append(f"slices[{i}]: output {out} <- {srcs}")
            first = last + 1
        return lines


def renamed_layer(name: str, index: int | str) -> str:
    """``name`` with its layer number replaced by ``index``."""
    m = _LAYER_RE.search(name)
    if m is None:
        raise ValueError(f"internal: {name} has no layer index")
    return name[: m.start(1)] + str(index) + name[m.end(1):]


def model_layers(ckpt: Checkpoint) -> int:
    """How many layers a checkpoint has: its config's count, else the highest numbered tensor's."""
    declared = num_layers_from_config(ckpt.config)
    if declared:
        return declared
    found = [i for i in (layer_index(n) for n in ckpt.tensors) if i is not None]
    return max(found) + 1 if found else 0


def plan_slices(recipe: Recipe, models: list[Checkpoint], reference: Checkpoint) -> SliceLayout:
    """Map every output tensor to its source tensors; raise on bad ranges or architectures,
    naming the slice and the key, from the headers only."""
    by_ref = {entry.model: models[i] for i, entry in enumerate(recipe.models)}
    index_of = {entry.model: i for i, entry in enumerate(recipe.models)}
    per_layer: dict[int, dict[int, dict[str, str]]] = {}  # model -> layer -> {template: name}

    def layer_tensors(i: int, layer: int) -> dict[str, str]:
        """A model's tensors of one layer, keyed by the name with the layer number as ``#``."""
        if i not in per_layer:
            table: dict[int, dict[str, str]] = {}
            for name in models[i].tensors:
                li = layer_index(name)
                if li is not None:
                    table.setdefault(li, {})[renamed_layer(name, "#")] = name
            per_layer[i] = table
        return per_layer[i].get(layer, {})

    ref_arch = (reference.model_type, reference.architectures)
    for i, sl in enumerate(recipe.slices):
        for k, src in enumerate(sl.sources):
            ckpt = by_ref[src.model]
            where = f"slices[{i}].sources[{k}]"
            if (ckpt.model_type, ckpt.architectures) != ref_arch:
                raise IncompatibleModelsError(
                    f"{where}.model: {ckpt.ref} is a {ckpt.model_type} "
                    f"({', '.join(ckpt.architectures) or 'no architectures'}) but the output is a "
                    f"{reference.model_type} ({', '.join(reference.architectures)}, from {reference.ref}); "
                    "a layer stack takes layers of one architecture"
                )
            n = model_layers(ckpt)
            a, b = src.layer_range
            if b > n:
                raise RecipeError(
                    f"{where}.layer_range: [{a}, {b}] runs past {ckpt.ref}'s {n} layers; "
                    f"layer_range is [first, end) with end at most {n}"
                )

    layers: list[OutputLayer] = []
    tensors: list[SlicedTensor] = []
    template: dict[str, tuple[int, ...]] | None = None
    layer_tensors_out: list[SlicedTensor] = []
    for i, sl in enumerate(recipe.slices):
        count = sl.num_layers
        for offset in range(count):
            out_index = len(layers)
            src_layers = tuple(src.layer_range[0] + offset for src in sl.sources)
            layers.append(OutputLayer(out_index, i, src_layers))
            pos = offset / (count - 1) if count > 1 else 1.0
            tables = [layer_tensors(index_of[src.model], li) for src, li in zip(sl.sources, src_layers, strict=True)]
            first = tables[0]
            for k, table in enumerate(tables):
                src = sl.sources[k]
                where = f"slices[{i}].sources[{k}] ({src.model}, layer {src_layers[k]})"
                if not table:
                    raise IncompatibleModelsError(f"{where}: the checkpoint has no tensors of that layer")
                if set(table) != set(first):
                    odd = sorted(set(table) ^ set(first))[0].replace("#", str(src_layers[k]))
                    raise IncompatibleModelsError(
                        f"{where}: its tensors differ from slices[{i}].sources[0]'s (e.g. {odd}); the "
                        "sources of a slice must have the same architecture"
                    )
            shapes = {}
            for key in first:
                shape = tuple(models[index_of[sl.sources[0].model]].tensors[first[key]].shape)
                for k, table in enumerate(tables):
                    other = tuple(models[index_of[sl.sources[k].model]].tensors[table[key]].shape)
                    if other != shape:
                        raise IncompatibleModelsError(
                            f"slices[{i}].sources[{k}] ({sl.sources[k].model}): tensor {table[key]} has "
                            f"shape {list(other)} where slices[{i}].sources[0]'s has {list(shape)}; the "
                            "sources of a slice must have the same architecture"
                        )
                shapes[key] = shape
            if template is None:
                template = shapes
            elif shapes != template:
                key = sorted(k for k in set(shapes) | set(template) if shapes.get(k) != template.get(k))[0]
                raise IncompatibleModelsError(
                    f"slices[{i}] (output layer {out_index}): tensor {key.replace('#', str(out_index))} is "
                    f"{list(shapes[key]) if key in shapes else 'missing'} where output layer 0 has "
                    f"{list(template[key]) if key in template else 'none'}; every layer of the stack must "
                    "have the same tensors and shapes (the same architecture)"
                )
            # checkpoint order within the layer, as the first source stores them
            for key in first:
                name = key.replace("#", str(out_index), 1)
                layer_tensors_out.append(SlicedTensor(
                    name=name, shape=shapes[key], slice=i, pos=pos,
                    sources=tuple(SourceTensor(index_of[src.model], table[key])
                                  for src, table in zip(sl.sources, tables, strict=True)),
                ))

    # tensors outside the stack: the reference's, from the first slice (input side) or the last
    first_sl, last_sl = 0, len(recipe.slices) - 1
    pre, post = [], []
    for name, info in reference.tensors.items():
        if layer_index(name) is not None:
            continue
        i = first_sl if is_input_side(name) else last_sl
        sources = []
        for k, src in enumerate(recipe.slices[i].sources):
            ckpt = by_ref[src.model]
            got = ckpt.tensors.get(name)
            if got is None or tuple(got.shape) != tuple(info.shape):
                have = "does not have it" if got is None else f"has shape {list(got.shape)}"
                raise IncompatibleModelsError(
                    f"slices[{i}].sources[{k}] ({src.model}): tensor {name} (outside the layer stack, "
                    f"taken from this slice) {have} where {reference.ref} has {list(info.shape)}; the "
                    "models must have the same architecture"
                )
            sources.append(SourceTensor(index_of[src.model], name))
        (pre if is_input_side(name) else post).append(
            SlicedTensor(name=name, shape=tuple(info.shape), slice=i, sources=tuple(sources), pos=0.0)
        )
    tensors = pre + layer_tensors_out + post

    updates: dict[str, object] = {}
    config = reference.config
    for key in ("num_hidden_layers", "n_layer", "num_layers", "n_layers"):
        if isinstance(config.get(key), int):
            updates[key] = len(layers)
            break
    for key in _PER_LAYER_CONFIG_KEYS:
        if isinstance(config.get(key), list):
            rows = []
            for layer in layers:
                src = recipe.slices[layer.slice].sources[0]
                values = by_ref[src.model].config.get(key) or []
                li = layer.source_layers[0]
                rows.append(values[li] if li < len(values) else config[key][-1])
            updates[key] = rows
    return SliceLayout(layers=layers, tensors=tensors, config_updates=updates)
