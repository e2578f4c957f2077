"""How fast a sweep runs on the demo family, and the DARE paper's drop-rate curve measured by one.

    python benchmarks/sweep_speed.py                      # both parts, local executor
    python benchmarks/sweep_speed.py --part grid --ray local
    python benchmarks/sweep_speed.py --part curve --figure dare_curve.html

1. ``grid``: a 10 x 10 sweep, drop rate 0 -> 0.99 x λ 0.5 -> 2, DARE-TIES of the three experts,
   scored on upper, shift and mirror (50 items each): wall time, and each cell's time split into
   the merge (into the loaded model) and the eval. Target: <= 1 s per cell on 2 CPU cores.
2. ``curve``: each expert alone through DARE (task arithmetic on one delta) at drop rates
   0 -> 0.99, with and without the 1/(1-p) rescale, scored on its own skill (Yu et al. 2023,
   Fig. 3 in spirit): accuracy per drop rate; ``--figure`` writes it as a plotly HTML page.

Every cell goes through the public API (``sweep_from_dict`` + ``run_sweep``), into a temporary
folder, so nothing is resumed from an earlier run.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from fusion_ui.resources import demo_dir, demo_recipe
from fusion_ui.sweep import best_row, run_sweep, sweep_from_dict

SKILLS = ("upper", "shift", "mirror")
CURVE_RATES = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


def grid(items: int, ray: str | None, device: str, threads: int | None) -> None:
    spec = {
        "name": "demo DARE-TIES 10 x 10",
        "recipe": str(demo_recipe("dare_ties")),
        "axes": [
            {"parameter": "drop_rate", "range": {"start": 0.0, "stop": 0.99, "num": 10}},
            {"parameter": "lambda", "range": {"start": 0.5, "stop": 2.0, "num": 10}},
        ],
        "eval": {"skills": list(SKILLS), "items_per_skill": items},
    }
    with tempfile.TemporaryDirectory() as tmp:
        sweep = sweep_from_dict(spec, folder=Path(tmp))
        start = time.perf_counter()
        result = run_sweep(sweep, out=tmp, ray=ray, device=device, threads=threads)
        wall = time.perf_counter() - start
    t = result.table
    where = (
        f"Ray ({ray})" if ray else f"local, {threads or torch.get_num_threads()} torch thread(s)"
    )
    print(
        f"grid: {len(t)} cells, DARE-TIES of 3 experts, {items} items x {len(SKILLS)} skills, {where}"
    )
    print(
        f"  wall time {wall:.1f} s = {wall / len(t):.2f} s per cell (model load and first-cell warm-up included)"
    )
    rest = t.iloc[1:]
    print(
        f"  per cell (cells 2-{len(t)}): merge {rest['merge_s'].mean():.3f} s (median {rest['merge_s'].median():.3f}), "
        f"eval {rest['eval_s'].mean():.3f} s (median {rest['eval_s'].median():.3f}), "
        f"together {rest['seconds'].mean():.3f} s"
    )
    for name in ("merge_s", "eval_s"):
        q = rest[name].quantile([0.1, 0.5, 0.9, 1.0])
        print(f"  {name} p10 {q[0.1]:.3f}  p50 {q[0.5]:.3f}  p90 {q[0.9]:.3f}  max {q[1.0]:.3f}")
    print(f"  first cell: merge {t['merge_s'].iloc[0]:.3f} s, eval {t['eval_s'].iloc[0]:.3f} s")
    best = best_row(t)
    print(
        f"  best by mean: {best['cell']} -> upper {best['upper']:.2f}, shift {best['shift']:.2f}, "
        f"mirror {best['mirror']:.2f}, mean {best['mean']:.3f}"
    )
    pivot = t.pivot(index="drop_rate", columns="lambda", values="mean") * 100
    print("  mean exact match (%) over the three skills, drop rate (rows) x λ (columns):")
    print(pivot.round(1).to_string())


def curve(
    items: int, ray: str | None, device: str, threads: int | None, figure: Path | None
) -> pd.DataFrame:
    rows = []
    start = time.perf_counter()
    for skill in SKILLS:
        spec = {
            "name": f"DARE curve {skill}",
            "recipe": {
                "method": "dare_linear",
                "base": str(demo_dir() / "base"),
                "seed": 0,
                "models": [{"model": str(demo_dir() / f"expert_{skill}"), "weight": 1.0}],
                "parameters": {"lambda": 1.0},
            },
            "axes": [
                {"parameter": "rescale", "values": ["inverse", "none"]},
                {"parameter": "drop_rate", "values": list(CURVE_RATES)},
            ],
            "eval": {"skills": [skill], "items_per_skill": items},
        }
        with tempfile.TemporaryDirectory() as tmp:
            result = run_sweep(
                sweep_from_dict(spec, folder=Path(tmp)),
                out=tmp,
                ray=ray,
                device=device,
                threads=threads,
            )
        for r in result.table.itertuples():
            rows.append(
                {
                    "expert": skill,
                    "rescale": r.rescale,
                    "drop_rate": r.drop_rate,
                    "accuracy": 100 * getattr(r, skill),
                }
            )
    seconds = time.perf_counter() - start
    table = pd.DataFrame(rows)
    wide = table.pivot_table(index="drop_rate", columns=["expert", "rescale"], values="accuracy")
    wide = wide.reindex(columns=[(s, r) for s in SKILLS for r in ("inverse", "none")])
    print(
        f"\nDARE curve: each expert alone (dare_linear, λ 1, seed 0), exact match (%) on its own skill, "
        f"{items} items; rescale inverse = survivors x 1/(1-p), none = the ablation ({len(table)} cells, {seconds:.1f} s)"
    )
    print(wide.round(1).to_string())
    if figure is not None:
        write_figure(table, figure)
        print(f"  figure: {figure}")
    return table


def write_figure(table: pd.DataFrame, path: Path) -> None:
    import plotly.graph_objects as go

    fig = go.Figure()
    for skill in SKILLS:
        for rescale, dash in (("inverse", "solid"), ("none", "dot")):
            part = table[(table["expert"] == skill) & (table["rescale"] == rescale)]
            fig.add_trace(
                go.Scatter(
                    x=part["drop_rate"],
                    y=part["accuracy"],
                    mode="lines+markers",
                    name=f"{skill}, rescale {rescale}",
                    line={"dash": dash},
                )
            )
    fig.update_layout(
        title="DARE on the demo family: accuracy of each expert vs drop rate",
        xaxis_title="drop rate p",
        yaxis_title="exact match on its own skill (%)",
        yaxis_range=[0, 102],
        template="plotly_white",
    )
    if path.suffix.lower() == ".png":
        fig.write_image(str(path))  # needs kaleido
    else:
        fig.write_html(str(path), include_plotlyjs=True)  # self-contained: opens offline


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--part", choices=("grid", "curve", "both"), default="both")
    parser.add_argument("--items", type=int, default=50, help="items per skill (grid and curve)")
    parser.add_argument(
        "--ray", default=None, help="run the cells on Ray (auto, local, or an address)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--figure",
        type=Path,
        default=None,
        help="write the DARE curve (.html, or .png with kaleido)",
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    args = parser.parse_args()
    if args.part in ("grid", "both"):
        grid(args.items, args.ray, args.device, args.threads)
    if args.part in ("curve", "both"):
        curve(args.items, args.ray, args.device, args.threads, args.figure)


if __name__ == "__main__":
    main()
