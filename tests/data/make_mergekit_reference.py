"""Reference outputs of mergekit 0.1.5 on tiny float32 models, for parity tests without mergekit.

mergekit is not a dependency of fusion_ui or of its tests. This script, run once in a separate
virtual environment that has mergekit, builds a tiny Llama family deterministically (pure
Python arithmetic: no random generator whose stream could change between versions), merges it
with ``mergekit-yaml`` for each case in :data:`CASES`, and stores every merged tensor in
``mergekit_<method>_reference.safetensors`` next to this file, with the mergekit and torch
versions, the command, the configs and a digest of the inputs in its metadata. The parity test
(``tests/test_methods_sce.py``) imports :func:`build_family` from here, rebuilds the same inputs
(checked against the digest), merges them with fusion_ui from the same configs, and compares.

Regenerate (the command recorded in the file)::

    python -m venv /tmp/mkvenv
    /tmp/mkvenv/bin/pip install mergekit==0.1.5 torch==2.13.0
    /tmp/mkvenv/bin/python tests/data/make_mergekit_reference.py --mergekit-yaml /tmp/mkvenv/bin/mergekit-yaml

Only ``torch`` and ``safetensors`` are needed to *build* the family, so the test environment
can import this module.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
M64 = (1 << 64) - 1

# A tiny Llama: every tensor kind (embeddings, attention, MLP, norms, untied head), 2 layers.
HIDDEN, INTERMEDIATE, LAYERS, VOCAB = 4, 8, 2, 8
CONFIG: dict[str, Any] = {
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
    "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS, "num_attention_heads": 1,
    "num_key_value_heads": 1, "head_dim": HIDDEN, "vocab_size": VOCAB,
    "max_position_embeddings": 16, "rms_norm_eps": 1e-6, "hidden_act": "silu",
    "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": 0, "eos_token_id": 1,
}
FINE_TUNES = 3

# (case name, mergekit config without paths: `{base}` and `{ft<i>}` are filled in)
CASES: dict[str, dict[str, dict[str, Any]]] = {
    "sce": {
        # no selection: energy weights and sign erasure only
        "all": {"merge_method": "sce", "base_model": "{base}", "dtype": "float32",
                "models": [{"model": "{ft0}"}, {"model": "{ft1}"}, {"model": "{ft2}"}],
                "parameters": {"select_topk": 1.0}},
        "half": {"merge_method": "sce", "base_model": "{base}", "dtype": "float32",
                 "models": [{"model": "{ft0}"}, {"model": "{ft1}"}, {"model": "{ft2}"}],
                 "parameters": {"select_topk": 0.5}},
        # two fine-tunes, the base listed among the models (mergekit skips it), int8 masks
        "two": {"merge_method": "sce", "base_model": "{base}", "dtype": "float32",
                "models": [{"model": "{base}"}, {"model": "{ft0}"}, {"model": "{ft2}"}],
                "parameters": {"select_topk": 0.3, "int8_mask": True}},
        # ⌊n·0.1⌋ = 0 on the 4-element norms: mergekit keeps none there (a difference on purpose)
        "sparse": {"merge_method": "sce", "base_model": "{base}", "dtype": "float32",
                   "models": [{"model": "{ft0}"}, {"model": "{ft1}"}, {"model": "{ft2}"}],
                   "parameters": {"select_topk": 0.1}},
    },
    "ties": {
        # density·n is not whole for most tensors: mergekit floors the kept count
        "trim": {"merge_method": "ties", "base_model": "{base}", "dtype": "float32",
                 "models": [{"model": "{ft0}", "parameters": {"weight": 0.5, "density": 0.3}},
                            {"model": "{ft1}", "parameters": {"weight": 0.3, "density": 0.45}},
                            {"model": "{ft2}", "parameters": {"weight": 0.2, "density": 0.7}}]},
    },
    "breadcrumbs": {
        "band": {"merge_method": "breadcrumbs", "base_model": "{base}", "dtype": "float32",
                 "models": [{"model": "{ft0}", "parameters": {"weight": 0.5, "density": 0.6, "gamma": 0.1}},
                            {"model": "{ft1}", "parameters": {"weight": 0.5, "density": 0.35, "gamma": 0.15}}]},
        "ties": {"merge_method": "breadcrumbs_ties", "base_model": "{base}", "dtype": "float32",
                 "models": [{"model": "{ft0}", "parameters": {"weight": 0.4, "density": 0.6, "gamma": 0.1}},
                            {"model": "{ft1}", "parameters": {"weight": 0.3, "density": 0.5, "gamma": 0.05}},
                            {"model": "{ft2}", "parameters": {"weight": 0.3, "density": 0.8, "gamma": 0.3}}]},
    },
    "model_stock": {
        # one t per tensor; the hashed deltas' mean cosines are small and of either sign, so
        # mergekit's extrapolation on negative ones is exercised
        "tensor": {"merge_method": "model_stock", "base_model": "{base}", "dtype": "float32",
                   "models": [{"model": "{ft0}"}, {"model": "{ft1}"}, {"model": "{ft2}"}]},
        # one t per row; weights given as mergekit's own tests do (model_stock reads none)
        "rows": {"merge_method": "model_stock", "base_model": "{base}", "dtype": "float32",
                 "models": [{"model": "{ft0}", "parameters": {"weight": 1.0}},
                            {"model": "{ft1}", "parameters": {"weight": 1.0}}],
                 "parameters": {"filter_wise": True}},
    },
    # frankenmerges: `slices:` stacking layer ranges (ft0's layers 0-1, then ft1's layer 1)
    "passthrough": {
        "stack": {"merge_method": "passthrough", "dtype": "float32",
                  "slices": [{"sources": [{"model": "{ft0}", "layer_range": [0, 2]}]},
                             {"sources": [{"model": "{ft1}", "layer_range": [1, 2]}]}]},
        # `scale` at three levels: per source (first filter match wins, a catch-all ends the
        # list), per slice, and global (reached where the narrower levels set nothing)
        "scale": {"merge_method": "passthrough", "dtype": "float32",
                  "parameters": {"scale": [{"filter": "input_layernorm", "value": 0.5}]},
                  "slices": [
                      {"sources": [{"model": "{ft0}", "layer_range": [0, 1]}],
                       "parameters": {"scale": [{"filter": "q_proj", "value": 2.0}]}},
                      {"sources": [{"model": "{ft1}", "layer_range": [0, 2],
                                    "parameters": {"scale": [{"filter": "o_proj", "value": 0.5},
                                                             {"filter": "down_proj", "value": 0.25},
                                                             {"value": 1.0}]}}]}]},
    },
    # the README's full-range slerp form: one slice, both models' every layer, t ramps per filter
    "slerp_slices": {
        "full": {"merge_method": "slerp", "base_model": "{base}", "dtype": "float32",
                 "slices": [{"sources": [{"model": "{base}", "layer_range": [0, 2]},
                                         {"model": "{ft0}", "layer_range": [0, 2]}]}],
                 "parameters": {"t": [{"filter": "self_attn", "value": [0, 0.5, 0.3, 0.7, 1]},
                                      {"filter": "mlp", "value": [1, 0.5, 0.7, 0.3, 0]},
                                      {"value": 0.5}]}},
        # base listed second, and a slice of the middle: layer 1 of each
        "middle": {"merge_method": "slerp", "base_model": "{base}", "dtype": "float32",
                   "slices": [{"sources": [{"model": "{ft1}", "layer_range": [1, 2]},
                                           {"model": "{base}", "layer_range": [1, 2]}]}],
                   "parameters": {"t": 0.3}},
    },
    # a method that reads θ0 on slices: the base is the source that is base_model
    "task_arithmetic_slices": {
        "ramp": {"merge_method": "task_arithmetic", "base_model": "{base}", "dtype": "float32",
                 "slices": [{"sources": [{"model": "{base}", "layer_range": [0, 2]},
                                         {"model": "{ft0}", "layer_range": [0, 2], "parameters": {"weight": 0.7}},
                                         {"model": "{ft1}", "layer_range": [0, 2],
                                          "parameters": {"weight": [0.2, 0.6]}}]}]},
    },
}


def tensor_shapes() -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor of the tiny Llama, in checkpoint order."""
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        shapes |= {
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTERMEDIATE, HIDDEN), p + "mlp.up_proj.weight": (INTERMEDIATE, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTERMEDIATE),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        }
    return shapes | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & M64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & M64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & M64
    return z ^ (z >> 31)


def hashed_values(label: str, n: int, exponent: int) -> list[float]:
    """``n`` values in [-2^-exponent, 2^-exponent), each a 24-bit integer times a power of two
    (so exactly a float32), from SplitMix64 seeded with a hash of ``label``."""
    state = int.from_bytes(hashlib.blake2b(label.encode(), digest_size=8).digest(), "little")
    out = []
    for _ in range(n):
        state = (state + 0x9E3779B97F4A7C15) & M64
        u = _splitmix64(state) >> 40  # 24 bits
        out.append((u - (1 << 23)) * 2.0 ** -(23 + exponent))
    return out


def family_tensors() -> dict[str, dict[str, torch.Tensor]]:
    """base and ft0..ft2: the base in [-0.5, 0.5) (norm weights around 1), fine-tunes the base
    plus deltas in [-1/64, 1/64), rounded once to float32."""
    models: dict[str, dict[str, torch.Tensor]] = {"base": {}}
    for i in range(FINE_TUNES):
        models[f"ft{i}"] = {}
    for name, shape in tensor_shapes().items():
        n = 1
        for d in shape:
            n *= d
        base = hashed_values(f"base/{name}", n, 1)
        if name.endswith("norm.weight"):
            base = [1.0 + v for v in base]
        models["base"][name] = torch.tensor(base, dtype=torch.float32).view(shape)
        for i in range(FINE_TUNES):
            delta = hashed_values(f"ft{i}/{name}", n, 6)
            models[f"ft{i}"][name] = torch.tensor([b + d for b, d in zip(base, delta, strict=True)],
                                                  dtype=torch.float32).view(shape)
    return models


def digest(models: dict[str, dict[str, torch.Tensor]]) -> str:
    """sha256 over every input tensor's bytes, in a fixed order."""
    h = hashlib.sha256()
    for label in sorted(models):
        for name in sorted(models[label]):
            h.update(f"{label}/{name}".encode())
            h.update(models[label][name].contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def build_family(root: Path) -> dict[str, Path]:
    """The family as Hugging Face folders (config.json + model.safetensors) under ``root``."""
    paths = {}
    for label, tensors in family_tensors().items():
        folder = root / label
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "config.json").write_text(json.dumps(CONFIG, indent=1))
        save_file({k: v.contiguous() for k, v in tensors.items()}, folder / "model.safetensors",
                  metadata={"format": "pt"})
        paths[label] = folder
    return paths


def fill(config: Any, paths: dict[str, Path]) -> Any:
    """A case's config with ``{base}``/``{ft<i>}`` replaced by the folders."""
    if isinstance(config, dict):
        return {k: fill(v, paths) for k, v in config.items()}
    if isinstance(config, list):
        return [fill(v, paths) for v in config]
    if isinstance(config, str) and config.startswith("{") and config.endswith("}"):
        return str(paths[config[1:-1]])
    return config


def reference_path(method: str) -> Path:
    return HERE / f"mergekit_{method}_reference.safetensors"


def load_reference(method: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Stored outputs (``<case>/<tensor>``) and metadata of one method's reference file."""
    from safetensors import safe_open

    path = reference_path(method)
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    return load_file(str(path)), meta


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mergekit-yaml", required=True, help="the mergekit-yaml executable of a mergekit 0.1.5 venv")
    parser.add_argument("--method", action="append", help="only these methods (default: all of CASES)")
    args = parser.parse_args()
    import yaml

    python = Path(args.mergekit_yaml).parent / "python"
    versions = json.loads(subprocess.run(
        [str(python), "-c", "import json, importlib.metadata as m, torch; "
         "print(json.dumps({'mergekit': m.version('mergekit'), 'torch': torch.__version__}))"],
        check=True, capture_output=True, text=True).stdout)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        paths = build_family(root / "family")
        inputs = digest(family_tensors())
        for method in args.method or list(CASES):
            outputs: dict[str, torch.Tensor] = {}
            for case, config in CASES[method].items():
                cfg = root / f"{method}-{case}.yml"
                cfg.write_text(yaml.safe_dump(fill(config, paths)))
                out = root / f"out-{method}-{case}"
                cmd = [args.mergekit_yaml, str(cfg), str(out), "--device", "cpu", "--no-copy-tokenizer",
                       "--no-write-model-card", "--quiet"]
                subprocess.run(cmd, check=True)
                merged = {}
                for shard in sorted(out.glob("*.safetensors")):
                    merged |= load_file(str(shard))
                for name, t in merged.items():
                    outputs[f"{case}/{name}"] = t.contiguous()
            meta = {
                "mergekit_version": versions["mergekit"], "torch_version": versions["torch"],
                "command": "mergekit-yaml CONFIG OUT --device cpu --no-copy-tokenizer --no-write-model-card --quiet",
                "generator": "python tests/data/make_mergekit_reference.py --mergekit-yaml /tmp/mkvenv/bin/mergekit-yaml",
                "cases": json.dumps(CASES[method], sort_keys=True), "inputs_sha256": inputs,
            }
            save_file(outputs, reference_path(method), metadata=meta)
            print(f"{reference_path(method)}: {len(outputs)} tensors, mergekit {versions['mergekit']}", file=sys.stderr)


if __name__ == "__main__":
    main()
