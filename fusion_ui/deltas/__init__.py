"""Delta analysis: where a fine-tune changed its base, by how much, and whether DARE will work.

Engine side only (no UI imports). Entry points::

    report = analyze_deltas(base, [ft1, ft2], progress=cb, cancel=token)   # cached on disk
    report.summary, report.tensors, report.groups, report.pairs, ...      # pandas tables
    preview = dare_preview(base, ft1, "model.layers.3.mlp.down_proj.weight", drop_rate=0.9)
"""

from fusion_ui.deltas.analysis import analyze_deltas
from fusion_ui.deltas.cache import default_cache_dir
from fusion_ui.deltas.preview import DarePreview, dare_preview
from fusion_ui.deltas.report import OUTSIDE_BLOCKS, DeltaReport
from fusion_ui.deltas.stats import THRESHOLDS, DeltaStats, share_column
from fusion_ui.deltas.verdict import VERDICTS, DareVerdict, dare_verdict

__all__ = [
    "OUTSIDE_BLOCKS",
    "THRESHOLDS",
    "VERDICTS",
    "DarePreview",
    "DareVerdict",
    "DeltaReport",
    "DeltaStats",
    "analyze_deltas",
    "dare_preview",
    "dare_verdict",
    "default_cache_dir",
    "share_column",
]
