"""Time the full delta report for a synthetic 0.9B Llama pair (base + 1 fine-tune, bf16).

Target (issue 4): < 5 s on the 2-core CPU machine, page cache warm, exact statistics.

Measured (2-core CPU shared with other jobs, torch 2.13, 2 threads, page cache warm, exact
statistics, 2026-11-23): best 1.26 s (758 M elements/s) when the machine was quiet; 2.5 s
with other developers' jobs running (load average ~3); the first run in a fresh process took
3.1-4.8 s under that load (fresh read buffers page-fault in). Reopening from the disk cache:
0.04-0.08 s. Target met in every run.
Command:  python benchmarks/delta_speed.py --repeat 3   # builds bench-data/delta-speed once

The data: hidden 2048, 16 layers, intermediate 5632, vocab 32000 (0.95B parameters), base
weights N(0, 0.02) (norm weights 1), fine-tune = base + N(0, 0.002), both stored bf16 in
500 MB shards with a config.json, written directly with safetensors (no model instantiation).
``--size tiny`` builds a 2-layer toy for a smoke run. ``--data DIR`` reuses or builds there.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

SIZES = {
    "full": {"hidden": 2048, "layers": 16, "intermediate": 5632, "vocab": 32000},
    "tiny": {"hidden": 64, "layers": 2, "intermediate": 172, "vocab": 256},
}
SHARD_BYTES = 500 * 1000 * 1000
TARGET_S = 5.0


def llama_shapes(hidden: int, layers: int, intermediate: int, vocab: int) -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of a Llama checkpoint (no GQA, untied head), in file order."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, hidden)}
    for i in range(layers):
        p = f"model.layers.{i}."
        for proj in ("q", "k", "v", "o"):
            shapes[f"{p}self_attn.{proj}_proj.weight"] = (hidden, hidden)
        shapes[f"{p}mlp.gate_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.up_proj.weight"] = (intermediate, hidden)
        shapes[f"{p}mlp.down_proj.weight"] = (hidden, intermediate)
        shapes[f"{p}input_layernorm.weight"] = (hidden,)
        shapes[f"{p}post_attention_layernorm.weight"] = (hidden,)
    shapes["model.norm.weight"] = (hidden,)
    shapes["lm_head.weight"] = (vocab, hidden)
    return shapes


def llama_config(hidden: int, layers: int, intermediate: int, vocab: int) -> dict:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": layers,
        "num_attention_heads": max(1, hidden // 128),
        "num_key_value_heads": max(1, hidden // 128),
        "vocab_size": vocab,
        "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


class _ShardWriter:
    """Collects tensors and writes a safetensors shard each time SHARD_BYTES is reached."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.pending, self.size, self.shards = folder, {}, 0, []
        self.weight_map: dict[str, int] = {}
        folder.mkdir(parents=True, exist_ok=True)

    def add(self, name: str, t: torch.Tensor) -> None:
        nbytes = t.numel() * t.element_size()
        if self.pending and self.size + nbytes > SHARD_BYTES:
            self.flush()
        self.pending[name] = t
        self.size += nbytes
        self.weight_map[name] = len(self.shards)

    def flush(self) -> None:
        if self.pending:
            self.shards.append(self.pending)
            save_file(self.pending, str(self.folder / f"part-{len(self.shards)}.safetensors"),
                      metadata={"format": "pt"})
            self.shards[-1] = None  # free
            self.pending, self.size = {}, 0

    def close(self, config: dict, total: int) -> None:
        self.flush()
        n = len(self.shards)
        names = {k: f"model-{k + 1:05d}-of-{n:05d}.safetensors" for k in range(n)}
        for k in range(n):
            (self.folder / f"part-{k + 1}.safetensors").rename(self.folder / names[k])
        index = {"metadata": {"total_size": total},
                 "weight_map": {t: names[k] for t, k in self.weight_map.items()}}
        (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=1))
        (self.folder / "config.json").write_text(json.dumps(config, indent=1))


@torch.no_grad()
def build_pair(root: Path, size: str, *, sigma_base: float = 0.02, sigma_delta: float = 0.002) -> tuple[Path, Path]:
    """Write (or reuse) ``root/base`` and ``root/finetune``; returns their paths."""
    base_dir, ft_dir = root / "base", root / "finetune"
    done = root / f"complete-{size}"
    if done.is_file():
        return base_dir, ft_dir
    dims = SIZES[size]
    gen = torch.Generator().manual_seed(0)
    writers = _ShardWriter(base_dir), _ShardWriter(ft_dir)
    total = 0
    for name, shape in llama_shapes(**dims).items():
        if len(shape) == 1:
            base = torch.ones(shape)
        else:
            base = torch.randn(shape, generator=gen).mul_(sigma_base)
        ft = base + torch.randn(shape, generator=gen).mul_(sigma_delta)
        writers[0].add(name, base.to(torch.bfloat16))
        writers[1].add(name, ft.to(torch.bfloat16))
        total += base.numel() * 2
    config = llama_config(**dims)
    for w in writers:
        w.close(config, total)
    done.write_text("ok\n")
    return base_dir, ft_dir


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
    base, ft = build_pair(root, args.size)
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
