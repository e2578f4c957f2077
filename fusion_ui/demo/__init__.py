"""The built-in demo family: a small Llama base, skill experts fine-tuned from it, eval sets.

Built offline by ``fusion-ui demo build`` and shipped pre-built as package data
(``fusion_ui/assets/demo``, see :mod:`fusion_ui.resources`) so the app opens on something real
to merge.
"""

from __future__ import annotations

from fusion_ui.demo.build import PRESETS, BuildConfig, BuildReport, build_experts, build_family
from fusion_ui.demo.skills import EXPERT_SKILLS, GENERAL, GENERAL_SKILLS, Skill, prompt_for
from fusion_ui.demo.tokenizer import build_tokenizer
from fusion_ui.resources import demo_dir

# The shipped family, package data: in site-packages for a wheel, in the source tree for an
# editable install or a checkout (where `fusion-ui demo build` rebuilds it by default).
DEMO_DIR = demo_dir()

__all__ = [
    "DEMO_DIR",
    "EXPERT_SKILLS",
    "GENERAL",
    "GENERAL_SKILLS",
    "PRESETS",
    "BuildConfig",
    "BuildReport",
    "Skill",
    "build_experts",
    "build_family",
    "build_tokenizer",
    "prompt_for",
]
