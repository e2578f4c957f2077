"""Data-aware merges on the demo family: Fisher merging and RegMean, each with and without DARE
in front, beside task arithmetic and TIES; plus the time and peak memory of the statistics pass
and of the merge.

    python benchmarks/datamerge_demo.py                    # the shipped family, about a minute on one core
    python benchmarks/datamerge_demo.py --examples 100 --items 50
    python benchmarks/datamerge_demo.py --synthetic full   # time/memory only, on the 0.9B synthetic family

1. Statistics: for each expert, ``--examples`` (default 200) examples of its own skill from the
   demo's skill generator (``fusion_ui.demo.stats_examples``, a seed of its own, never a word of
   any eval set; the app's *Compute statistics* uses the same examples), then ``fusion-ui stats fisher`` and ``fusion-ui stats gram`` on them,
   each run as its own process so that its wall time and peak RSS are its own.
2. Merges (engine, float32 output, seed 0): task arithmetic λ 1 with weight 1 each (the shipped
   ``recipes/task_arithmetic.yaml``), TIES density 0.8 λ 1.5 (benchmarks/demo_eval.py's preset),
   DARE-TIES p 0.9 (the shipped ``recipes/dare_ties.yaml``), then fisher and regmean (α 0.9),
   weight 1 each, with and without DARE in front (p 0.9, rescale inverse). Greedy exact match on
   the held-out eval sets. ``fusion-ui merge`` of the fisher and regmean recipes is timed as a
   process too.

Deterministic: 1 torch thread, greedy decoding, seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from fusion_ui.demo import DEMO_DIR, EXPERT_SKILLS, GENERAL
from fusion_ui.demo.stats_examples import write_stats_examples
from fusion_ui.evals import evaluate, limit_per_skill, load_eval_sets, score_table
from fusion_ui.merge import merge_to_state_dict
from fusion_ui.recipe import recipe_from_dict

DROP_RATE = 0.9
TIES_DENSITY, TIES_LAMBDA = 0.8, 1.5  # benchmarks/demo_eval.py


def run_child(cmd: list[str]) -> tuple[float, float, str]:
    """Run a command; its wall seconds, its own peak RSS in MB (os.wait4) and its stdout."""
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{err.read()[-2000:]}")
        return seconds, usage.ru_maxrss / 1024, out.read()


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fusion_ui.cli", *args]


def statistics(
    models: dict[str, Path],
    data: dict[str, Path],
    work: Path,
    device: str,
    fisher_batch: int | None = None,
) -> pd.DataFrame:
    """Fisher and Gram folders for every model (``work/<kind>_<name>``) and what each pass took;
    ``fisher_batch``: examples per Fisher batch (each holds one gradient per example)."""
    rows = []
    for name, ref in models.items():
        for kind in ("fisher", "gram"):
            out = work / f"{kind}_{name}"
            seconds, rss, text = run_child(
                cli(
                    "stats",
                    kind,
                    str(ref),
                    "--data",
                    str(data[name]),
                    "--out",
                    str(out),
                    "--device",
                    device,
                    "--force",
                    *(
                        ["--batch-size", str(fisher_batch)]
                        if kind == "fisher" and fisher_batch
                        else []
                    ),
                )
            )
            info = json.loads((out / "statistics.json").read_text())
            rows.append(
                {
                    "model": name,
                    "kind": kind,
                    "examples": info["examples"],
                    "tokens": info["tokens"],
                    "pass s": info["settings"]["seconds"],
                    "command s": round(seconds, 1),
                    "peak RSS MB": round(rss),
                    "MB on disk": round((out / "statistics.safetensors").stat().st_size / 1e6, 1),
                }
            )
    return pd.DataFrame(rows).set_index(["model", "kind"])


def data_aware(method: str, models: dict[str, Path], work: Path, base: Path, dare: bool) -> dict:
    kind = "fisher" if method == "fisher" else "gram"
    entries = [
        {
            "model": str(ref),
            kind: str(work / f"{kind}_{name}"),
            "weight": 1.0,
            **({"drop_rate": DROP_RATE} if dare else {}),
        }
        for name, ref in models.items()
    ]
    params: dict = {"dare": dare, "rescale": "inverse"} if dare else {}
    return {"method": method, "base": str(base), "models": entries, "parameters": params, "seed": 0}


def demo(args: argparse.Namespace) -> None:
    family: Path = args.family
    experts = {
        s: family / f"expert_{s}" for s in EXPERT_SKILLS if (family / f"expert_{s}").is_dir()
    }
    work = Path(args.work or tempfile.mkdtemp(prefix="datamerge-"))
    work.mkdir(parents=True, exist_ok=True)
    data = {s: write_stats_examples(s, args.examples, work) for s in experts}
    cost = statistics(experts, data, work, args.device)
    base = family / "base"
    everyone = [{"model": str(p), "weight": 1.0} for p in experts.values()]
    recipes = [
        (
            "task arithmetic λ=1",
            {
                "method": "task_arithmetic",
                "base": str(base),
                "models": everyone,
                "parameters": {"lambda": 1.0},
            },
        ),
        (
            f"TIES density={TIES_DENSITY} λ={TIES_LAMBDA}",
            {
                "method": "ties",
                "base": str(base),
                "parameters": {"lambda": TIES_LAMBDA},
                "models": [{**m, "density": TIES_DENSITY} for m in everyone],
            },
        ),
        (
            f"DARE-TIES p={DROP_RATE} λ=1",
            {
                "method": "dare_ties",
                "base": str(base),
                "seed": 0,
                "models": [{**m, "drop_rate": DROP_RATE} for m in everyone],
                "parameters": {"lambda": 1.0, "rescale": "inverse", "normalize": True},
            },
        ),
        ("fisher", data_aware("fisher", experts, work, base, dare=False)),
        (f"DARE p={DROP_RATE} + fisher", data_aware("fisher", experts, work, base, dare=True)),
        ("regmean α=0.9", data_aware("regmean", experts, work, base, dare=False)),
        (
            f"DARE p={DROP_RATE} + regmean α=0.9",
            data_aware("regmean", experts, work, base, dare=True),
        ),
    ]
    items = limit_per_skill(load_eval_sets([family / "evals"]), args.items)
    tok = AutoTokenizer.from_pretrained(str(base))
    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    tables = []

    def score(name: str, state: dict[str, torch.Tensor]) -> None:
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        table = evaluate(model, tok, items, model_name=name, device="cpu", batch_size=200)
        tables.append(table)
        print(
            f"  {name}: "
            + ", ".join(f"{r.skill} {100 * r.exact_match:.1f}" for r in table.itertuples()),
            flush=True,
        )

    for name in ["base", *(f"expert_{s}" for s in experts)]:
        score(name, load_file(family / name / "model.safetensors"))
    for name, recipe in recipes:
        score(
            name,
            merge_to_state_dict(recipe_from_dict({**recipe, "dtype": "float32"}), device="cpu"),
        )
    results = pd.concat(tables, ignore_index=True)
    table = score_table(results) * 100
    table = table[[s for s in [*experts, GENERAL] if s in table.columns]]
    table["mean (experts)"] = table[list(experts)].mean(axis=1)

    merges = [timed_merge(name, recipe, work, args.device) for name, recipe in recipes[3:]]

    pd.set_option("display.width", 200)
    counts = {k: int(v) for k, v in results.groupby("skill")["n"].first().items()}
    print(
        f"\nexact match (%), greedy, {counts} items; statistics from {args.examples} examples per expert"
    )
    print(table.round(1).to_string())
    print(
        f"\nstatistics passes (`fusion-ui stats`, one process each, device {args.device}, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')})"
    )
    print(cost.to_string())
    print("\nmerges (`fusion-ui merge RECIPE --out DIR`, bf16 export, one process each)")
    print(pd.DataFrame(merges).set_index("merge").to_string())
    print(f"\nworking folder (examples, statistics, recipes, merges): {work}")
    print("command: python benchmarks/datamerge_demo.py " + " ".join(sys.argv[1:]))


def timed_merge(name: str | None, recipe: dict, work: Path, device: str) -> dict:
    """Write ``recipe`` into ``work`` and time ``fusion-ui merge`` of it as one process."""
    file = work / f"{recipe['method']}{'_dare' if recipe['parameters'].get('dare') else ''}.yaml"
    file.write_text(yaml.safe_dump(recipe, sort_keys=False))
    seconds, rss, _ = run_child(
        cli("merge", str(file), "--out", str(work / f"merged_{file.stem}"), "--force", "--device", device)
    )
    return {"merge": name or file.stem, "command s": round(seconds, 1), "peak RSS MB": round(rss)}


def synthetic(args: argparse.Namespace) -> None:
    """Time and peak RSS of both passes and both merges on the synthetic family (no accuracy)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from synthetic import build_family

    work = Path(args.work or tempfile.mkdtemp(prefix="datamerge-synthetic-"))
    paths = build_family(work / f"family_{args.synthetic}", args.synthetic)
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    rows = [
        {
            "prompt": "".join(rng.choice(letters) for _ in range(24)),
            "answer": "".join(rng.choice(letters) for _ in range(8)),
        }
        for _ in range(args.examples)
    ]
    data_file = work / "synthetic_examples.jsonl"
    data_file.write_text("".join(json.dumps(r) + "\n" for r in rows))
    fts = {n: p for n, p in paths.items() if n != "base"}
    # one example per Fisher batch: 4 per-example gradients of 0.9B parameters would be 14 GB
    cost = statistics(fts, dict.fromkeys(fts, data_file), work, args.device, fisher_batch=1)
    merges = [
        timed_merge(None, data_aware(method, fts, work, paths["base"], dare), work, args.device)
        for method, dare in (("fisher", False), ("regmean", False), ("regmean", True))
    ]
    print(
        f"synthetic family {args.synthetic}, {args.examples} examples of 32 tokens, device {args.device}"
    )
    print(cost.to_string())
    print(pd.DataFrame(merges).set_index("merge").to_string())
    print("command: python benchmarks/datamerge_demo.py " + " ".join(sys.argv[1:]))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--family", type=Path, default=DEMO_DIR)
    parser.add_argument(
        "--examples", type=int, default=200, help="statistics examples per expert (default 200)"
    )
    parser.add_argument(
        "--items", type=int, default=None, help="first N eval items per skill (default: all)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--work", type=Path, default=None, help="working folder (default: a new temporary one)"
    )
    parser.add_argument(
        "--synthetic",
        choices=("full", "small", "tiny"),
        default=None,
        help="time the passes and merges on benchmarks/synthetic.py's family of this size instead",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    if args.synthetic:
        synthetic(args)
    else:
        demo(args)


if __name__ == "__main__":
    main()
