"""Reproduce the demo family's table: base, experts, DARE (with and without rescale),
merges of all experts, and LM-Cocktail-style merges with the base; plus delta statistics.

    python benchmarks/demo_eval.py                       # the shipped family, merges by the engine
    python benchmarks/demo_eval.py --family /tmp/fam --items 50

Merges go through the engine's public API (``recipe_from_dict`` + ``merge_to_state_dict``);
``--backend private`` uses the small reference implementation below instead (kept to
cross-check the engine, and to iterate on a family before the engine existed).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui.demo import DEMO_DIR, EXPERT_SKILLS, GENERAL
from fusion_ui.evals import evaluate, limit_per_skill, load_eval_sets, score_table

StateDict = dict[str, torch.Tensor]
DARE_RATES = (0.5, 0.9, 0.99)
# TIES preset for the shipped family (see assets/demo/README.md): keep 80% of each task
# vector by magnitude, elect signs, then scale the disjoint mean by λ.
TIES_DENSITY = 0.8
TIES_LAMBDA = 1.5
COCKTAIL_BASE_WEIGHT = 0.3


# -- merges: the engine ----------------------------------------------------------------


def engine_merge(recipe: dict, family: Path) -> StateDict:
    from fusion_ui.merge import merge_to_state_dict
    from fusion_ui.recipe import recipe_from_dict

    return merge_to_state_dict(recipe_from_dict(recipe, folder=family), device="cpu")


# -- merges: a small private reference (task vectors on in-memory state dicts) ---------


def _dare(delta: torch.Tensor, p: float, rescale: bool, gen: torch.Generator) -> torch.Tensor:
    keep = (torch.rand(delta.shape, generator=gen) >= p).to(delta.dtype)
    return delta * keep / ((1 - p) if rescale else 1.0)


def _trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    k = max(1, round(delta.numel() * density))
    threshold = delta.abs().flatten().kthvalue(delta.numel() - k + 1).values
    return delta * (delta.abs() >= threshold)


def private_merge(recipe: dict, family: Path) -> StateDict:
    base = {k: v.float() for k, v in load_file(family / recipe["base"] / "model.safetensors").items()} if recipe.get("base") else None
    models = [{k: v.float() for k, v in load_file(family / m["model"] / "model.safetensors").items()} for m in recipe["models"]]
    weights = [m.get("weight", 1.0) for m in recipe["models"]]
    params = recipe.get("parameters", {})
    method = recipe["method"]
    if method == "linear":
        return {k: sum(w * m[k] for w, m in zip(weights, models, strict=True)) / sum(weights) for k in models[0]}
    assert base is not None
    gen = torch.Generator().manual_seed(recipe.get("seed", 0))
    out: StateDict = {}
    for name in base:
        deltas = [m[name] - base[name] for m in models]
        if method.startswith("dare"):
            p = recipe["models"][0].get("drop_rate", 0.9)
            deltas = [_dare(d, p, params.get("rescale", "inverse") == "inverse", gen) for d in deltas]
        if method == "ties":
            deltas = [_trim(d, m.get("density", TIES_DENSITY)) for d, m in zip(deltas, recipe["models"], strict=True)]
        stacked = torch.stack([w * d for w, d in zip(weights, deltas, strict=True)])
        if method in ("ties", "dare_ties"):
            sign = torch.sign(stacked.sum(0))
            agree = (torch.sign(stacked) == sign) & (stacked != 0)
            wsum = (agree * torch.tensor(weights).view(-1, *[1] * (stacked.ndim - 1))).sum(0).clamp(min=1e-12)
            merged = (stacked * agree).sum(0) / wsum
        else:
            merged = stacked.sum(0)
        out[name] = base[name] + params.get("lambda", 1.0) * merged
    return out


# -- the table ---------------------------------------------------------------------------


def recipes(experts: list[str], dtype: str) -> list[tuple[str, str, dict]]:
    """(row name, group, recipe) for every merge in the table."""
    rows: list[tuple[str, str, dict]] = []
    common = {"base": "base", "seed": 0, "dtype": dtype}
    for skill in experts:
        for p in DARE_RATES:
            for rescale in ("inverse", "none"):
                tag = "" if rescale == "inverse" else " no-rescale"
                rows.append((
                    f"DARE p={p}{tag}: {skill}", "dare",
                    {**common, "method": "dare_linear", "models": [{"model": f"expert_{skill}", "drop_rate": p}],
                     "parameters": {"rescale": rescale, "lambda": 1.0}},
                ))
    everyone = [{"model": f"expert_{s}"} for s in experts]
    rows += [
        ("task arithmetic λ=1 (all experts)", "merge",
         {**common, "method": "task_arithmetic", "models": everyone, "parameters": {"lambda": 1.0}}),
        (f"TIES density={TIES_DENSITY} λ={TIES_LAMBDA} (all experts)", "merge",
         {**common, "method": "ties", "models": [{**m, "density": TIES_DENSITY} for m in everyone],
          "parameters": {"lambda": TIES_LAMBDA}}),
        ("DARE-TIES p=0.9 λ=1 (all experts)", "merge",
         {**common, "method": "dare_ties", "models": [{**m, "drop_rate": 0.9} for m in everyone],
          "parameters": {"lambda": 1.0}}),
        ("DARE + task arithmetic p=0.9 λ=1 (all experts)", "merge",
         {**common, "method": "dare_linear", "models": [{**m, "drop_rate": 0.9} for m in everyone],
          "parameters": {"lambda": 1.0}}),
    ]
    for skill in experts:
        rows.append((
            f"LM-Cocktail {COCKTAIL_BASE_WEIGHT:g}·base + {1 - COCKTAIL_BASE_WEIGHT:g}·{skill}", "cocktail",
            {"seed": 0, "dtype": dtype, "method": "linear",
             "models": [{"model": "base", "weight": COCKTAIL_BASE_WEIGHT},
                        {"model": f"expert_{skill}", "weight": 1 - COCKTAIL_BASE_WEIGHT}]},
        ))
    return rows


def delta_stats(family: Path, experts: list[str]) -> pd.DataFrame:
    base = load_file(family / "base" / "model.safetensors")
    theta = torch.cat([v.float().flatten() for v in base.values()])
    rows = []
    for skill in experts:
        expert = load_file(family / f"expert_{skill}" / "model.safetensors")
        delta = torch.cat([(expert[k].float() - base[k].float()).flatten() for k in base]).abs()
        rows.append({
            "expert": skill,
            "share |δ|<0.005": float((delta < 0.005).float().mean()),
            "share δ=0 (bf16)": float((delta == 0).float().mean()),
            "median |δ|": float(delta.median()),
            "max |δ|": float(delta.max()),
            "‖δ‖/‖θ0‖": float(delta.norm() / theta.norm()),
        })
    return pd.DataFrame(rows).set_index("expert")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", type=Path, default=DEMO_DIR)
    parser.add_argument("--backend", choices=("engine", "private"), default="engine")
    parser.add_argument("--items", type=int, default=None, help="first N items per skill (default: all)")
    parser.add_argument("--dtype", default="float32", help="merge output dtype (float32 measures the method, not rounding)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--csv", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    family: Path = args.family
    experts = [s for s in EXPERT_SKILLS if (family / f"expert_{s}").is_dir()]
    items = limit_per_skill(load_eval_sets([family / "evals"]), args.items)
    merge: Callable[[dict, Path], StateDict] = engine_merge if args.backend == "engine" else private_merge

    tok = AutoTokenizer.from_pretrained(str(family / "base"))
    model = AutoModelForCausalLM.from_pretrained(str(family / "base"), dtype=torch.float32).eval()
    start = time.perf_counter()
    tables = []

    def score(name: str, group: str, state: StateDict) -> None:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        table = evaluate(model, tok, items, model_name=name, device="cpu", batch_size=200)
        table["group"] = group
        tables.append(table)
        print(f"  {name}: " + ", ".join(f"{r.skill} {100 * r.exact_match:.1f}" for r in table.itertuples()), flush=True)

    for name in ["base", *(f"expert_{s}" for s in experts)]:
        score(name, "model", load_file(family / name / "model.safetensors"))
    for name, group, recipe in recipes(experts, args.dtype):
        score(name, group, merge(recipe, family))

    results = pd.concat(tables, ignore_index=True)
    table = score_table(results) * 100
    skills = [*experts, GENERAL]
    table = table[[s for s in skills if s in table.columns]]
    expert_acc = {s: table.loc[f"expert_{s}", s] for s in experts}
    kept = []
    for name in table.index:
        own = next((s for s in experts if name.endswith(f": {s}")), None)
        if own and name.startswith("DARE") and expert_acc[own] > 0:
            kept.append(f"{100 * table.loc[name, own] / expert_acc[own]:.0f}%")
        else:
            kept.append("")
    table["kept of expert"] = kept
    pd.set_option("display.width", 200)
    print(f"\nexact match (%), greedy, { {k: int(v) for k, v in results.groupby('skill')['n'].first().items()} } items; merges by the {args.backend}")
    print(table.round(1).to_string())
    print("\nexperts' delta statistics (all tensors, bf16 checkpoints)")
    print(delta_stats(family, experts).to_string(float_format=lambda x: f"{x:.4g}"))
    print(f"\n{len(table)} models scored in {time.perf_counter() - start:.0f} s")
    if args.csv is not None:
        results.to_csv(args.csv, index=False)


if __name__ == "__main__":
    main()
