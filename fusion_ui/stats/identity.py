"""Who a model on disk is, without loading it: the same :class:`ModelIdentity` (and fingerprints)
that :func:`fusion_ui.compose.artefact.identify` gives for a loaded model.

The architecture is built on the ``meta`` device (no memory), and only the tensors the weights
fingerprint samples (input embeddings, first and last block) are read from the checkpoint and
put in place; then :func:`identify` runs on it as on a loaded model. Statistics record the
identity of the model they were computed on, and a merge compares it with the model it is given.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedModel

from fusion_ui.compose.artefact import ModelIdentity, identify
from fusion_ui.compose.calm import decoder_blocks
from fusion_ui.errors import ModelSourceError
from fusion_ui.io.checkpoint import Checkpoint


def identify_checkpoint(ckpt: Checkpoint) -> ModelIdentity:
    """``identify`` of the model in ``ckpt`` (reads the embeddings and two blocks, not the rest)."""
    try:
        config = AutoConfig.from_pretrained(str(ckpt.path))
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelSourceError(
            f"cannot build the architecture of {ckpt.ref} from its config.json: {exc}; statistics "
            "and data-aware merges need a causal LM that transformers knows"
        ) from exc
    _load_fingerprinted(model, ckpt)
    return identify(model, ckpt.source)


def _load_fingerprinted(model: PreTrainedModel, ckpt: Checkpoint) -> None:
    """Put the real tensors of what ``weights_fingerprint`` samples into the meta model."""
    wanted: list[nn.Parameter] = [model.get_input_embeddings().weight]
    blocks = decoder_blocks(model)
    for block in (blocks[0], blocks[-1]):
        wanted += [p for _, p in block.named_parameters()]
    names: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    state = {}
    for p in wanted:
        found = next((n for n in names.get(id(p), []) if n in ckpt), None)
        if found is None:
            raise ModelSourceError(
                f"{ckpt.ref} holds none of {names.get(id(p), ['?'])}: its tensors do not match its "
                "config.json (a converted or partial checkpoint?)"
            )
        state[found] = ckpt.tensor(found).to(torch.float32)
    model.load_state_dict(state, strict=False, assign=True)
