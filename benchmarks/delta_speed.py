"""Time the full delta report for a synthetic 0.9B Llama pair (base + 1 fine-tune, bf16).

Target (issue 4): < 5 s on the 2-core CPU machine, page cache warm, exact statistics.

Measured (2-core CPU shared with other jobs, torch 2.13, 2 threads, page cache warm, exact
statistics, 2026-11-23): best 1.26 s (758 M elements/s) when the machine was quiet; 2.5 s
with other developers' jobs running (load average ~3); the first run in a fresh process took
3.1-4.8 s under that load (fresh read buffers page-fault in). Reopening from the disk cache:
0.04-0.08 s. Target met in every run.
Command:  python benchmarks/delta_speed.py --repeat 3   # builds bench-data/delta-speed once

The data (benchmarks/synthetic.py, shared with merge_speed.py): hidden 2048, 16 layers,
intermediate 5632, vocab 32000 (0.95B parameters), base weights N(0, 0.02) (norm weights
1 + N(0, 0.02)), fine-tune = base + N(0, 0.002), both bf16 in 500 MB shards with config and
tokenizer. ``--size tiny`` builds a 2-layer toy for a smoke run. ``--data DIR`` reuses or builds there.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import SIZES, build_family  # noqa: E402

TARGET_S = 5.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("bench-data/delta-speed"),
                        help="folder for the synthetic checkpoints (reused when complete)")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    parser.add_argument("--repeat", type=int, default=2, help="timed runs; the best is reported")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    from fusion_ui.deltas import analyze_deltas

    root = args.data / args.size
    t0 = time.perf_counter()
    family = build_family(root, args.size, n_finetunes=1)
    base, ft = family["base"], family["ft0"]
    print(f"data: {root} ({time.perf_counter() - t0:.1f} s to build or find)")
    # Read once so every timed run sees the same warm page cache.
    t = time.perf_counter()
    analyze_deltas(base, [ft], device="cpu", cache=False)
    first = time.perf_counter() - t
    times = []
    for _ in range(args.repeat):
        t = time.perf_counter()
        report = analyze_deltas(base, [ft], device="cpu", cache=False)
        times.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as cache_dir:
        analyze_deltas(base, [ft], device="cpu", cache_dir=cache_dir)
        t = time.perf_counter()
        analyze_deltas(base, [ft], device="cpu", cache_dir=cache_dir)
        cached = time.perf_counter() - t
    row = report.summary.iloc[0]
    params = int(row["numel"])
    best = min(times)
    print(f"parameters per model: {params / 1e9:.3f} B, threads: {torch.get_num_threads()}")
    print(f"full report (base + 1 fine-tune): best {best:.2f} s of {[round(x, 2) for x in times]}"
          f" -> {params / best / 1e6:.0f} M elements/s; target < {TARGET_S:.0f} s: "
          f"{'met' if best < TARGET_S else 'MISSED'}")
    print(f"first run in this process (warm-up): {first:.2f} s; reopen from the disk cache: {cached:.2f} s")
    print(f"check: median |δ| {row['median_abs']:.5f} (≈0.6745·0.002 = 0.00135 before bf16 "
          f"rounding), share > 0.005 {row['share_above_0.005']:.4f}, verdict {row['verdict']}")
    return 0 if best < TARGET_S or args.size != "full" else 1


if __name__ == "__main__":
    sys.exit(main())
