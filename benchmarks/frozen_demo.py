"""Frozen-LM methods (arXiv 2204.10019) on the demo family: two tables.

    python benchmarks/frozen_demo.py                     # both tables, 1 torch thread
    python benchmarks/frozen_demo.py --table idpt --steps 300 --items 50

a. ID-PT: one prompt generator (encoder: the frozen base itself) trained on the three expert
   skills at once, against the base, each expert, the shipped all-expert merges
   (``recipes/task_arithmetic.yaml``, ``recipes/dare_ties.yaml``; the engine's merge, float32) and
   plain prompt tuning with one fixed prompt of the same length, and a textual recursion on top
   of that plain prompt (pass 2 reads its 3 candidates). Held-out: the shipped eval sets (no eval
   word is in any training row). Trainable parameters and greedy exact match per skill.
b. Recursion: ``back: rot13: w =`` -> back(rot13(w)) (a Caesar shift of +12;
   ``fusion_ui.demo.compositions``), two general skills the base does at 100% alone. One pass
   with prompt tuning (and with ID-PT) against textual recursion (pass 1 writes 3 candidates, a
   prompt-tuned pass 2 reads question + candidates) and neural recursion (a connector from pass
   1's last hidden states into pass 2's input), and a control: the same MLP fed the input
   embeddings, one pass (if it matches, the MLP, not the second pass, does the work). Held-out
   words, never in the training rows.

Deterministic: seeds fixed (printed), 1 torch thread by default, greedy decoding. Training times
are printed per run.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from transformers import AutoModelForCausalLM
from transformers.utils import logging as hf_logging

from fusion_ui.demo import DEMO_DIR, EXPERT_SKILLS, GENERAL
from fusion_ui.demo.compositions import DEFAULT_COMPOSITION, composition_sets
from fusion_ui.demo.skills import training_stream
from fusion_ui.evals import EvalItem, evaluate, limit_per_skill, load_causal_lm, load_eval_set
from fusion_ui.frozen import (
    ConnectorLM,
    RecursionConfig,
    connector_model,
    prompt_model,
    textual_model,
    train_connector,
    train_prompt,
    train_textual,
)
from fusion_ui.merge import merge_to_state_dict
from fusion_ui.recipe import load_recipe
from fusion_ui.train import TrainConfig

SKILLS = list(EXPERT_SKILLS)  # upper, shift, mirror
MERGES = ("task_arithmetic", "dare_ties")
PROMPT_LR = 3e-2  # plain prompts (a few vectors learn alone)
IDPT_LR = 1e-2  # ID-PT's generator (the engine's default: its cross-attention is an MLP's size)
CONNECTOR_LR = 3e-3
BATCH = 16
CLAIM_IDPT = (
    "paper (abstract): frozen-model methods such as ID-PT 'can do just as well as fine tuning' "
    "while the LM stays frozen and shared; its experiments are on a large LM and many NLP datasets, "
    "no figure is comparable with these string skills"
)
CLAIM_RECURSION = (
    "paper: recursive LMs (a second pass through the same frozen LM) improve on one pass; the "
    "headline shape 'two passes of a small model approach one pass of a larger one' is not "
    "measured here (the demo family has one size)"
)


class EmbeddingMLP(ConnectorLM):
    """Control for neural recursion: the same connector MLP, fed the input embeddings instead of
    pass 1's hidden states, and one pass. If it did as well, the connector alone (not the
    second pass) would be doing the work."""

    def forward(self, input_ids, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, cache=None, **_):  # fmt: skip
        past = cache if cache is not None else past_key_values
        embeds = self.lm.get_input_embeddings()(input_ids)
        embeds = embeds + self.connector(embeds).to(embeds.dtype)
        return self.lm(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                       use_cache=use_cache, **{self._second_kw: past})  # fmt: skip


def trainable(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def accuracy(model: nn.Module, tokenizer: object, items: Sequence[EvalItem]) -> dict[str, float]:
    """Greedy exact match (%) per skill."""
    table = evaluate(model, tokenizer, items, device="cpu", batch_size=200)
    return {r.skill: 100 * r.exact_match for r in table.itertuples()}


def timed(fn: Callable[[], object]) -> tuple[object, float]:
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def expert_training_items(n: int, seed: int, exclude: set[str]) -> list[EvalItem]:
    """``n`` rows of the three expert skills (uniform mix, all 26 letters), no eval word."""
    stream = training_stream(SKILLS, seed=seed, min_len=3, max_len=10, exclude=exclude)
    return [
        EvalItem(ex.prompt, ex.answer.strip(), ex.label)
        for ex, _ in zip(stream, range(n), strict=False)
    ]


def expert_sets(args: argparse.Namespace) -> tuple[list[EvalItem], list[EvalItem]]:
    """Table a's training rows and held-out items."""
    evals = [it for s in [*SKILLS, GENERAL]
             for it in limit_per_skill(load_eval_set(DEMO_DIR / "evals" / f"{s}.jsonl"), args.items)]  # fmt: skip
    return expert_training_items(
        args.train_items, args.seed, {it.prompt.split()[1] for it in evals}
    ), evals


def recursion_sets(args: argparse.Namespace) -> tuple[list[EvalItem], list[EvalItem]]:
    """Table b's training rows and held-out items (no word in both)."""
    return composition_sets(args.train_items, args.items or 200, seed=args.seed)


def write_sets(args: argparse.Namespace) -> None:
    args.write_sets.mkdir(parents=True, exist_ok=True)
    sets = dict(zip(("experts_train", "experts_test"), expert_sets(args), strict=True))
    sets.update(zip(("composition_train", "composition_test"), recursion_sets(args), strict=True))
    for name, items in sets.items():
        path = args.write_sets / f"{name}.jsonl"
        path.write_text("".join(json.dumps({"prompt": it.prompt, "answer": it.answer, "skill": it.skill}) + "\n"
                                for it in items))  # fmt: skip
        print(f"wrote {path} ({len(items)} rows)")


def idpt_table(args: argparse.Namespace, lm: nn.Module, tok: object) -> None:
    evals = [
        it
        for s in [*SKILLS, GENERAL]
        for it in limit_per_skill(load_eval_set(DEMO_DIR / "evals" / f"{s}.jsonl"), args.items)
    ]
    words = {it.prompt.split()[1] for it in evals}
    train = expert_training_items(args.train_items, args.seed, words)
    configs = {
        kind: TrainConfig(steps=args.steps, batch_size=BATCH, lr=lr, seed=args.seed)
        for kind, lr in (("idpt", IDPT_LR), ("prompt", PROMPT_LR))
    }
    n_full = trainable(lm)
    print(
        f"\na. ID-PT on the demo base ({len(train)} training rows of {', '.join(SKILLS)}, seed {args.seed}; "
        f"{len({it.skill for it in evals})} held-out sets x {args.items or 200} items; greedy exact match %)"
    )
    rows: list[dict] = [
        {
            "model": "base (frozen, no prompt)",
            "trainable": 0,
            **accuracy(lm, tok, evals),
            "note": "",
        }
    ]
    for skill in SKILLS:
        expert, _ = load_causal_lm(str(DEMO_DIR / f"expert_{skill}"), device="cpu")
        rows.append(
            {
                "model": f"expert_{skill} (fine-tune)",
                "trainable": n_full,
                **accuracy(expert, tok, evals),
                "note": "every weight fine-tuned",
            }
        )
    merged_model = AutoModelForCausalLM.from_pretrained(
        str(DEMO_DIR / "base"), dtype=torch.float32
    ).eval()
    merge_rows = []
    for name in MERGES:
        recipe = load_recipe(DEMO_DIR / "recipes" / f"{name}.yaml")
        state = merge_to_state_dict(recipe.model_copy(update={"dtype": "float32"}), device="cpu")
        merged_model.load_state_dict({k: v.float() for k, v in state.items()})
        merge_rows.append(
            {
                "model": f"merge: recipes/{name}.yaml",
                "trainable": 3 * n_full,
                **accuracy(merged_model, tok, evals),
                "note": "3 fine-tunes merged",
            }
        )
    best = max(merge_rows, key=lambda r: sum(r[s] for s in SKILLS))
    best["note"] += ", best all-expert merge (mean of the 3 skills)"
    rows.extend(merge_rows)
    for kind, label in (
        ("idpt", f"ID-PT, k={args.length} (frozen base + generator)"),
        ("prompt", f"prompt tuning, k={args.length} (frozen base + 1 prompt)"),
    ):
        model = prompt_model(lm, tok, kind, length=args.length, seed=args.seed)
        result, secs = timed(lambda m=model, k=kind: train_prompt(m, tok, train, config=configs[k]))
        rows.append(
            {
                "model": label,
                "trainable": trainable(model.prompt),
                **accuracy(model, tok, evals),
                "note": f"{args.steps} steps x {BATCH}, lr {configs[kind].lr:g}, {secs:.0f} s, "
                f"loss {result.losses[0]:.2f} -> {result.final_loss:.3f}",
            }
        )  # type: ignore[attr-defined]
        if kind == "prompt":  # does a second pass that reads its candidates help it?
            rec = textual_model(model, tok, recursion=RecursionConfig(candidates=3, seed=args.seed, max_new_tokens=12),
                                length=args.length, seed=args.seed)  # fmt: skip
            (result, _), secs = timed(
                lambda r=rec: train_textual(r, train, config=configs["prompt"])
            )
            rows.append({"model": f"textual recursion on it: 3 candidates -> pass 2 prompt k={args.length}",
                         "trainable": 2 * trainable(model.prompt), **accuracy(rec, tok, evals),
                         "note": f"{args.steps} steps x {BATCH}, lr {configs['prompt'].lr:g}, {secs:.0f} s "
                                 f"(candidates included), loss {result.losses[0]:.2f} -> {result.final_loss:.3f}"})  # fmt: skip
    table = pd.DataFrame(rows).set_index("model")
    table["mean (3 skills)"] = table[SKILLS].mean(axis=1)
    print(
        table[["trainable", *SKILLS, "mean (3 skills)", GENERAL, "note"]].to_string(
            float_format=lambda x: f"{x:.1f}"
        )
    )
    print(f"  ({CLAIM_IDPT})")


def recursion_table(args: argparse.Namespace, lm: nn.Module, tok: object) -> None:
    outer, inner = DEFAULT_COMPOSITION
    train, test = recursion_sets(args)
    prompt_cfg = TrainConfig(steps=args.steps, batch_size=BATCH, lr=PROMPT_LR, seed=args.seed)
    idpt_cfg = TrainConfig(steps=args.steps, batch_size=BATCH, lr=IDPT_LR, seed=args.seed)
    conn_cfg = TrainConfig(steps=args.steps, batch_size=BATCH, lr=CONNECTOR_LR, seed=args.seed)
    recursion = RecursionConfig(candidates=3, temperature=1.0, seed=args.seed, max_new_tokens=8)
    label = test[0].skill
    print(
        f"\nb. recursion on `{outer}: {inner}: w =` -> {outer}({inner}(w)) ({len(train)} training rows, "
        f"{len(test)} held-out, words of 3-6 letters, seed {args.seed}; greedy exact match %)"
    )
    print(f"   e.g. {test[0].prompt} {test[0].answer}")
    rows: list[dict] = [
        {
            "method": "base, 1 pass (no training)",
            "trainable": 0,
            "passes": 1,
            label: accuracy(lm, tok, test)[label],
            "note": "",
        }
    ]

    def run(
        method: str, passes: int, model: nn.Module, params: int, train_fn: Callable[[], object]
    ) -> None:
        result, secs = timed(train_fn)
        res = result[0] if isinstance(result, tuple) else result
        rows.append(
            {
                "method": method,
                "trainable": params,
                "passes": passes,
                label: accuracy(model, tok, test)[label],
                "note": f"{res.config.steps} steps x {BATCH}, lr {res.config.lr:g}, {secs:.0f} s, "
                f"loss {res.losses[0]:.2f} -> {res.final_loss:.3f}",
            }
        )

    pt = prompt_model(lm, tok, "prompt", length=args.length, seed=args.seed)
    run(
        f"1 pass, prompt tuning k={args.length}",
        1,
        pt,
        trainable(pt.prompt),
        lambda: train_prompt(pt, tok, train, config=prompt_cfg),
    )
    if not args.no_idpt:
        idpt = prompt_model(lm, tok, "idpt", length=args.length, seed=args.seed)
        run(
            f"1 pass, ID-PT k={args.length}",
            1,
            idpt,
            trainable(idpt.prompt),
            lambda: train_prompt(idpt, tok, train, config=idpt_cfg),
        )
    for first, name in (
        (pt, "pass 1 = the prompt-tuned model above"),
        (lm, "pass 1 = the base alone"),
    ):
        rec = textual_model(first, tok, recursion=recursion, length=args.length, seed=args.seed)
        extra = trainable(pt.prompt) if first is pt else 0
        run(
            f"textual recursion, 3 candidates, {name}",
            2,
            rec,
            extra + trainable(rec.second.prompt),
            lambda r=rec: train_textual(r, train, config=prompt_cfg),
        )
    conn = connector_model(lm, hidden=args.hidden, seed=args.seed)
    run(
        f"neural recursion, connector MLP {conn.config.d_model}-{args.hidden}-{conn.config.d_model}",
        2,
        conn,
        trainable(conn.connector),
        lambda: train_connector(conn, tok, train, config=conn_cfg),
    )
    control = EmbeddingMLP(lm, connector_model(lm, hidden=args.hidden, seed=args.seed).connector)
    run(
        "control: 1 pass, the same MLP on the input embeddings (no pass 1)",
        1,
        control,
        trainable(control.connector),
        lambda: train_connector(control, tok, train, config=conn_cfg),
    )
    print(pd.DataFrame(rows).set_index("method").to_string(float_format=lambda x: f"{x:.1f}"))
    print(f"  ({CLAIM_RECURSION})")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--table", choices=("idpt", "recursion", "both"), default="both")
    parser.add_argument(
        "--steps", type=int, default=600, help="optimizer steps per training run (default 600)"
    )
    parser.add_argument("--train-items", type=int, default=600, help="training rows (default 600)")
    parser.add_argument(
        "--items", type=int, default=None, help="held-out items per set (default 200)"
    )
    parser.add_argument("--length", type=int, default=8, help="soft-prompt vectors k (default 8)")
    parser.add_argument(
        "--hidden", type=int, default=256, help="the connector's inner width (default 256)"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-idpt", action="store_true", help="table b: skip the 1-pass ID-PT row")
    parser.add_argument(
        "--write-sets",
        type=Path,
        default=None,
        metavar="DIR",
        help="only write the training and held-out rows of both tables as .jsonl "
        "(for `fusion-ui frozen train ... --data`), then stop",
    )
    args = parser.parse_args()
    if args.write_sets is not None:
        write_sets(args)
        return
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    pd.set_option("display.width", 250)
    pd.set_option("display.max_colwidth", 90)
    print("command: python benchmarks/frozen_demo.py " + " ".join(sys.argv[1:]))
    lm, tok = load_causal_lm(str(DEMO_DIR / "base"), device="cpu")
    start = time.perf_counter()
    if args.table in ("idpt", "both"):
        idpt_table(args, lm, tok)
    if args.table in ("recursion", "both"):
        recursion_table(args, lm, tok)
    print(
        f"\ndone in {time.perf_counter() - start:.0f} s (torch {torch.__version__}, {args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
