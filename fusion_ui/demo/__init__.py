"""The built-in demo family: a small Llama base, skill experts fine-tuned from it, eval sets.

Built offline by ``fusion-ui demo build`` and shipped pre-built in ``assets/demo`` so the
app opens on something real to merge.
"""

from __future__ import annotations

from pathlib import Path

from fusion_ui.demo.build import PRESETS, BuildConfig, BuildReport, build_family
from fusion_ui.demo.skills import EXPERT_SKILLS, GENERAL, GENERAL_SKILLS, Skill, prompt_for
from fusion_ui.demo.tokenizer import build_tokenizer

# The shipped family (a repository checkout or editable install).
DEMO_DIR = Path(__file__).resolve().parents[2] / "assets" / "demo"

__all__ = [
    "DEMO_DIR",
    "EXPERT_SKILLS",
    "GENERAL",
    "GENERAL_SKILLS",
    "PRESETS",
    "BuildConfig",
    "BuildReport",
    "Skill",
    "build_family",
    "build_tokenizer",
    "prompt_for",
]
