"""``fusion-ui deltas BASE FT1 [FT2 …]``: where fine-tunes changed their base, and DARE's outlook.

Prints each fine-tune's DARE verdict and, with ``--html``, writes a self-contained report
(figures and tables, plotly.js inline) that opens offline in any browser.
"""

from __future__ import annotations

import argparse
import sys

from tqdm import tqdm

from fusion_ui.progress import Progress


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "deltas",
        help="analyse task vectors (fine-tune − base): histograms, per-layer maps, DARE verdict",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("base", metavar="BASE", help="base model: folder or hub id")
    p.add_argument("finetunes", metavar="FT", nargs="+", help="fine-tuned models of BASE")
    p.add_argument("--html", metavar="PATH", help="write a self-contained HTML report here")
    p.add_argument("--label", action="append", metavar="NAME",
                   help="short name per fine-tune, in order (default: folder names)")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda:0, …")
    p.add_argument("--drop-rate", type=float, default=0.9,
                   help="drop rate of the DARE preview in the HTML report (default 0.9)")
    p.add_argument("--seed", type=int, default=0, help="seed of the DARE preview (default 0)")
    p.add_argument("--preview-tensor", action="append", metavar="NAME",
                   help="tensor(s) to preview DARE on (default: the one most at risk)")
    p.add_argument("--no-preview", action="store_true", help="leave the DARE preview out")
    p.add_argument("--no-cache", action="store_true", help="analyse again even if cached")
    p.add_argument("--cache-dir", metavar="DIR", help="where reports are cached "
                   "(default ~/.cache/fusion_ui/deltas)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusion_ui.deltas import analyze_deltas, dare_preview
    from fusion_ui.deltas.preview import default_preview_tensor
    from fusion_ui.figures import write_html_report

    bar = None if args.quiet else tqdm(total=0, unit="tensor", desc="deltas", file=sys.stderr)

    def on_progress(p: Progress) -> None:
        if bar is not None:
            bar.total = p.total
            bar.n = p.done
            bar.set_postfix_str(p.message[-40:], refresh=False)
            bar.refresh()

    try:
        report = analyze_deltas(
            args.base,
            args.finetunes,
            labels=args.label,
            device=args.device,
            progress=on_progress,
            cache=not args.no_cache,
            cache_dir=args.cache_dir,
        )
    finally:
        if bar is not None:
            bar.close()
    for _, row in report.summary.iterrows():
        print(f"{row['model']}: {row['verdict'].upper()} — {row['reason']}")
        print(
            f"  median |δ| {row['median_abs']:.3g}, 99% below {row['p99_abs']:.3g}, max "
            f"{row['max_abs']:.3g}; above 0.002/0.005/0.01: {100 * row['share_above_0.002']:.2f}% / "
            f"{100 * row['share_above_0.005']:.2f}% / {100 * row['share_above_0.01']:.2f}%; "
            f"‖δ‖/‖θ0‖ {row['rel_norm']:.3g}"
        )
    for _, row in report.pairs.iterrows():
        print(f"{row['model_a']} vs {row['model_b']}: cosine {row['cosine']:.3f}, "
              f"sign conflicts {100 * row['sign_conflict']:.1f}% of elements")
    if args.html:
        previews = []
        if not args.no_preview:
            for k, (model, ref) in enumerate(zip(report.models, report.refs, strict=True)):
                names = args.preview_tensor or [default_preview_tensor(report.tensors, model)]
                previews.append(
                    dare_preview(args.base, ref, names, drop_rate=args.drop_rate, seed=args.seed,
                                 model_index=k, device=args.device)
                )
        path = write_html_report(report, args.html, previews=previews)
        print(f"report written to {path}")
    return 0
