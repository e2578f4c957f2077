"""Build the demo family: tokenizer, eval sets, a pretrained base and skill experts.

The base is pretrained on the general skills, and on each expert skill for words without
that skill's hidden letters, in the shared prompt format (see ``skills``); each expert is a
short, low-learning-rate fine-tune of the (bf16-rounded) base on one expert skill, so its
delta is small and redundant enough for DARE, and merges of the experts hold. Every random
draw derives from one seed, so the same seed and thread count give the same bits.
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fusion_ui.demo.model import SIZES, generation_config, new_model
from fusion_ui.demo.skills import (
    EXPERT_SKILLS,
    GENERAL,
    GENERAL_SKILLS,
    HIDDEN_LETTERS,
    base_letters,
    eval_examples,
    make_example,
    random_word,
    training_stream,
    write_jsonl,
)
from fusion_ui.demo.tokenizer import build_tokenizer
from fusion_ui.demo.train import TrainConfig, train
from fusion_ui.errors import ExportError, RecipeError

# progress(stage, steps_done_in_stage, steps_in_stage); stages: "base", "expert_<skill>".
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BuildConfig:
    """Everything that determines the family's bits."""

    size: str = "full"  # key of fusion_ui.demo.model.SIZES
    seed: int = 0  # root of every random draw (init, data, eval sets)
    base: TrainConfig = field(  # pretraining: general skills + expert skills without their hidden letters
        default_factory=lambda: TrainConfig(steps=1500, batch_size=128, lr=2e-3, warmup=100, weight_decay=0.1)
    )
    expert: TrainConfig = field(  # each expert's fine-tune on its one skill
        default_factory=lambda: TrainConfig(steps=300, batch_size=64, lr=1e-4, warmup=10, min_lr_ratio=0.1)
    )
    # share of general-skill examples mixed into each expert's fine-tune: 5% keeps the experts
    # from damaging the general skills (without it the upper expert fell to 23% on them), and
    # that collateral damage is what broke the all-expert merges
    replay: float = 0.05
    experts: tuple[str, ...] = tuple(EXPERT_SKILLS)  # which expert skills to fine-tune
    eval_items: int = 200  # held-out items per eval set
    min_len: int = 3  # shortest input word
    max_len: int = 10  # longest input word
    threads: int = 1  # torch intra-op threads; part of bit-reproducibility

    def __post_init__(self) -> None:
        if self.size not in SIZES:
            raise RecipeError(f"unknown demo size {self.size!r}; choose one of {', '.join(SIZES)}")
        unknown = [s for s in self.experts if s not in EXPERT_SKILLS]
        if unknown:
            raise RecipeError(f"unknown expert skills {unknown}; choose from {', '.join(EXPERT_SKILLS)}")
        if not 0.0 <= self.replay < 1.0:
            raise RecipeError("replay must be in [0, 1)")
        if not 1 <= self.min_len <= self.max_len:
            raise RecipeError("need 1 <= min_len <= max_len")


PRESETS: dict[str, BuildConfig] = {
    "full": BuildConfig(),
    # Seconds on one CPU core: checks the pipeline, not the accuracy.
    "tiny": BuildConfig(
        size="tiny",
        base=TrainConfig(steps=30, batch_size=16, lr=3e-3, warmup=5, weight_decay=0.1),
        expert=TrainConfig(steps=5, batch_size=16, lr=1e-3, warmup=1),
        eval_items=20,
        max_len=6,
    ),
}


@dataclass
class BuildReport:
    """What a build wrote and how long it took."""

    out_dir: Path  # the family folder
    models: dict[str, Path]  # "base" / "expert_<skill>" -> model folder
    eval_sets: dict[str, Path]  # skill -> JSONL file
    seconds: dict[str, float]  # wall time per stage
    final_loss: dict[str, float]  # mean loss of the last 10 steps per stage


def eval_set_names(cfg: BuildConfig) -> list[str]:
    return [*cfg.experts, GENERAL]


def held_out_words(cfg: BuildConfig, names: list[str] | None = None) -> set[str]:
    """The words of the eval sets ``names`` (default: the build's), kept out of every training
    stream; what :func:`write_eval_sets` returns, without writing anything."""
    words: set[str] = set()
    for name in names if names is not None else eval_set_names(cfg):
        items = eval_examples(name, cfg.eval_items, seed=cfg.seed, min_len=cfg.min_len, max_len=cfg.max_len)
        words.update(ex.prompt.split(": ", 1)[1][:-2] for ex in items)
    return words


def write_eval_sets(cfg: BuildConfig, folder: Path) -> tuple[dict[str, Path], set[str]]:
    """Held-out eval sets, and the words they use (kept out of every training stream)."""
    paths: dict[str, Path] = {}
    for name in eval_set_names(cfg):
        items = eval_examples(name, cfg.eval_items, seed=cfg.seed, min_len=cfg.min_len, max_len=cfg.max_len)
        paths[name] = folder / f"{name}.jsonl"
        write_jsonl(items, paths[name])
    return paths, held_out_words(cfg)


def write_cocktail_examples(cfg: BuildConfig, folder: Path, n: int = 5) -> dict[str, Path]:
    """``n`` examples of each expert skill for LM-Cocktail's weights (``<skill>_<n>.jsonl``):
    seeded, distinct, and never a word of any eval set, so scoring the merge on the eval sets
    never sees them."""
    held_out = held_out_words(cfg, [*EXPERT_SKILLS, GENERAL])
    paths: dict[str, Path] = {}
    for skill in EXPERT_SKILLS:
        rng = random.Random(f"cocktail/{skill}/{cfg.seed}")
        words: list[str] = []
        while len(words) < n:
            word = random_word(rng, cfg.min_len, cfg.max_len)
            if word not in held_out and word not in words:
                words.append(word)
        paths[skill] = folder / f"{skill}_{n}.jsonl"
        write_jsonl([make_example(skill, w) for w in words], paths[skill])
    return paths


def pretrain_base(
    cfg: BuildConfig, tokenizer: PreTrainedTokenizerFast, exclude: set[str], progress: Progress | None = None
) -> tuple[LlamaForCausalLM, list[float]]:
    model = new_model(SIZES[cfg.size], tokenizer, seed=cfg.seed)
    stream = training_stream(
        [*GENERAL_SKILLS, *EXPERT_SKILLS],
        seed=cfg.seed,
        min_len=cfg.min_len,
        max_len=cfg.max_len,
        exclude=exclude,
        letters={name: base_letters(name) for name in EXPERT_SKILLS},
    )
    cb = None if progress is None else (lambda i, _loss: progress("base", i + 1, cfg.base.steps))
    losses = train(model, tokenizer, stream, cfg.base, on_step=cb)
    return model, losses


def finetune_expert(
    base: LlamaForCausalLM,
    skill: str,
    cfg: BuildConfig,
    tokenizer: PreTrainedTokenizerFast,
    exclude: set[str],
    progress: Progress | None = None,
) -> tuple[LlamaForCausalLM, list[float]]:
    """A copy of ``base`` fine-tuned on ``skill``, with ``cfg.replay`` of general examples mixed in."""
    model = copy.deepcopy(base).float()
    torch.manual_seed(cfg.seed)
    mix = {skill: 1.0 - cfg.replay}
    if cfg.replay > 0:
        mix.update(dict.fromkeys(GENERAL_SKILLS, cfg.replay / len(GENERAL_SKILLS)))
    stream = training_stream(
        mix, seed=hash_seed(cfg.seed, skill), min_len=cfg.min_len, max_len=cfg.max_len, exclude=exclude
    )
    stage = f"expert_{skill}"
    cb = None if progress is None else (lambda i, _loss: progress(stage, i + 1, cfg.expert.steps))
    losses = train(model, tokenizer, stream, cfg.expert, on_step=cb)
    return model, losses


def hash_seed(seed: int, name: str) -> int:
    """A stable per-name seed (Python's hash() is salted per process)."""
    return seed * 1_000_003 + sum((i + 1) * ord(c) for i, c in enumerate(name))


def save_model(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, folder: Path) -> LlamaForCausalLM:
    """Write a complete bf16 checkpoint folder; returns the bf16-rounded weights as float32."""
    shipped = copy.deepcopy(model).to(torch.bfloat16)
    shipped.generation_config = generation_config(tokenizer)
    shipped.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    return shipped.float()


def build_family(
    out_dir: Path, cfg: BuildConfig, *, overwrite: bool = False, progress: Progress | None = None
) -> BuildReport:
    """Build the whole family into ``out_dir`` (base/, expert_<skill>/, evals/, cocktail/ with 5
    examples of each expert skill, build_info.json)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} is not empty; pass overwrite=True (CLI: --overwrite) to replace it")
        for sub in [out_dir / "base", out_dir / "evals", out_dir / "cocktail", *out_dir.glob("expert_*")]:
            shutil.rmtree(sub, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    # One thread for bit-for-bit repeatable training; the caller's setting comes back afterwards.
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _build(out_dir, cfg, progress)
    finally:
        torch.set_num_threads(threads)


def build_experts(
    base_dir: Path, out_dir: Path, cfg: BuildConfig, *, overwrite: bool = False, progress: Progress | None = None
) -> BuildReport:
    """Fine-tune ``cfg.experts`` onto an existing base (the shipped one) into ``out_dir``,
    without pretraining a base or writing eval sets: ``out_dir/expert_<skill>/`` and
    ``out_dir/build_info.json``.

    Each expert gets the bits :func:`build_family` gives it with the same config: it starts from
    the base's bf16 weights as shipped, and its training stream leaves out the words of every
    eval set of the whole family (all expert skills and ``general``), as a full build does.
    This is how the no-replay ``upper`` expert beside the demo family is made (``--replay 0``).
    """
    base_dir, out_dir = Path(base_dir), Path(out_dir)
    if not (base_dir / "config.json").is_file():
        raise ExportError(f"no base model at {base_dir} (no config.json); build the family first")
    targets = [out_dir / f"expert_{skill}" for skill in cfg.experts]
    taken = [t for t in targets if t.exists()]
    if taken and not overwrite:
        raise ExportError(f"{taken[0]} exists; pass overwrite=True (CLI: --overwrite) to replace it")
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        tokenizer = build_tokenizer()
        base = LlamaForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16).float().eval()
        size = SIZES[cfg.size]
        got = (base.config.hidden_size, base.config.num_hidden_layers, base.config.vocab_size)
        if got != (size.hidden_size, size.num_layers, len(tokenizer)):
            raise ExportError(
                f"{base_dir} is not a {cfg.size!r} demo base (hidden, layers, vocab = {got}); "
                f"give the base of a family built with --size {cfg.size}"
            )
        held_out = held_out_words(cfg, [*EXPERT_SKILLS, GENERAL])
        seconds: dict[str, float] = {}
        final_loss: dict[str, float] = {}
        models: dict[str, Path] = {}
        for skill, target in zip(cfg.experts, targets, strict=True):
            stage = f"expert_{skill}"
            start = time.perf_counter()
            expert, losses = finetune_expert(base, skill, cfg, tokenizer, held_out, progress)
            seconds[stage] = time.perf_counter() - start
            final_loss[stage] = sum(losses[-10:]) / len(losses[-10:])
            shutil.rmtree(target, ignore_errors=True)
            save_model(expert, tokenizer, target)
            models[stage] = target
    finally:
        torch.set_num_threads(threads)
    info = {
        "config": {k: v for k, v in asdict(cfg).items() if k != "base"},  # no base trained here
        "onto_base": os.path.relpath(base_dir.resolve(), out_dir.resolve()),  # no machine's absolute path
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "final_loss": {k: round(v, 4) for k, v in final_loss.items()},
        "torch": torch.__version__,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return BuildReport(out_dir, models, {}, seconds, final_loss)


def _build(out_dir: Path, cfg: BuildConfig, progress: Progress | None) -> BuildReport:
    tokenizer = build_tokenizer()
    seconds: dict[str, float] = {}
    final_loss: dict[str, float] = {}

    eval_sets, held_out = write_eval_sets(cfg, out_dir / "evals")
    write_cocktail_examples(cfg, out_dir / "cocktail")

    start = time.perf_counter()
    base, losses = pretrain_base(cfg, tokenizer, held_out, progress)
    seconds["base"] = time.perf_counter() - start
    final_loss["base"] = sum(losses[-10:]) / len(losses[-10:])
    models = {"base": out_dir / "base"}
    base = save_model(base, tokenizer, models["base"])  # experts start from the shipped bits

    for skill in cfg.experts:
        stage = f"expert_{skill}"
        start = time.perf_counter()
        expert, losses = finetune_expert(base, skill, cfg, tokenizer, held_out, progress)
        seconds[stage] = time.perf_counter() - start
        final_loss[stage] = sum(losses[-10:]) / len(losses[-10:])
        models[stage] = out_dir / stage
        save_model(expert, tokenizer, models[stage])

    info = {
        "config": asdict(cfg),
        "hidden_letters": {name: HIDDEN_LETTERS[name] for name in EXPERT_SKILLS},  # never in the base's expert data
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "final_loss": {k: round(v, 4) for k, v in final_loss.items()},
        "torch": torch.__version__,
        "eval_sets": {k: str(p.relative_to(out_dir)) for k, p in eval_sets.items()},
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return BuildReport(out_dir, models, eval_sets, seconds, final_loss)
