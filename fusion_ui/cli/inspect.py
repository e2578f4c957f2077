"""``fusion-ui inspect BASE FT...``: architecture, dtype, sizes and a compatibility verdict."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "inspect",
        help="check that a base and its fine-tunes can be merged (headers only, no weights read)",
        description="Read configs and safetensors headers of a base and its fine-tunes, show "
        "their architecture, dtype, parameters and tensor counts, and report every mismatch.",
    )
    p.add_argument("base", help="base model: folder or hub id (org/name[@revision])")
    p.add_argument("models", nargs="*", metavar="MODEL", help="fine-tunes of the base")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fusion_ui.inspect import inspect_models  # torch loads here, not for `fusion-ui --help`

    report = inspect_models([args.base, *args.models])
    print(report.format())
    return 0 if report.verdict != "incompatible" else 1
