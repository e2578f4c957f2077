"""Where one export's time goes: reading, computing and writing, summed over the run.

Runs ``export_merge`` in this process on the benchmark family (built by ``merge_speed.py``, or
here when missing) and prints the wall time and the seconds spent in each phase. Reading and
writing run on their own threads, so the phases overlap and their sum exceeds the wall time.

    python benchmarks/merge_phases.py                         # DARE-TIES, CPU, the 0.9B family
    python benchmarks/merge_phases.py --method ties --device cuda
    python benchmarks/merge_phases.py --buffered              # shards through the page cache
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from merge_speed import METHODS, ROOT, recipe_for, warm_page_cache  # noqa: E402
from synthetic import SIZES, build_family  # noqa: E402

import fusion_ui.merge as merge_mod  # noqa: E402
from fusion_ui.export import export_merge  # noqa: E402
from fusion_ui.io import writer as writer_mod  # noqa: E402
from fusion_ui.io.direct import DIRECT_IO_ENV  # noqa: E402
from fusion_ui.recipe import recipe_from_dict  # noqa: E402

PHASES = {"read": "reading inputs (reader threads)", "compute": "merging (main thread)",
          "write": "writing shards (writer thread)"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=sorted(METHODS), default="dare_ties")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "merge-speed")
    parser.add_argument("--out", type=Path, help="where the merge is written (default: DATA/SIZE/outputs)")
    parser.add_argument("--buffered", action="store_true", help="write shards through the page cache")
    parser.add_argument("--read-workers", type=int, help="threads reading one tensor's checkpoints")
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args(argv)

    family = build_family(args.data / args.size, args.size)
    warm_page_cache(family)
    if args.buffered:
        os.environ[DIRECT_IO_ENV] = "0"
    if args.read_workers is not None:
        merge_mod.read_workers = lambda checkpoints, cores=None: max(1, min(checkpoints, args.read_workers))
    totals: dict[str, float] = defaultdict(float)
    lock = threading.Lock()

    def timed(phase: str, fn: Callable) -> Callable:
        def wrapper(*a, **k):
            start = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                with lock:
                    totals[phase] += time.perf_counter() - start
        return wrapper

    merge_mod.read_inputs = timed("read", merge_mod.read_inputs)
    merge_mod.compute_tensor = timed("compute", merge_mod.compute_tensor)
    writer_mod.ShardedSafetensorsSink.write = timed("write", writer_mod.ShardedSafetensorsSink.write)

    recipe = recipe_from_dict(recipe_for(args.method, family))
    out = args.out or args.data / args.size / "outputs" / f"{args.method}-phases"
    if args.device.startswith("cuda"):
        import torch

        torch.empty(1, device=args.device)  # the CUDA context is start-up, not merging
    for _ in range(args.repeats):
        totals.clear()
        shutil.rmtree(out, ignore_errors=True)
        start = time.perf_counter()
        export_merge(recipe, out, device=args.device, write_mergekit=False)
        wall = time.perf_counter() - start
        shutil.rmtree(out, ignore_errors=True)
        phases = ", ".join(f"{PHASES[k]} {totals[k]:.2f} s" for k in PHASES)
        print(f"{args.method} on {args.device}: {wall:.2f} s wall; {phases}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
