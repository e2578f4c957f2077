"""Quick evals: eval sets, batched greedy generation, string metrics, answer perplexity.

Used by the app's Compare tab and by ``fusion-ui eval``. Knows nothing of the UI.
"""

from __future__ import annotations

from fusion_ui.device import resolve_device
from fusion_ui.evals.generate import greedy_generate
from fusion_ui.evals.perplexity import answer_nll, perplexity
from fusion_ui.evals.run import (
    evaluate,
    evaluate_sources,
    load_causal_lm,
    predict,
    score_table,
    summarize,
)
from fusion_ui.evals.scoring import METRICS, contains, exact_match
from fusion_ui.evals.sets import (
    DEMO_EVALS_DIR,
    EvalItem,
    EvalSetError,
    demo_eval_set,
    limit_per_skill,
    load_eval_set,
    load_eval_sets,
)

__all__ = [
    "DEMO_EVALS_DIR",
    "METRICS",
    "EvalItem",
    "EvalSetError",
    "answer_nll",
    "contains",
    "demo_eval_set",
    "evaluate",
    "evaluate_sources",
    "exact_match",
    "greedy_generate",
    "limit_per_skill",
    "load_causal_lm",
    "load_eval_set",
    "load_eval_sets",
    "perplexity",
    "predict",
    "resolve_device",
    "score_table",
    "summarize",
]
