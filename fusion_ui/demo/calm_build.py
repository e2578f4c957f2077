"""Build the CALM demo: the paper's key-value arithmetic (Bansal et al. 2024, Table 1), small.

- m_A (``augment/``) memorises every key's value: KV-Substitution only.
- m_B (``anchor/``, wider) learns one-digit arithmetic: Numeric-Arithmetic only, never a key.
- The bridges (``bridges/``) are trained with :mod:`fusion_ui.compose` on KV-Arithmetic over
  20 % of the keys (``train/composition.jsonl``); every eval item (``evals/``) that names a key
  names only the other 80 %.

Both models are pretrained with :func:`fusion_ui.train.loop.train_loop` on the answer-only loss
(:mod:`fusion_ui.train.lm_loss`) and shipped as complete bf16 Hugging Face folders sharing one
char tokenizer; the bridges are trained on the shipped (bf16-rounded) weights. One seed fixes
every draw; one torch thread keeps the bits reproducible.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

from fusion_ui.compose import LayerPair, compose, save_bridges, train_bridges
from fusion_ui.compose.calm import CalmModel
from fusion_ui.demo.build import save_model
from fusion_ui.demo.calm_tasks import (
    KEY_OPENER,
    KV_ARITHMETIC,
    NUMERIC_ARITHMETIC,
    TASKS,
    KeySplit,
    all_numeric,
    build_calm_tokenizer,
    composition_set,
    eval_sets,
    make_keys,
    write_jsonl,
)
from fusion_ui.demo.model import ModelSize, new_model
from fusion_ui.errors import ExportError, RecipeError
from fusion_ui.evals.generate import greedy_generate, pad_id_of
from fusion_ui.evals.perplexity import encode_items
from fusion_ui.evals.scoring import exact_match
from fusion_ui.evals.sets import EvalItem
from fusion_ui.train.lm_loss import answer_loss, collate_scored
from fusion_ui.train.loop import TrainConfig, train_loop

# progress(stage, steps_done, steps_in_stage); stages "augment", "anchor", "bridges"
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class CalmBuildConfig:
    """Everything that determines the CALM demo's bits."""

    seed: int = 0
    n_keys: int = 300  # 3-letter keys, values 0..9
    composition_share: float = 0.2  # share of the keys the composition set may use
    composition_items: int = 4000  # KV-Arithmetic training rows over those keys
    # the 200 numeric problems, this many times, mixed into the composition set: without them the
    # bridges learnt to write into every prompt and m_B's own arithmetic fell from 100 % to 20 %
    numeric_repeats: int = 5
    augment_docs: int = 6000  # m_A's pretraining documents (runs of 1-4 substitutions, see kv_chains)
    augment_bare_share: float = 0.5  # m_A's substitutions written "key: qzt 7" (see kv_chains)
    anchor_docs: int = 6000  # m_B's pretraining problems (1-3 spaces between the tokens, see numeric_chains)
    anchor_max_gap: int = 3
    eval_items: int = 200  # items per KV eval set (Numeric-Arithmetic: all 200 problems)
    augment: ModelSize = ModelSize(hidden_size=64, num_layers=4, num_heads=4, intermediate_size=256, max_positions=64)
    anchor: ModelSize = ModelSize(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384, max_positions=64)
    augment_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=600, batch_size=64, lr=3e-3, warmup_steps=50, weight_decay=0.0)
    )
    anchor_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=400, batch_size=64, lr=2e-3, warmup_steps=50, weight_decay=0.0)
    )
    bridges_train: TrainConfig = field(
        default_factory=lambda: TrainConfig(steps=2500, batch_size=32, lr=3e-3, warmup_steps=50, weight_decay=0.0)
    )
    pairs: tuple[LayerPair, ...] = (LayerPair(3, 0), LayerPair(3, 1), LayerPair(3, 2))
    threads: int = 1

    def __post_init__(self) -> None:
        if self.composition_items < 1 or self.eval_items < 1:
            raise RecipeError("composition_items and eval_items must be at least 1")

    def to_dict(self) -> dict[str, object]:
        out = asdict(self)
        out["pairs"] = [str(p) for p in self.pairs]
        return out


CALM_PRESETS: dict[str, CalmBuildConfig] = {
    "full": CalmBuildConfig(),
    # seconds on one core: checks the pipeline, not the accuracy
    "tiny": CalmBuildConfig(
        n_keys=30,
        composition_items=40,
        numeric_repeats=1,
        augment_docs=50,
        anchor_docs=50,
        eval_items=10,
        augment=ModelSize(hidden_size=16, num_layers=2, num_heads=2, intermediate_size=32, max_positions=64),
        anchor=ModelSize(hidden_size=32, num_layers=2, num_heads=2, intermediate_size=64, max_positions=32),
        augment_train=TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2),
        anchor_train=TrainConfig(steps=10, batch_size=8, lr=3e-3, warmup_steps=2),
        bridges_train=TrainConfig(steps=5, batch_size=8, lr=1e-3, warmup_steps=1),
        pairs=(LayerPair(1, 0), LayerPair(1, 1)),
    ),
}


@dataclass
class CalmBuildReport:
    out_dir: Path
    seconds: dict[str, float]
    final_loss: dict[str, float]
    table: dict[str, dict[str, float]]  # row -> task -> exact match %


def pretrain(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    items: Sequence[EvalItem],
    config: TrainConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Answer-only LM training of a whole model on ``items`` with the one training loop."""
    pairs = encode_items(tokenizer, items, with_eos=True)
    pad = pad_id_of(tokenizer)

    def loss_of(indices: Sequence[int]) -> torch.Tensor:
        ids, mask, scored = collate_scored([pairs[i] for i in indices], pad)
        return answer_loss(model(input_ids=ids, attention_mask=mask).logits, ids, scored)

    progress = None if on_step is None else (lambda p: on_step(p.done, p.total))
    model.train()
    try:
        result = train_loop(model.parameters(), loss_of, n_items=len(pairs), config=config, progress=progress)
    finally:
        model.eval()
    return result.losses


def kv_chains(
    split: KeySplit, n: int, *, seed: int, max_len: int = 4, bare_share: float = 0.0
) -> list[tuple[list[str], str]]:
    """m_A's pretraining documents: ``n`` runs of 1..``max_len`` substitutions in a row
    (``"key: qzt = 7 key: abk = 3"``), each after a seeded 0..6-character filler, so the lookup
    does not depend on where a key stands; ``bare_share`` of the substitutions are written without
    the ``=`` (``"key: qzt 7"``), so m_A also knows a value right after its key. Pure
    KV-Substitution: no arithmetic, no operator."""
    import random
    import string

    rng = random.Random(f"calm/chains/{seed}")
    keys = list(split.values)
    noise = string.ascii_lowercase + string.digits + " "
    docs = []
    for _ in range(n):
        filler = "".join(rng.choice(noise) for _ in range(rng.randint(0, 6)))
        parts = []
        for _ in range(rng.randint(1, max_len)):
            key = rng.choice(keys)
            eq = " =" if rng.random() >= bare_share else ""  # "key: qzt = 7" or "key: qzt 7"
            parts.append(f"{KEY_OPENER} {key}{eq} {split.values[key]}")
        docs.append((parts, filler))
    return docs


def numeric_chains(n: int, *, seed: int, max_len: int = 3, max_gap: int = 3) -> list[tuple[list[str], str]]:
    """m_B's pretraining documents: runs of 1..``max_len`` one-digit problems
    (``"3 + 4 = 7 9  -   5 = 4"``), 1..``max_gap`` spaces around each operator and before each
    ``=``, so m_B finds operands by what they are, not by where they stand. Digits, operators
    and spaces only: m_B never sees a letter, let alone a key."""
    import random

    from fusion_ui.demo.calm_tasks import DIGITS, OPS, apply

    rng = random.Random(f"calm/numeric/{seed}")

    def gap() -> str:
        return " " * rng.randint(1, max_gap)

    docs = []
    for _ in range(n):
        parts = []
        for _ in range(rng.randint(1, max_len)):
            a, op, b = rng.choice(DIGITS), rng.choice(OPS), rng.choice(DIGITS)
            parts.append(f"{a}{gap()}{op}{gap()}{b}{gap()}= {apply(a, op, b)}")
        docs.append((parts, ""))
    return docs


def encode_chain(tokenizer: PreTrainedTokenizerFast, parts: list[str], filler: str) -> tuple[tuple[int, ...], tuple[bool, ...]]:
    """Ids of ``filler`` + the substitutions joined by spaces, and which ids are scored: each
    value (with the space before it) and the EOS at the end."""
    ids = list(tokenizer.encode(filler.strip(), add_special_tokens=True)) if filler.strip() else list(
        tokenizer.encode("", add_special_tokens=True)
    )
    scored = [False] * len(ids)
    for i, part in enumerate(parts):
        head, value = part.rsplit(" ", 1)
        lead = " " if (i or filler.strip()) else ""
        h = tokenizer.encode(lead + head, add_special_tokens=False)
        v = tokenizer.encode(" " + value, add_special_tokens=False)
        ids += h + v
        scored += [False] * len(h) + [True] * len(v)
    ids.append(tokenizer.eos_token_id)
    scored.append(True)
    return tuple(ids), tuple(scored)


def pretrain_chains(
    model: torch.nn.Module,
    tokenizer: PreTrainedTokenizerFast,
    docs: Sequence[tuple[list[str], str]],
    config: TrainConfig,
    *,
    on_step: Callable[[int, int], None] | None = None,
) -> list[float]:
    """:func:`pretrain` on :func:`kv_chains` documents (several scored answers per row)."""
    rows = [encode_chain(tokenizer, parts, filler) for parts, filler in docs]
    pad = pad_id_of(tokenizer)

    def loss_of(indices: Sequence[int]) -> torch.Tensor:
        batch = [rows[i] for i in indices]
        width = max(len(r[0]) for r in batch)
        ids = torch.full((len(batch), width), pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        scored = torch.zeros_like(ids, dtype=torch.bool)
        for j, (r_ids, r_scored) in enumerate(batch):
            ids[j, : len(r_ids)] = torch.tensor(r_ids)
            mask[j, : len(r_ids)] = 1
            scored[j, : len(r_ids)] = torch.tensor(r_scored)
        return answer_loss(model(input_ids=ids, attention_mask=mask).logits, ids, scored)

    progress = None if on_step is None else (lambda p: on_step(p.done, p.total))
    model.train()
    try:
        result = train_loop(model.parameters(), loss_of, n_items=len(rows), config=config, progress=progress)
    finally:
        model.eval()
    return result.losses


def accuracy(model: torch.nn.Module, tokenizer: PreTrainedTokenizerFast, items: Sequence[EvalItem]) -> float:
    """Exact match (%) of greedy answers."""
    preds = greedy_generate(model, tokenizer, [it.prompt for it in items], max_new_tokens=5, device="cpu")
    return 100.0 * sum(exact_match(p, it.answer) for p, it in zip(preds, items, strict=True)) / len(items)


def score_rows(
    rows: dict[str, torch.nn.Module], tokenizer: PreTrainedTokenizerFast, sets: dict[str, list[EvalItem]]
) -> dict[str, dict[str, float]]:
    return {name: {task: accuracy(m, tokenizer, sets[task]) for task in TASKS} for name, m in rows.items()}


def format_table(table: dict[str, dict[str, float]], paper: dict[str, dict[str, float]] | None = None) -> str:
    """The paper's Table 1 shape: rows models, columns the three tasks (and the paper's numbers)."""
    from fusion_ui.demo.calm_tasks import TASK_TITLES

    head = f"{'':<22}" + "".join(f"{TASK_TITLES[t]:>20}" for t in TASKS)
    lines = [head]
    for name, row in table.items():
        cells = "".join(f"{row[t]:>20.1f}" for t in TASKS)
        lines.append(f"{name:<22}{cells}")
        if paper and name in paper:
            lines.append(f"{'  (paper)':<22}" + "".join(f"{paper[name][t]:>20.1f}" for t in TASKS))
    return "\n".join(lines)


PAPER_TABLE = {  # Bansal et al. 2024, Table 1 (PaLM2-XXS m_A, PaLM2-XS m_B)
    "m_A": {"kv_substitution": 98.1, "numeric_arithmetic": 4.2, "kv_arithmetic": 0.7},
    "m_B": {"kv_substitution": 0.0, "numeric_arithmetic": 73.7, "kv_arithmetic": 0.0},
    "CALM": {"kv_substitution": 92.9, "numeric_arithmetic": 72.0, "kv_arithmetic": 84.3},
}


def train_calm(
    anchor: LlamaForCausalLM,
    augment: LlamaForCausalLM,
    tokenizer: PreTrainedTokenizerFast,
    items: Sequence[EvalItem],
    cfg: CalmBuildConfig,
    progress: Progress | None = None,
) -> tuple[CalmModel, list[float]]:
    model = compose(anchor, augment, tokenizer, pairs=cfg.pairs, seed=cfg.seed)
    cb = None if progress is None else (lambda p: progress("bridges", p.done, p.total))
    result = train_bridges(model, tokenizer, items, config=cfg.bridges_train, progress=cb)
    return model, result.losses


def _stage_cb(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return None if progress is None else (lambda done, total: progress(stage, done, total))


def build_calm_demo(
    out_dir: Path,
    cfg: CalmBuildConfig,
    *,
    overwrite: bool = False,
    progress: Progress | None = None,
    evaluate: bool = True,
    bridges_only: bool = False,
) -> CalmBuildReport:
    """Build the demo into ``out_dir``: ``augment/``, ``anchor/``, ``bridges/``,
    ``evals/<task>.jsonl``, ``train/composition.jsonl``, ``build_info.json``.

    ``bridges_only`` keeps the two models of an earlier build in ``out_dir`` (the same seed
    rebuilds them bit for bit) and trains only the bridges again."""
    out_dir = Path(out_dir)
    if bridges_only:
        if not (out_dir / "anchor" / "config.json").is_file() or not (out_dir / "augment" / "config.json").is_file():
            raise ExportError(f"{out_dir} holds no earlier build (anchor/, augment/); build it whole first")
        shutil.rmtree(out_dir / "bridges", ignore_errors=True)
    elif out_dir.exists() and any(out_dir.iterdir()):
        if not overwrite:
            raise ExportError(f"{out_dir} already exists and is not empty; pass overwrite to replace it")
        for name in ("augment", "anchor", "bridges", "evals", "train", "ablations"):
            shutil.rmtree(out_dir / name, ignore_errors=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        return _build(out_dir, cfg, progress, evaluate, bridges_only)
    finally:
        torch.set_num_threads(threads)


def _build(
    out_dir: Path, cfg: CalmBuildConfig, progress: Progress | None, evaluate: bool, bridges_only: bool
) -> CalmBuildReport:
    seconds: dict[str, float] = {}
    final: dict[str, float] = {}
    tokenizer = build_calm_tokenizer()
    split = make_keys(cfg.n_keys, cfg.composition_share, seed=cfg.seed)
    sets = eval_sets(split, cfg.eval_items, seed=cfg.seed)
    for task, items in sets.items():
        write_jsonl(items, out_dir / "evals" / f"{task}.jsonl")
    train_items = composition_set(split, cfg.composition_items, seed=cfg.seed) + all_numeric() * cfg.numeric_repeats
    write_jsonl(train_items, out_dir / "train" / "composition.jsonl")
    (out_dir / "train" / "keys.json").write_text(json.dumps(_keys_doc(split), indent=1) + "\n")

    if bridges_only:
        from fusion_ui.evals.run import load_causal_lm

        earlier = json.loads((out_dir / "build_info.json").read_text())
        for stage in ("augment", "anchor"):
            seconds[stage] = float(earlier["seconds"][stage])
            final[stage] = float(earlier["final_loss"][stage])
        augment = _shipped(load_causal_lm(str(out_dir / "augment"), device="cpu")[0], "augment")
        anchor = _shipped(load_causal_lm(str(out_dir / "anchor"), device="cpu")[0], "anchor")
    else:
        augment, anchor = _pretrain_models(out_dir, cfg, tokenizer, split, sets, progress, seconds, final, evaluate)
    return _compose_stage(out_dir, cfg, tokenizer, split, sets, train_items, augment, anchor, progress, seconds, final, evaluate)


def _pretrain_models(
    out_dir: Path,
    cfg: CalmBuildConfig,
    tokenizer: PreTrainedTokenizerFast,
    split: KeySplit,
    sets: dict[str, list[EvalItem]],
    progress: Progress | None,
    seconds: dict[str, float],
    final: dict[str, float],
    evaluate: bool,
) -> tuple[LlamaForCausalLM, LlamaForCausalLM]:
    # m_A: every key's value (the held-out keys too: m_A's knowledge is what CALM reuses)
    start = time.perf_counter()
    augment = new_model(cfg.augment, tokenizer, seed=cfg.seed + 1)
    docs = kv_chains(split, cfg.augment_docs, seed=cfg.seed, bare_share=cfg.augment_bare_share)
    losses = pretrain_chains(augment, tokenizer, docs, cfg.augment_train, on_step=_stage_cb(progress, "augment"))
    seconds["augment"] = time.perf_counter() - start
    final["augment"] = sum(losses[-10:]) / len(losses[-10:])
    augment = _shipped(save_model(augment, tokenizer, out_dir / "augment"), "augment")

    # m_B: one-digit arithmetic, never a key
    start = time.perf_counter()
    anchor = new_model(cfg.anchor, tokenizer, seed=cfg.seed + 2)
    docs = numeric_chains(cfg.anchor_docs, seed=cfg.seed, max_len=1, max_gap=cfg.anchor_max_gap)
    losses = pretrain_chains(anchor, tokenizer, docs, cfg.anchor_train, on_step=_stage_cb(progress, "anchor"))
    seconds["anchor"] = time.perf_counter() - start
    final["anchor"] = sum(losses[-10:]) / len(losses[-10:])
    anchor = _shipped(save_model(anchor, tokenizer, out_dir / "anchor"), "anchor")
    if evaluate:  # m_B alone on its own skill, before any composing
        print(f"m_B alone, Numeric-Arithmetic: {accuracy(anchor, tokenizer, sets[NUMERIC_ARITHMETIC]):.1f} %", flush=True)
    return augment, anchor


def _compose_stage(
    out_dir: Path,
    cfg: CalmBuildConfig,
    tokenizer: PreTrainedTokenizerFast,
    split: KeySplit,
    sets: dict[str, list[EvalItem]],
    train_items: list[EvalItem],
    augment: LlamaForCausalLM,
    anchor: LlamaForCausalLM,
    progress: Progress | None,
    seconds: dict[str, float],
    final: dict[str, float],
    evaluate: bool,
) -> CalmBuildReport:

    # the bridges, on the shipped (bf16-rounded) models, composition keys only
    start = time.perf_counter()
    calm, losses = train_calm(anchor, augment, tokenizer, train_items, cfg, progress)
    seconds["bridges"] = time.perf_counter() - start
    final["bridges"] = sum(losses[-10:]) / len(losses[-10:])
    training = {
        **cfg.bridges_train.to_dict(),
        "n_items": len(train_items),
        "final_loss": round(final["bridges"], 5),
        "seconds": round(seconds["bridges"], 1),
        "set": "train/composition.jsonl",
    }
    save_bridges(calm, out_dir / "bridges", tokenizer=tokenizer, training=training, force=True)

    table: dict[str, dict[str, float]] = {}
    if evaluate:
        start = time.perf_counter()
        table = score_rows({"m_A": augment, "m_B": anchor, "CALM": calm}, tokenizer, sets)
        seconds["eval"] = time.perf_counter() - start
    info = {
        "config": cfg.to_dict(),
        "sizes": {
            "augment_parameters": sum(p.numel() for p in augment.parameters()),
            "anchor_parameters": sum(p.numel() for p in anchor.parameters()),
            "bridges_parameters": sum(p.numel() for p in calm.bridges.parameters()),
        },
        "keys": {"total": len(split.values), "composition": len(split.composition), "held_out": len(split.held_out)},
        "seconds": {k: round(v, 1) for k, v in seconds.items()},
        "final_loss": {k: round(v, 5) for k, v in final.items()},
        "table": {r: {t: round(v, 1) for t, v in row.items()} for r, row in table.items()},
        "torch": torch.__version__,
    }
    (out_dir / "build_info.json").write_text(json.dumps(info, indent=2) + "\n")
    return CalmBuildReport(out_dir, seconds, final, table)


def _shipped(model: LlamaForCausalLM, name: str) -> LlamaForCausalLM:
    model.config._name_or_path = name  # bridges.json records the folder name, not a build path
    return model.eval()


def _keys_doc(split: KeySplit) -> dict[str, object]:
    return {
        "composition": list(split.composition),
        "held_out": list(split.held_out),
        "values": split.values,
    }


def preset(size: str, **changes: object) -> CalmBuildConfig:
    if size not in CALM_PRESETS:
        raise RecipeError(f"unknown CALM demo size {size!r}; choose one of {', '.join(CALM_PRESETS)}")
    return replace(CALM_PRESETS[size], **changes)


__all__ = ["CALM_PRESETS", "KV_ARITHMETIC", "CalmBuildConfig", "CalmBuildReport", "build_calm_demo", "preset"]


# -- ablations (the paper's Table 1 has them too) ---------------------------------------------


class LoraLinear(torch.nn.Module):
    """``base(x) + x A^T B^T * scale``: a frozen linear layer with a trainable low-rank update
    (B starts at zero, so the wrapped model starts as the base)."""

    def __init__(self, base: torch.nn.Linear, rank: int, *, alpha: float | None = None, seed: int = 0) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        gen = torch.Generator().manual_seed(seed)
        self.lora_a = torch.nn.Parameter(torch.randn(rank, base.in_features, generator=gen) / base.in_features**0.5)
        self.lora_b = torch.nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = (alpha if alpha is not None else rank) / rank

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.lora_a.t() @ self.lora_b.t()) * self.scale


def add_lora(model: LlamaForCausalLM, rank: int, *, seed: int = 0) -> list[torch.nn.Parameter]:
    """LoRA of ``rank`` on every attention projection (q, k, v, o) of ``model``, in place; the
    rest frozen. Returns the trainable parameters."""
    model.requires_grad_(False)
    params: list[torch.nn.Parameter] = []
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        for j, name in enumerate(("q_proj", "k_proj", "v_proj", "o_proj")):
            wrapped = LoraLinear(getattr(attn, name), rank, seed=seed * 1000 + i * 10 + j)
            setattr(attn, name, wrapped)
            params += [wrapped.lora_a, wrapped.lora_b]
    return params


def lora_rank_for(model: LlamaForCausalLM, n_params: int) -> int:
    """The rank whose q/k/v/o LoRA has about ``n_params`` trainable parameters."""
    per_rank = sum(
        getattr(layer.self_attn, n).in_features + getattr(layer.self_attn, n).out_features
        for layer in model.model.layers
        for n in ("q_proj", "k_proj", "v_proj", "o_proj")
    )
    return max(1, round(n_params / per_rank))


def build_ablations(
    out_dir: Path, cfg: CalmBuildConfig, *, which: Sequence[str] = ("random_augment", "lora"), evaluate: bool = True
) -> dict[str, object]:
    """Onto a finished build in ``out_dir``: ``ablations/random_augment/`` (m_A's shape, random
    weights) + ``ablations/bridges_random_augment/`` (bridges trained the same way), and
    ``ablations/lora_anchor.safetensors`` (m_B + LoRA with the bridges' parameter count, trained
    on the same composition set). Writes ``ablations/ablations.json`` with seconds and scores."""
    from safetensors.torch import save_file

    from fusion_ui.evals.run import load_causal_lm
    from fusion_ui.evals.sets import load_eval_set

    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        tokenizer = build_calm_tokenizer()
        train_items = load_eval_set(out_dir / "train" / "composition.jsonl")
        sets = {t: load_eval_set(out_dir / "evals" / f"{t}.jsonl") for t in TASKS}
        folder = out_dir / "ablations"
        folder.mkdir(exist_ok=True)
        report_file = folder / "ablations.json"
        report: dict[str, object] = json.loads(report_file.read_text()) if report_file.is_file() else {}
        anchor, _ = load_causal_lm(str(out_dir / "anchor"), device="cpu")
        anchor = _shipped(anchor, "anchor")
        n_bridge = None
        if "random_augment" in which:
            start = time.perf_counter()
            rand = new_model(cfg.augment, tokenizer, seed=cfg.seed + 101)
            rand = _shipped(save_model(rand, tokenizer, folder / "random_augment"), "random_augment")
            calm, losses = train_calm(anchor, rand, tokenizer, train_items, cfg)
            n_bridge = sum(p.numel() for p in calm.bridges.parameters())
            save_bridges(calm, folder / "bridges_random_augment", tokenizer=tokenizer, force=True,
                         training={**cfg.bridges_train.to_dict(), "n_items": len(train_items)})
            entry: dict[str, object] = {"seconds": round(time.perf_counter() - start, 1),
                                        "final_loss": round(sum(losses[-10:]) / len(losses[-10:]), 5)}
            if evaluate:
                entry["table"] = {t: round(v, 1) for t, v in score_rows({"x": calm}, tokenizer, sets)["x"].items()}
            report["CALM, random m_A"] = entry
        if "lora" in which:
            start = time.perf_counter()
            if n_bridge is None:  # the shipped bridges' count (the same shape as the random m_A's)
                from safetensors.torch import load_file

                n_bridge = sum(t.numel() for t in load_file(out_dir / "bridges" / "bridges.safetensors").values())
            lora = _shipped(load_causal_lm(str(out_dir / "anchor"), device="cpu")[0], "anchor")
            rank = lora_rank_for(lora, n_bridge)
            params = add_lora(lora, rank, seed=cfg.seed)
            pairs = encode_items(tokenizer, train_items, with_eos=True)
            pad = pad_id_of(tokenizer)

            def loss_of(indices: Sequence[int]) -> torch.Tensor:
                ids, mask, scored = collate_scored([pairs[i] for i in indices], pad)
                return answer_loss(lora(input_ids=ids, attention_mask=mask).logits, ids, scored)

            result = train_loop(params, loss_of, n_items=len(pairs), config=cfg.bridges_train)
            lora.eval()
            state = {n: p.detach().contiguous() for n, p in lora.named_parameters() if "lora_" in n}
            save_file(state, folder / "lora_anchor.safetensors", metadata={"rank": str(rank)})
            entry = {"seconds": round(time.perf_counter() - start, 1), "rank": rank,
                     "parameters": sum(p.numel() for p in params), "bridges_parameters": n_bridge,
                     "final_loss": round(result.final_loss, 5)}
            if evaluate:
                entry["table"] = {t: round(v, 1) for t, v in score_rows({"x": lora}, tokenizer, sets)["x"].items()}
            report[f"m_B + LoRA r={rank}"] = entry
        report_file.write_text(json.dumps(report, indent=2) + "\n")
        return report
    finally:
        torch.set_num_threads(threads)
