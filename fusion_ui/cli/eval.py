"""``fusion-ui eval MODEL... --set demo|PATH``: quick exact-match evals as a table."""

from __future__ import annotations

import argparse
from pathlib import Path

DEMO_PREFIX = "demo:"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="score models on eval sets (greedy generation, exact match)",
        description="Models are folders, hub ids, or demo:NAME for the shipped demo family (demo:base, demo:expert_upper).",
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help="model folder, hub id, or demo:NAME")
    parser.add_argument(
        "--set", dest="eval_set", action="append", default=None, metavar="demo|PATH",
        help="'demo' (the shipped sets) or a .jsonl/.csv file or folder; repeatable (default: demo)",
    )
    parser.add_argument("--metric", choices=("exact_match", "contains"), default="exact_match")
    parser.add_argument("--perplexity", action="store_true", help="also report answer-only perplexity")
    parser.add_argument("--limit", type=int, default=None, help="first N items of each skill")
    parser.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:N")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--csv", type=Path, default=None, help="also write the full result table here")
    parser.set_defaults(func=run_eval)


def resolve_model(source: str) -> str:
    if source.startswith(DEMO_PREFIX):
        from fusion_ui.demo import DEMO_DIR

        return str(DEMO_DIR / source[len(DEMO_PREFIX) :])
    return source


def run_eval(args: argparse.Namespace) -> int:
    from fusion_ui.evals import (
        demo_eval_set,
        evaluate_sources,
        limit_per_skill,
        load_eval_sets,
        score_table,
    )

    items = []
    for spec in args.eval_set or ["demo"]:
        items.extend(demo_eval_set() if spec == "demo" else load_eval_sets([spec]))
    items = limit_per_skill(items, args.limit)
    sources = {name: resolve_model(name) for name in args.models}
    results = evaluate_sources(
        sources, items, device=args.device, batch_size=args.batch_size, with_perplexity=args.perplexity
    )
    counts = {skill: int(n) for skill, n in results.groupby("skill", sort=False)["n"].first().items()}
    print(f"{args.metric} (%), items per skill: {counts}")
    print((score_table(results, args.metric) * 100).round(1).to_string())
    if args.perplexity:
        print("\nanswer-only perplexity")
        print(score_table(results, "perplexity").round(3).to_string())
    if args.csv is not None:
        results.to_csv(args.csv, index=False)
    return 0
