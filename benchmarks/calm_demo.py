"""The CALM demo's table (Bansal et al. 2024, Table 1 shape) from the shipped folders.

    python benchmarks/calm_demo.py                  # fusion_ui/assets/demo/calm, about a minute on one core
    python benchmarks/calm_demo.py --demo DIR       # a folder written by `fusion-ui demo build-calm --out DIR`

Rows: m_A alone, m_B alone, CALM (m_B + m_A + the trained bridges); every row gets the same
prompts. Columns: exact match (%) on the held-out eval sets (keys outside the composition
set's 20 %). Ablations are printed when the build wrote them (``ablations/``).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from fusion_ui.compose import load_composition
from fusion_ui.demo import DEMO_DIR
from fusion_ui.demo.calm_build import PAPER_TABLE, format_table, score_rows
from fusion_ui.demo.calm_tasks import TASKS
from fusion_ui.evals import load_eval_set


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--demo", type=Path, default=DEMO_DIR / "calm")
    parser.add_argument("--limit", type=int, default=None, help="first N items per set (quick look)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    demo = args.demo
    sets = {t: load_eval_set(demo / "evals" / f"{t}.jsonl")[: args.limit] for t in TASKS}
    calm, tok = load_composition(demo / "anchor", demo / "augment", demo / "bridges", device="cpu")
    rows = {"m_A": calm.augment, "m_B": calm.anchor, "CALM": calm}
    ablations = demo / "ablations"
    if (ablations / "random_augment" / "config.json").is_file():
        rand, _ = load_composition(
            demo / "anchor", ablations / "random_augment", ablations / "bridges_random_augment", device="cpu"
        )
        rows["CALM, random m_A"] = rand
    lora_file = ablations / "lora_anchor.safetensors"
    if lora_file.is_file():
        from safetensors import safe_open
        from safetensors.torch import load_file

        from fusion_ui.demo.calm_build import add_lora
        from fusion_ui.evals import load_causal_lm

        with safe_open(str(lora_file), "pt") as fh:
            rank = int(fh.metadata()["rank"])
        lora, _ = load_causal_lm(str(demo / "anchor"), device="cpu")
        add_lora(lora, rank)
        missing = lora.load_state_dict(load_file(lora_file), strict=False)
        assert not missing.unexpected_keys and not [k for k in missing.missing_keys if "lora_" in k]
        rows[f"m_B + LoRA r={rank}"] = lora.eval()
    table = score_rows(rows, tok, sets)
    print("exact match (%), greedy; items: " + ", ".join(f"{t} {len(s)}" for t, s in sets.items()))
    print(format_table(table, PAPER_TABLE))
    print(f"({time.perf_counter() - start:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
