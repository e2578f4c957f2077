"""A character-level fast tokenizer built with the ``tokenizers`` library.

One token per character keeps the tiny models' job simple (the skills are per-letter
maps) while still being a real Hugging Face tokenizer that ``AutoTokenizer`` loads.
Each skill's prompt opener (``"upper:"``) is one whole token, like a word in a real
vocabulary: an expert's fine-tune then has a row of its own to key its skill on, which
keeps the experts' deltas from overwriting each other's (and the base's) behaviour.
"""

from __future__ import annotations

import string
from collections.abc import Iterable
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, processors
from transformers import PreTrainedTokenizerFast

PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)
# Every character the demo skills can produce, plus a little punctuation for users.
ALPHABET = " " + string.ascii_lowercase + string.ascii_uppercase + string.digits + ":=.,-?!'"


def skill_tokens(names: Iterable[str]) -> list[str]:
    return [f"{name}:" for name in names]


def build_tokenizer(skill_names: Iterable[str] | None = None) -> PreTrainedTokenizerFast:
    """A BPE model with single characters and no merges (one id per character), plus one
    whole token per skill opener. Default skills: every demo skill."""
    if skill_names is None:
        from fusion_ui.demo.skills import EXPERT_SKILLS, GENERAL_SKILLS

        skill_names = [*GENERAL_SKILLS, *EXPERT_SKILLS]
    vocab = {tok: i for i, tok in enumerate([*SPECIAL_TOKENS, *ALPHABET])}
    core = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token=UNK))
    core.decoder = decoders.Fuse()  # characters join back without separators
    core.add_special_tokens(list(SPECIAL_TOKENS))
    # Every sequence opens with BOS, as Llama's do: attention has a fixed first token to rest
    # on, so the instruction token is free to carry only the task.
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])]
    )
    # ":" never occurs inside an input word, so these cannot split a word.
    core.add_tokens([AddedToken(t, normalized=False) for t in skill_tokens(skill_names)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD,
        bos_token=BOS,
        eos_token=EOS,
        unk_token=UNK,
        padding_side="left",  # generation pads on the left
        model_max_length=128,
    )


def save_tokenizer(tokenizer: PreTrainedTokenizerFast, folder: Path) -> None:
    tokenizer.save_pretrained(str(folder))
