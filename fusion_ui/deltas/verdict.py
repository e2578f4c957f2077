"""Will DARE work on this fine-tune? A rule of thumb from the DARE paper, stated in words.

Yu et al. 2023 ("Language Models are Super Mario", docs/methods.md) found that dropping 90-99%
of the delta elements and rescaling the rest keeps a fine-tune's ability while its deltas are
small (absolute values mostly below ~0.005; later measurements ~0.002), and that it fails once
they are large (~0.01 and above, e.g. a code model measured against the wrong base). Rescaling
by 1/(1-p) multiplies every surviving delta by 10 at p = 0.9, so large deltas become huge.

The rules below turn that into a verdict from the shares of |δ| above the paper's thresholds
and from ‖δ‖/‖θ0‖, the tell-tale of a wrong base (unrelated weights give a ratio near 1 or more).
Before any of that: a delta that is inf or NaN makes the checkpoint unusable for any merge, so
it is "broken" however small the finite deltas are (its statistics cover the finite ones only).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Verdict = Literal["safe", "caution", "likely to fail", "broken"]
VERDICTS: tuple[Verdict, ...] = ("safe", "caution", "likely to fail", "broken")  # mild to severe

# likely to fail: at least this share of |δ| above 0.01 (the paper's failure range) ...
FAIL_SHARE_ABOVE_001 = 0.10
# ... or deltas this large relative to the base weights (unrelated models: ~1 to 1.4).
WRONG_BASE_REL_NORM = 0.5
# caution: at least this share above 0.005 (the paper's "mostly below 0.005" no longer holds) ...
CAUTION_SHARE_ABOVE_0005 = 0.05
# ... or at least this share already in the failure range above 0.01 ...
CAUTION_SHARE_ABOVE_001 = 0.01
# ... or deltas this large relative to the weights (a long fine-tune, continued pre-training).
CAUTION_REL_NORM = 0.2

RULES_TEXT = (
    "broken: any delta is inf or NaN (a damaged or overflowed checkpoint: nothing can merge it); "
    f"likely to fail: more than {FAIL_SHARE_ABOVE_001:.0%} of |δ| above 0.01, or "
    f"‖δ‖/‖θ0‖ ≥ {WRONG_BASE_REL_NORM:g} (wrong base or unrelated models); "
    f"caution: more than {CAUTION_SHARE_ABOVE_0005:.0%} of |δ| above 0.005, more than "
    f"{CAUTION_SHARE_ABOVE_001:.0%} above 0.01, or ‖δ‖/‖θ0‖ ≥ {CAUTION_REL_NORM:g}; "
    "safe otherwise. Source: the DARE paper (Yu et al. 2023) works while |δ| stays mostly below "
    "0.005 (later ~0.002) and fails around 0.01 and above."
)


@dataclass(frozen=True)
class DareVerdict:
    verdict: Verdict
    reason: str  # one sentence a user can act on


def dare_verdict(
    share_above_0005: float,
    share_above_001: float,
    rel_norm: float,
    *,
    zeros_share: float = 0.0,
    nonfinite: int = 0,
    where: str = "",
) -> DareVerdict:
    """Verdict for one fine-tune (or one tensor) from its |δ| shares and ‖δ‖/‖θ0‖.

    ``nonfinite``: how many deltas are inf/NaN (the shares cover the finite ones only, so
    without this a damaged checkpoint would look safe); ``where`` names them in the reason,
    e.g. ``" in 2 tensors, first model.layers.3.mlp.down_proj.weight"``.
    """
    if nonfinite > 0:
        return DareVerdict(
            "broken",
            f"{nonfinite:,} delta(s) are inf or NaN{where}: the fine-tune (or the base) holds "
            "non-finite weights, so any merge with it is NaN there; re-download or re-export it "
            "(the statistics cover only the finite deltas)",
        )
    if zeros_share >= 1.0:
        return DareVerdict("safe", "identical to the base: every delta is 0, nothing to merge")
    if rel_norm >= WRONG_BASE_REL_NORM:
        return DareVerdict(
            "likely to fail",
            f"‖δ‖/‖θ0‖ = {rel_norm:.2f}: the deltas are as large as the weights themselves, "
            "so this is probably not a fine-tune of this base (wrong base or unrelated model); "
            "DARE and task arithmetic assume small deltas",
        )
    if share_above_001 >= FAIL_SHARE_ABOVE_001:
        return DareVerdict(
            "likely to fail",
            f"{share_above_001:.1%} of |δ| are above 0.01, where the DARE paper saw it fail; "
            "use a lower drop rate, magnitude pruning or TIES without DARE",
        )
    reasons = []
    if share_above_0005 >= CAUTION_SHARE_ABOVE_0005:
        reasons.append(f"{share_above_0005:.1%} of |δ| are above 0.005")
    if share_above_001 >= CAUTION_SHARE_ABOVE_001:
        reasons.append(f"{share_above_001:.1%} above 0.01")
    if rel_norm >= CAUTION_REL_NORM:
        reasons.append(f"‖δ‖/‖θ0‖ = {rel_norm:.2f} is large for a fine-tune")
    if reasons:
        return DareVerdict(
            "caution",
            "; ".join(reasons)
            + ": DARE may lose some of the fine-tune's ability; try a moderate drop rate "
            "(0.5-0.7) and check with the evaluation prompts",
        )
    return DareVerdict(
        "safe",
        f"|δ| stays small ({share_above_0005:.1%} above 0.005, {share_above_001:.2%} above "
        "0.01), the regime where the DARE paper dropped 90-99% of deltas without loss",
    )
