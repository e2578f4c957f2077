"""Whether saved statistics belong to the model a merge gives them to.

A merge names, for each model, the folder of its statistics. Before any tensor is merged the
folder is checked against the opened checkpoint, and each problem is a RecipeError that names
the model and what to do:

- missing: no folder, or no ``statistics.json`` in it, or statistics of the other kind;
- another architecture: the config fingerprint differs, or tensor names/shapes do not match;
- stale: same architecture, other weights (the model changed since they were computed).
"""

from __future__ import annotations

from pathlib import Path

from fusion_ui.compose.artefact import ModelIdentity
from fusion_ui.errors import ModelSourceError, RecipeError
from fusion_ui.io.checkpoint import Checkpoint
from fusion_ui.stats.artefact import StatsInfo, read_statistics_info

_WHAT = {"fisher": "Fisher", "gram": "Gram (RegMean)"}


def stats_command(kind: str, ckpt: Checkpoint) -> str:
    """The command that computes ``kind`` statistics for ``ckpt``."""
    return f"`fusion-ui stats {kind} {ckpt.ref} --data FILE --out DIR`"


def check_statistics(
    folder: str, kind: str, ckpt: Checkpoint, identity: ModelIdentity, *, who: str
) -> StatsInfo:
    """The statistics in ``folder`` if they are ``kind`` statistics of exactly ``ckpt``'s model
    (``identity``: :func:`fusion_ui.stats.identity.identify_checkpoint` of it); ``who`` names
    the model in errors (``"models[1] (./expert_b)"``)."""
    what = _WHAT[kind]
    if not folder:
        raise RecipeError(
            f"{who}: the merge reads each model's {what} statistics and none are given: set "
            f"`{kind}: DIR` for it; compute them with {stats_command(kind, ckpt)}"
        )
    if not Path(folder).expanduser().is_dir():
        raise RecipeError(
            f"{who}: {kind} statistics folder {folder} does not exist: check the path, or compute "
            f"them with {stats_command(kind, ckpt)}"
        )
    try:
        info = read_statistics_info(folder)
    except ModelSourceError as exc:
        raise RecipeError(f"{who}: {exc.message}") from None
    if info.kind != kind:
        raise RecipeError(
            f"{who}: {folder} holds {_WHAT.get(info.kind, info.kind)} statistics, not {what}; give "
            f"the folder of its {kind} statistics ({stats_command(kind, ckpt)})"
        )
    made_for = info.model.get("ref", "?")
    if info.model.get("config_sha256") != identity.config_sha256:
        raise RecipeError(
            f"{who}: the {kind} statistics in {folder} are from another architecture (computed "
            f"for {made_for}, {info.model.get('model_type')}, {info.model.get('num_layers')} blocks, "
            f"width {info.model.get('hidden_size')}; this model is {identity.describe()}); compute "
            f"them for this model with {stats_command(kind, ckpt)}"
        )
    problem = _layout_problem(info, ckpt)
    if problem is not None:
        raise RecipeError(
            f"{who}: the {kind} statistics in {folder} are from another architecture: {problem}; "
            f"compute them for this model with {stats_command(kind, ckpt)}"
        )
    if info.model.get("weights_sha256") != identity.weights_sha256:
        raise RecipeError(
            f"{who}: the {kind} statistics in {folder} are stale: they were computed for other "
            f"weights ({made_for}; the model changed since, or it is another fine-tune of the same "
            f"architecture); compute them again with {stats_command(kind, ckpt)}"
        )
    return info


def _inputs(info: StatsInfo, name: str, shape: tuple[int, ...]) -> int:
    """The input width of a linear weight: (out, in) for nn.Linear, (in, out) for a Conv1D."""
    return shape[0] if name in info.transposed else shape[1]


def _layout_problem(info: StatsInfo, ckpt: Checkpoint) -> str | None:
    """What in the stored tensors does not fit ``ckpt``'s tensors, or None."""
    for name in sorted(info.names()):
        tensor = ckpt.tensors.get(name)
        key = info.stored_name(name)
        if key is None:
            return f"{name} is an alias of a tensor the file does not hold"
        if tensor is None:
            if info.kind == "gram" or name.endswith("lm_head.weight"):
                continue  # a head tied to the embeddings is not stored in the checkpoint
            return f"the model has no tensor {name}"
        shape = info.shapes[key]
        if info.kind == "fisher":
            if tuple(shape) != tuple(tensor.shape):
                return f"{name} is {list(tensor.shape)} in the model but {list(shape)} in the statistics"
        elif len(tensor.shape) != 2 or tuple(shape) != (_inputs(info, name, tensor.shape),) * 2:
            return f"{name} is {list(tensor.shape)} in the model but its Gram is {list(shape)}"
    return None
