"""Small synthetic checkpoints for the delta-analysis and figure tests: folders with a
config.json and one safetensors file, whose deltas have a chosen spread."""

from __future__ import annotations

import json
from pathlib import Path

import plotly.graph_objects as go
import torch
from safetensors.torch import save_file

from fusion_ui.deltas import DeltaReport, dare_preview
from fusion_ui.figures import (
    dare_preview_histogram,
    delta_histogram,
    layer_module_heatmap,
    pairwise_heatmap,
)
from fusion_ui.figures.style import FULL_FIT_PX, HALF_FIT_PX

TENSOR = "model.layers.1.mlp.down_proj.weight"  # the drill-down and preview tensor of app_figures


def write_model(folder: Path, tensors: dict[str, torch.Tensor], *, layers: int = 2) -> Path:
    """A minimal HF folder: config.json + one safetensors file."""
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    config = {"model_type": "llama", "num_hidden_layers": layers, "hidden_size": 8}
    (folder / "config.json").write_text(json.dumps(config))
    return folder


NAMES = [
    "model.embed_tokens.weight",
    *(f"model.layers.{i}.{m}.weight" for i in range(3)
      for m in ("self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj", "input_layernorm")),
]


def family(root: Path, sigmas: dict[str, float]) -> dict[str, Path]:
    """bf16 base N(0, 0.02) and fine-tunes base + N(0, σ); the 'big' one has σ = 0.02."""
    g = torch.Generator().manual_seed(7)
    base = {n: torch.randn(64, 128, generator=g) * 0.02 if "norm" not in n else torch.ones(128)
            for n in NAMES}
    paths = {"base": write_model(root / "base", {k: v.bfloat16() for k, v in base.items()}, layers=3)}
    for label, sigma in sigmas.items():
        ft = {k: (v + torch.randn(v.shape, generator=g) * sigma).bfloat16() for k, v in base.items()}
        paths[label] = write_model(root / label, ft, layers=3)
    return paths


def app_figures(report: DeltaReport, models: dict[str, Path]) -> dict[str, tuple[go.Figure, int]]:
    """Every figure the app shows for a report of ``family(..., {\"expert_small\", \"expert_big\"})``, with
    the width it is fitted to."""
    preview = dare_preview(models["base"], models["expert_big"], TENSOR, drop_rate=0.9, device="cpu")
    return {
        "histogram": (delta_histogram(report), FULL_FIT_PX),
        "drill-down": (delta_histogram(report, tensor=TENSOR), FULL_FIT_PX),
        "heatmap": (layer_module_heatmap(report, "expert_small"), HALF_FIT_PX),
        "heatmap share": (layer_module_heatmap(report, "expert_big", metric="share_above_0.005"),
                          HALF_FIT_PX),
        "cosine": (pairwise_heatmap(report, metric="cosine"), HALF_FIT_PX),
        "conflict": (pairwise_heatmap(report, metric="sign_conflict"), HALF_FIT_PX),
        "preview": (dare_preview_histogram(preview), FULL_FIT_PX),
    }
