"""Merge speed and memory: fusion_ui against mergekit on the same merges, side by side.

Builds (or reuses) a synthetic Llama family (base + 3 fine-tunes, bf16, 500 MB shards; the
default is the 0.9B family of the speed issue), runs ``fusion-ui merge`` and, when
``--mergekit-cmd`` is given, mergekit's ``mergekit-yaml`` on the equivalent config, each in its
own process, and prints wall time, peak RSS and ratios per method, plus the largest absolute
difference between the two outputs for the deterministic methods. fusion_ui runs each merge
twice: from its own recipe, and from the mergekit YAML of the same merge (what a user coming
from mergekit brings; for DARE, mergekit's L1 rescale).

    python benchmarks/merge_speed.py --size tiny                       # smoke run, seconds
    python benchmarks/merge_speed.py --size small --methods della,della_ties --unfused --no-extras \
        --mergekit-cmd mergekit-yaml    # also the torch reference (fused kernels off), merges only
    python benchmarks/merge_speed.py --mergekit-cmd /opt/mergekit-venv/bin/mergekit-yaml
    python benchmarks/merge_speed.py --device cuda --mergekit-cmd mergekit-yaml   # on a GPU: both tools on it

Also measured: the in-memory re-merge latency (slider -> new weights in the preview model) on
the demo family (``assets/demo``; the small synthetic family when it is absent), and the full
delta report for base + one fine-tune of the benchmark family.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))

from synthetic import SIZES, build_family  # noqa: E402

from fusion_ui.io import Checkpoint  # noqa: E402
from fusion_ui.mergekit_compat import recipe_to_mergekit  # noqa: E402
from fusion_ui.recipe import recipe_from_dict  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WEIGHTS = (0.4, 0.3, 0.3)
# method -> (per-model parameters, global parameters); DARE-TIES as in the issue: density 0.5, normalize on
METHODS: dict[str, tuple[dict, dict]] = {
    "dare_ties": ({"drop_rate": 0.5}, {"normalize": True}),
    "ties": ({"density": 0.5}, {"normalize": True}),
    "task_arithmetic": ({}, {"normalize": False}),
    "linear": ({}, {"normalize": True}),
    "breadcrumbs": ({"density": 0.9, "gamma": 0.01}, {}),
    "breadcrumbs_ties": ({"density": 0.9, "gamma": 0.01}, {"normalize": True}),
    "della": ({"density": 0.5, "epsilon": 0.1}, {}),
    "della_ties": ({"density": 0.5, "epsilon": 0.1}, {"normalize": True}),
}
DETERMINISTIC = {"ties", "task_arithmetic", "linear", "breadcrumbs", "breadcrumbs_ties"}
# `fusion-ui merge` with the task-arithmetic family's fused CPU kernels off: the torch reference
# (--unfused times it, the "before" of a kernel)
UNFUSED = (
    "import runpy, sys; from fusion_ui.methods.task_arithmetic import TaskArithmeticFamily as F; "
    "F.merge_fused_cpu = lambda self, ctx, out_dtype: None; sys.argv[0] = 'fusion-ui'; "
    "runpy.run_module('fusion_ui.cli', run_name='__main__')"
)


def warm_page_cache(family: dict[str, Path]) -> float:
    """Read every file of the family once, so each timed run starts with them in the page cache
    (the condition the targets are stated for; otherwise the first method pays the disk)."""
    start = time.perf_counter()
    buf = bytearray(64 << 20)
    for folder in family.values():
        for path in sorted(folder.iterdir()):
            with path.open("rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    return time.perf_counter() - start


def warm_tools(mergekit_cmd: str | None, env: dict[str, str]) -> float:
    """Start each tool once untimed, so that its libraries (torch alone is ~0.5 GB of shared
    objects) are in the page cache too; idle memory reclaim can evict them between runs, and
    then the first timed run pays for reading them from disk."""
    start = time.perf_counter()
    cmds = [[sys.executable, "-c", "import numba, torch, fusion_ui.export, fusion_ui.kernels.cpu"]]
    if mergekit_cmd:
        cmds.append([mergekit_cmd, "--help"])
    for cmd in cmds:
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    return time.perf_counter() - start


def recipe_for(method: str, family: dict[str, Path]) -> dict:
    per_model, params = METHODS[method]
    fts = [k for k in family if k != "base"]
    return {
        "method": method,
        "base": str(family["base"].resolve()),
        "models": [{"model": str(family[k].resolve()), "weight": w, **per_model} for k, w in zip(fts, WEIGHTS, strict=False)],
        "parameters": params,
        "dtype": "bfloat16",
    }


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Run a command; (wall seconds, peak RSS in GB) of that process and its children."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{err[-3000:]}")
    return wall, usage.ru_maxrss / 1024 / 1024  # ru_maxrss is in KiB on Linux


def max_abs_diff(a: Path, b: Path) -> float:
    worst = 0.0
    with Checkpoint.open(a) as ca, Checkpoint.open(b) as cb:
        for name in ca.tensors:
            if name in cb.tensors:
                d = (ca.tensor(name).float() - cb.tensor(name).float()).abs().max().item()
                worst = max(worst, d)
    return worst


def remerge_latency(device: str, repeats: int = 5) -> tuple[str, float]:
    """Median seconds of an in-memory DARE-TIES re-merge into a loaded preview model.

    On the demo family (assets/demo) when it is there, else on the small synthetic family
    (21M parameters per model, larger than the demo's).
    """
    from transformers import AutoModelForCausalLM

    from fusion_ui.io.writer import ModelSink
    from fusion_ui.merge import plan_merge, run_merge

    demo = ROOT / "assets" / "demo"
    experts = sorted(p for p in demo.glob("expert_*") if (p / "config.json").is_file())
    if (demo / "base" / "config.json").is_file() and experts:
        label, base = "demo family", demo / "base"
    else:
        family = build_family(ROOT / "bench-data" / "merge-speed" / "small", "small")
        label, base = "small synthetic family (21M params/model)", family["base"]
        experts = [p for k, p in family.items() if k != "base"]
    model = AutoModelForCausalLM.from_pretrained(base)
    times = []
    for seed in range(repeats):
        recipe = recipe_from_dict({
            "method": "dare_ties", "base": str(base), "seed": seed,
            "models": [{"model": str(p), "weight": 1.0 / len(experts), "drop_rate": 0.9} for p in experts],
        })
        start = time.perf_counter()
        with plan_merge(recipe) as plan:
            run_merge(plan, ModelSink(model), device=device)
        times.append(time.perf_counter() - start)
    return label, sorted(times)[len(times) // 2]


def delta_report_seconds(family: dict[str, Path], device: str) -> float:
    """Best of two full delta reports for base + first fine-tune (the delta-analysis target: < 5 s)."""
    from fusion_ui.deltas import analyze_deltas

    times = []
    for _ in range(2):
        start = time.perf_counter()
        analyze_deltas(family["base"], [family["ft0"]], device=device, cache=False)
        times.append(time.perf_counter() - start)
    return min(times)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="full")
    parser.add_argument("--data", type=Path, default=ROOT / "bench-data" / "merge-speed")
    parser.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset")
    parser.add_argument("--mergekit-cmd", help="path to mergekit-yaml (installed in its own venv)")
    parser.add_argument(
        "--device", default="cpu",
        help="cpu (default), or cuda: both tools merge on the GPU (mergekit with --cuda)",
    )
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--unfused", action="store_true",
                        help="also time fusion_ui without its task-arithmetic kernels (the torch reference)")
    parser.add_argument("--no-extras", action="store_true",
                        help="skip the re-merge latency and the delta report (merges only)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument(
        "--out-dir", type=Path, default=None,
        help="where both tools write their merges (default: DATA/SIZE/outputs on disk). A tmpfs "
        "such as /dev/shm takes the disk's write-back out of the measurement, for both tools",
    )
    args = parser.parse_args(argv)

    data = args.data / args.size
    start = time.perf_counter()
    family = build_family(data, args.size)
    print(f"family {args.size} {SIZES[args.size]} ready in {time.perf_counter() - start:.1f} s: {data}")
    print(f"page cache warmed in {warm_page_cache(family):.1f} s")
    env = os.environ | {"OMP_NUM_THREADS": str(args.threads), "NUMBA_NUM_THREADS": str(args.threads),
                        "MKL_NUM_THREADS": str(args.threads)}
    print(f"tools started once in {warm_tools(args.mergekit_cmd, env):.1f} s")
    out_root = data / "outputs"
    out_root.mkdir(exist_ok=True)
    merged_root = args.out_dir if args.out_dir is not None else out_root
    merged_root.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in args.methods.split(","):
        recipe = recipe_for(method, family)
        ours_yaml = out_root / f"{method}.yaml"
        ours_yaml.write_text(yaml.safe_dump(recipe, sort_keys=False))
        ours_out = merged_root / f"{method}-fusion_ui"
        shutil.rmtree(ours_out, ignore_errors=True)
        wall, rss = timed([sys.executable, "-m", "fusion_ui.cli", "merge", str(ours_yaml), "--out",
                           str(ours_out), "--device", args.device, "--no-mergekit"], env)
        row = {"method": method, "fusion_ui_s": wall, "fusion_ui_rss_gb": rss}
        # The same merge as a user coming from mergekit gives it: its YAML, to both tools (for
        # DARE that means mergekit's L1 rescale, its default).
        mk_text, _ = recipe_to_mergekit(recipe_from_dict(recipe))
        assert mk_text is not None
        mk_yaml = out_root / f"{method}.mergekit.yml"
        mk_yaml.write_text(mk_text)
        shutil.rmtree(ours_out, ignore_errors=True)
        wall, rss = timed([sys.executable, "-m", "fusion_ui.cli", "merge", str(mk_yaml), "--out",
                           str(ours_out), "--device", args.device, "--no-mergekit"], env)
        row |= {"fusion_ui_mk_yaml_s": wall, "fusion_ui_mk_yaml_rss_gb": rss}
        if args.unfused:
            ref_out = merged_root / f"{method}-fusion_ui-reference"
            for label, source in (("ref", ours_yaml), ("ref_mk_yaml", mk_yaml)):
                shutil.rmtree(ref_out, ignore_errors=True)
                ref_wall, ref_rss = timed([sys.executable, "-c", UNFUSED, "merge", str(source), "--out",
                                           str(ref_out), "--device", args.device, "--no-mergekit"], env)
                row |= {f"fusion_ui_{label}_s": ref_wall, f"fusion_ui_{label}_rss_gb": ref_rss}
            row["fused_vs_reference_max_abs_diff"] = max_abs_diff(ours_out, ref_out)  # 0: bit for bit
            shutil.rmtree(ref_out, ignore_errors=True)
        if args.mergekit_cmd:
            mk_out = merged_root / f"{method}-mergekit"
            shutil.rmtree(mk_out, ignore_errors=True)
            gpu_flag = ["--cuda"] if args.device.startswith("cuda") else []
            mk_wall, mk_rss = timed([args.mergekit_cmd, str(mk_yaml), str(mk_out), *gpu_flag], env)
            row |= {"mergekit_s": mk_wall, "mergekit_rss_gb": mk_rss, "speedup": mk_wall / wall}
            if method in DETERMINISTIC:
                row["max_abs_diff"] = max_abs_diff(ours_out, mk_out)
            shutil.rmtree(mk_out, ignore_errors=True)
        shutil.rmtree(ours_out, ignore_errors=True)
        rows.append(row)
        print(json.dumps(row))

    latency_on, latency = ("skipped", float("nan")) if args.no_extras else remerge_latency(args.device)
    delta_s = float("nan") if args.no_extras else delta_report_seconds(family, args.device)
    print()
    print(f"{'':16s} {'fusion_ui, native':>18s} {'fusion_ui, mergekit YAML':>25s} {'mergekit':>18s}")
    print(f"{'method':16s} {'wall':>10s} {'RSS':>7s} {'wall':>10s} {'RSS':>7s} {'vs mk':>6s} {'wall':>10s} {'RSS':>7s}"
          f" {'speedup':>8s} {'max|Δ|':>9s}")
    for r in rows:
        if "mergekit_s" in r:
            mk = f"{r['mergekit_s']:9.1f}s {r['mergekit_rss_gb']:6.2f}G {r['speedup']:7.1f}x"
            vs = f"{r['mergekit_s'] / r['fusion_ui_mk_yaml_s']:5.1f}x"
        else:
            mk, vs = f"{'-':>10s} {'-':>7s} {'-':>8s}", f"{'-':>6s}"
        diff = f"{r['max_abs_diff']:9.2g}" if "max_abs_diff" in r else f"{'-':>9s}"
        print(f"{r['method']:16s} {r['fusion_ui_s']:9.1f}s {r['fusion_ui_rss_gb']:6.2f}G "
              f"{r['fusion_ui_mk_yaml_s']:9.1f}s {r['fusion_ui_mk_yaml_rss_gb']:6.2f}G {vs} {mk} {diff}")
    if args.unfused:
        print(f"{'torch reference':16s} {'native wall':>12s} {'RSS':>7s} {'mergekit YAML wall':>19s} {'RSS':>7s}"
              f" {'max|fused-ref|':>15s}")
        for r in rows:
            print(f"{r['method']:16s} {r['fusion_ui_ref_s']:11.1f}s {r['fusion_ui_ref_rss_gb']:6.2f}G "
                  f"{r['fusion_ui_ref_mk_yaml_s']:18.1f}s {r['fusion_ui_ref_mk_yaml_rss_gb']:6.2f}G"
                  f" {r['fused_vs_reference_max_abs_diff']:15.2g}")
    print(f"in-memory re-merge, {latency_on} (DARE-TIES into the preview model): {latency * 1000:.0f} ms (target < 500 ms)")
    print(f"delta report, base + 1 fine-tune ({args.size}): {delta_s:.2f} s (target < 5 s for the 0.9B pair)")
    gpu = f", on {torch.cuda.get_device_name()}" if args.device.startswith("cuda") else ""
    print(f"torch {torch.__version__}, {args.threads} threads, {os.cpu_count()} cores{gpu}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "remerge_s": latency, "remerge_on": latency_on,
                                         "delta_report_s": delta_s, "device": args.device,
                                         "size": args.size}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
