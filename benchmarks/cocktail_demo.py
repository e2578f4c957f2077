"""LM-Cocktail on the demo family, in the shape of the paper's table (arXiv 2311.13534).

    python benchmarks/cocktail_demo.py                    # the shipped family, T = 5, about a minute on one core
    python benchmarks/cocktail_demo.py --temperature 3 --examples my_upper_5.jsonl

1. Fine-tune case (the paper's AG News row). Candidates: the base and the forgetful `upper`
   expert (fine-tuned with no replay: it forgets the general skills). Weights
   ``softmax(-loss / T)`` from each candidate's answer-only loss on 5 `upper` examples
   (``fusion_ui.tune.cocktail.cocktail_weights``), then the engine's linear merge
   (``cocktail_recipe`` + ``merge_to_state_dict``). Rows: base, fine-tune, LM-Cocktail;
   columns: greedy exact match on the 200 held-out `upper` items (target) and `general`.
   PASS when the cocktail keeps >= 95% of the fine-tune's target accuracy and recovers >= 90% of
   the base's general accuracy. Then a sweep over T and over a base floor, recomputed from the
   same losses (no model run): it is labelled by what chose it (the 5 examples, or the eval set).
2. No fine-tune case (the paper's second use). A target skill with no fine-tune, 5 examples and
   a pool of other fine-tunes: `shift` with base + expert_upper + expert_mirror + the forgetful
   upper, and `mirror` with base + expert_upper + expert_shift + the forgetful upper. The
   automatic mix against the base, on the target and on `general`.

Deterministic: 1 torch thread by default, greedy decoding, merges in float32 (seed 0, not used
by a linear merge). The weight computation's wall time is printed per cocktail.
"""

from __future__ import annotations

import argparse
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from fusion_ui.demo import DEMO_DIR, GENERAL
from fusion_ui.evals import EvalItem, evaluate, limit_per_skill, load_eval_set
from fusion_ui.merge import merge_to_state_dict
from fusion_ui.tune.cocktail import (
    DEFAULT_TEMPERATURE,
    CocktailResult,
    cocktail_recipe,
    cocktail_weights,
)

StateDict = dict[str, torch.Tensor]
TARGET = "upper"
KEEP_TARGET = 0.95  # of the fine-tune's target accuracy
RECOVER_GENERAL = 0.90  # of the base's general accuracy
SWEEP_T = (0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0)
SWEEP_FLOOR = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
POOL_SWEEP_T = (0.2, 0.5, 1.0, 2.0)
# (target skill, pool of fine-tunes other than a fine-tune of the target)
NO_FINETUNE_TASKS = (
    ("shift", ("expert_upper", "expert_mirror", "forgetful")),
    ("mirror", ("expert_upper", "expert_shift", "forgetful")),
)
PAPER = {  # Llama-2-7B fine-tuned on AG News (seed 001): target, other tasks
    "base": (40.8, 46.8),
    "fine-tune": (94.4, 38.6),
    "LM-Cocktail": (94.5, 47.7),
}


@dataclass
class Scorer:
    """One float32 model whose weights are swapped in, scored greedily on item lists."""

    model: torch.nn.Module
    tokenizer: object

    def exact(self, state: StateDict, items: Sequence[EvalItem]) -> dict[str, float]:
        """Exact match (%) per skill of ``items``."""
        self.model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        table = evaluate(self.model, self.tokenizer, items, device="cpu", batch_size=200)
        return {r.skill: 100 * r.exact_match for r in table.itertuples()}


def rel(path: Path | str) -> str:
    """A path as short as it reads: relative to the working folder when below it."""
    text = os.path.relpath(path)
    return text if not text.startswith("..") else str(path)


def merged(result: CocktailResult, weights: Sequence[float] | None = None) -> StateDict:
    """The engine's LM-Cocktail merge (float32 output) of the result's candidates."""
    recipe = cocktail_recipe(result, weights=weights)
    return merge_to_state_dict(recipe.model_copy(update={"dtype": "float32"}), device="cpu")


def timed_weights(candidates: list[str], examples: list[EvalItem], base: str, t: float, floor: float) -> tuple[CocktailResult, float]:
    start = time.perf_counter()
    result = cocktail_weights(candidates, examples, temperature=t, base=base, base_floor=floor, device="cpu")
    return result, time.perf_counter() - start


def weights_text(labels: Sequence[str], result: CocktailResult, weights: Sequence[float] | None = None) -> str:
    ws = result.weights if weights is None else weights
    return " + ".join(f"{w:.3f}·{label}" for label, w in zip(labels, ws, strict=True))


def print_losses(labels: Sequence[str], result: CocktailResult, seconds: float) -> None:
    print(f"  weights from {result.n_examples} examples (sha256 {result.examples_sha256[:12]}), "
          f"T = {result.temperature:g}, base floor {result.base_floor:g}; computed in {seconds:.2f} s "
          f"({len(labels)} candidates x {result.n_examples} examples, loads included)")
    width = max(len(label) for label in labels)
    for label, loss, w, per in zip(labels, result.losses, result.weights, result.example_losses, strict=True):
        print(f"    {label:<{width}}  loss {loss:8.4f} nats/token  weight {w:.4f}   "
              f"per example: {' '.join(f'{x:.3f}' for x in per)}")
    for warning in result.warnings:
        print(f"    warning: {warning}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", type=Path, default=DEMO_DIR, help="demo family folder (base/, expert_*/, evals/, cocktail/)")
    parser.add_argument("--forgetful", type=Path, default=None,
                        help="the no-replay fine-tune of upper (default: FAMILY/forgetful/expert_upper)")
    parser.add_argument("--examples", type=Path, default=None,
                        help="the 5 target examples for the fine-tune case (default: FAMILY/cocktail/upper_5.jsonl)")
    parser.add_argument("--temperature", type=float, default=DEFAULT_TEMPERATURE, help="T of softmax(-loss/T) (default 5)")
    parser.add_argument("--base-floor", type=float, default=0.0, help="least weight of the base (default 0: none)")
    parser.add_argument("--items", type=int, default=None, help="first N eval items per set (default: all 200)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-sweep", action="store_true", help="skip the T / base-floor sweep")
    parser.add_argument("--no-pool", action="store_true", help="skip the no-fine-tune tasks (shift, mirror)")
    args = parser.parse_args()
    # transformers 5 warns about ``past_key_values`` on every decoding step of fusion_ui.evals'
    # greedy loop, and shows a bar per model load: neither changes a figure.
    warnings.filterwarnings("ignore", message=".*past_key_values.*")
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    family = args.family.resolve()
    forgetful = (args.forgetful or family / "forgetful" / "expert_upper").resolve()
    examples_path = args.examples or family / "cocktail" / f"{TARGET}_5.jsonl"
    evals = {s: limit_per_skill(load_eval_set(family / "evals" / f"{s}.jsonl"), args.items)
             for s in (TARGET, "shift", "mirror", GENERAL)}
    paths = {
        "base": family / "base",
        "expert_upper": family / "expert_upper",
        "expert_shift": family / "expert_shift",
        "expert_mirror": family / "expert_mirror",
        "forgetful": forgetful,
    }
    names = {"base": "base", "forgetful": "forgetful upper (no replay)"}
    tok = AutoTokenizer.from_pretrained(str(paths["base"]))
    model = AutoModelForCausalLM.from_pretrained(str(paths["base"]), dtype=torch.float32).eval()
    scorer = Scorer(model, tok)
    states = {k: load_file(p / "model.safetensors") for k, p in paths.items()}
    start_all = time.perf_counter()
    pd.set_option("display.width", 200)

    # -- 1. the fine-tune case: base + forgetful fine-tune, weights from 5 upper examples -------
    examples = load_eval_set(examples_path)
    both = evals[TARGET] + evals[GENERAL]
    print(f"LM-Cocktail on the demo family ({rel(family)}); target skill `{TARGET}`, "
          f"{len(evals[TARGET])} + {len(evals[GENERAL])} held-out items, greedy exact match (%)")
    print(f"\n1. fine-tune case: candidates base + {names['forgetful']} ({rel(forgetful)})")
    print(f"  examples: {rel(examples_path)} ({len(examples)}: {', '.join(e.prompt + ' ' + e.answer for e in examples)})")
    cands = [str(paths["base"]), str(forgetful)]
    labels = ["base", "forgetful"]
    result, seconds = timed_weights(cands, examples, cands[0], args.temperature, args.base_floor)
    print_losses(labels, result, seconds)

    rows: list[dict] = []

    def row(name: str, state: StateDict, note: str = "", extra: dict | None = None) -> dict:
        acc = scorer.exact(state, both)
        r = {"model": name, TARGET: acc[TARGET], GENERAL: acc[GENERAL], **(extra or {}), "note": note}
        rows.append(r)
        return r

    base_r = row("base", states["base"])
    ft_r = row("fine-tune: forgetful upper (no replay)", states["forgetful"])
    ck_r = row(f"LM-Cocktail automatic (T={args.temperature:g}"
               + (f", floor {args.base_floor:g}" if args.base_floor else "") + ")", merged(result),
               note=weights_text(labels, result))
    main_table = pd.DataFrame(rows).set_index("model")
    paper = pd.DataFrame(
        [PAPER["base"], PAPER["fine-tune"], PAPER["LM-Cocktail"]], index=main_table.index,
        columns=["paper target (AG News)", "paper general (other tasks)"])
    show = pd.concat([main_table[[TARGET, GENERAL]], paper, main_table[["note"]]], axis=1)
    show.columns = [f"{TARGET} (target)", f"{GENERAL}", "paper target", "paper general", "weights"]
    print()
    print(show.to_string(float_format=lambda x: f"{x:.1f}"))
    keep = ck_r[TARGET] / ft_r[TARGET] if ft_r[TARGET] else float("nan")
    recover = ck_r[GENERAL] / base_r[GENERAL] if base_r[GENERAL] else float("nan")
    p_keep = PAPER["LM-Cocktail"][0] / PAPER["fine-tune"][0]
    p_recover = PAPER["LM-Cocktail"][1] / PAPER["base"][1]
    ok_keep, ok_recover = keep >= KEEP_TARGET, recover >= RECOVER_GENERAL
    print(f"\n  target kept:       cocktail / fine-tune = {ck_r[TARGET]:.1f} / {ft_r[TARGET]:.1f} = {100 * keep:.1f}% "
          f"(needs >= {100 * KEEP_TARGET:.0f}%; paper {100 * p_keep:.1f}%)  {'PASS' if ok_keep else 'FAIL'}")
    print(f"  general recovered: cocktail / base = {ck_r[GENERAL]:.1f} / {base_r[GENERAL]:.1f} = {100 * recover:.1f}% "
          f"(needs >= {100 * RECOVER_GENERAL:.0f}%; paper {100 * p_recover:.1f}%)  {'PASS' if ok_recover else 'FAIL'}")
    print(f"  overall at T={args.temperature:g}: {'PASS' if ok_keep and ok_recover else 'FAIL'}")

    if not args.no_sweep:
        # Same losses, other T / floors (CocktailResult.reweight: no model run). Each merge is scored
        # on the 5 examples (what a user without an eval set sees) and on the eval sets.
        print("\n  sweep (same 5-example losses, new weights, no model run for the weights); "
              "'5 ex' = exact matches of the merge on the 5 examples")
        sweep: list[dict] = []
        settings = [("T", t, result.reweight(t, base_floor=0.0)) for t in SWEEP_T]
        settings += [("floor", f, result.reweight(args.temperature, base_floor=f)) for f in SWEEP_FLOOR]
        for kind, value, res in settings:
            state = merged(res)
            on_examples = scorer.exact(state, examples)[examples[0].skill] * len(examples) / 100
            acc = scorer.exact(state, both)
            sweep.append({"kind": kind, "value": value, "w_base": res.weights[0],
                          "5 ex": f"{on_examples:.0f}/{len(examples)}", TARGET: acc[TARGET], GENERAL: acc[GENERAL],
                          "meets both": "yes" if acc[TARGET] >= KEEP_TARGET * ft_r[TARGET]
                          and acc[GENERAL] >= RECOVER_GENERAL * base_r[GENERAL] else "no"})
        table = pd.DataFrame(sweep)
        table["setting"] = [f"T={v:g}" if k == "T" else f"T={args.temperature:g}, base floor {v:g}"
                            for k, v in zip(table["kind"], table["value"], strict=True)]
        print(table.set_index("setting")[["w_base", "5 ex", TARGET, GENERAL, "meets both"]]
              .to_string(float_format=lambda x: f"{x:.3f}" if x < 1 else f"{x:.1f}"))
        # A rule that sees only the 5 examples: the most base weight whose merge still answers all
        # 5 examples (the examples say nothing about general ability, so "more base" is the prior).
        full = table[table["5 ex"] == f"{len(examples)}/{len(examples)}"]
        if len(full):
            pick = full.loc[full["w_base"].idxmax()]
            print(f"  chosen on the 5 examples only (most base weight that still answers 5/5): {pick['setting']} "
                  f"(base weight {pick['w_base']:.3f}) -> {TARGET} {pick[TARGET]:.1f}, {GENERAL} {pick[GENERAL]:.1f}; "
                  f"meets both targets: {pick['meets both']}")
        meets = table[table["meets both"] == "yes"]
        if len(meets):
            print(f"  settings that meet both targets (seen on the eval set, not a choice the 5 examples "
                  f"could make): base weight {meets['w_base'].min():.3f} to {meets['w_base'].max():.3f}: "
                  + "; ".join(meets["setting"]))
        else:
            print("  no setting of the sweep meets both targets")

    # -- 2. no fine-tune of the target: 5 examples and a pool of other fine-tunes -----------------
    if not args.no_pool:
        print("\n2. no fine-tune of the target: the base and a pool of other fine-tunes, weights from 5 target examples")
        pool_rows: list[dict] = []
        for target, pool in NO_FINETUNE_TASKS:
            ex_path = family / "cocktail" / f"{target}_5.jsonl"
            ex = load_eval_set(ex_path)
            keys = ["base", *pool]
            res, secs = timed_weights([str(paths[k]) for k in keys], ex, str(paths["base"]), args.temperature,
                                      args.base_floor)
            print(f"\n  target `{target}` ({ex_path.name}); pool {', '.join(pool)}")
            print_losses(keys, res, secs)
            items = evals[target] + evals[GENERAL]
            for k in keys:
                acc = scorer.exact(states[k], items)
                pool_rows.append({"target": target, "model": names.get(k, k), "target acc": acc[target],
                                  GENERAL: acc[GENERAL], "weights": ""})
            acc = scorer.exact(merged(res), items)
            pool_rows.append({"target": target, "model": f"LM-Cocktail automatic (T={args.temperature:g})",
                              "target acc": acc[target], GENERAL: acc[GENERAL], "weights": weights_text(keys, res)})
            if not args.no_sweep:  # context only: the same losses at other T (seen on the eval set)
                for t in POOL_SWEEP_T:
                    r_t = res.reweight(t)
                    state = merged(r_t)
                    on_ex = scorer.exact(state, ex)[ex[0].skill] * len(ex) / 100
                    a_t = scorer.exact(state, items)
                    pool_rows.append({"target": target, "model": f"sweep, not chosen: T={t:g} ({on_ex:.0f}/{len(ex)} ex)",
                                      "target acc": a_t[target], GENERAL: a_t[GENERAL],
                                      "weights": weights_text(keys, r_t)})
            base_acc = next(r for r in pool_rows if r["target"] == target and r["model"] == "base")
            d_t, d_g = acc[target] - base_acc["target acc"], acc[GENERAL] - base_acc[GENERAL]
            n_t = round(d_t * len(evals[target]) / 100)
            verdict = "beats the base" if d_t > 0 and d_g >= 0 else ("ties the base" if d_t == 0 else "does not beat the base")
            print(f"  cocktail vs base on `{target}`: {acc[target]:.1f} vs {base_acc['target acc']:.1f} "
                  f"({d_t:+.1f}, {n_t:+d} of {len(evals[target])} items); on general: {acc[GENERAL]:.1f} vs "
                  f"{base_acc[GENERAL]:.1f} ({d_g:+.1f}): {verdict}"
                  + (f" on paper, by {n_t} item(s): within noise, not a real gain" if d_t > 0 and abs(n_t) <= 3 else ""))
        print()
        print(pd.DataFrame(pool_rows).set_index(["target", "model"]).to_string(float_format=lambda x: f"{x:.1f}"))

    print(f"\ndone in {time.perf_counter() - start_all:.0f} s (torch {torch.__version__}, {args.threads} thread(s))")


if __name__ == "__main__":
    main()
