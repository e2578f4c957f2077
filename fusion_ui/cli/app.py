"""``fusion-ui app`` (and ``python app.py``): serve the browser app, on the built-in demo family.

The options are declared once, here: :func:`register` adds them to the ``fusion-ui app``
sub-command and :func:`main` to the stand-alone parser of ``python app.py``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence

DESCRIPTION = "fusion_ui: point-and-click model merging in the browser"

# What the app process needs before the heavy imports; a value you set yourself wins.
APP_ENVIRONMENT = {
    "GRADIO_ANALYTICS_ENABLED": "False",
    # An interactive app: torch's OpenMP threads sleep between operations instead of spinning,
    # leaving the cores to the browser and the server (measured on 2 cores: the first Deltas
    # analysis 2.3-2.7 s instead of 3.1-4.1 s). OpenMP reads it when torch loads, so it counts
    # only when set before torch is imported: `app.py` sets it first.
    "OMP_WAIT_POLICY": "PASSIVE",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The app's options, shared by ``fusion-ui app`` and ``python app.py``."""
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link (needs --auth)")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (required beyond localhost)")
    parser.add_argument("--demo-dir", default=None, metavar="DIR",
                        help="the demo family folder (default: the one shipped in the package)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--memory-budget", default=None, help="models kept loaded, e.g. 8GB (default: half the RAM)")
    parser.add_argument("--export-root", default=None, metavar="DIR",
                        help="the app writes exports only below this folder (default: ~/fusion_ui/exports)")
    parser.add_argument("--ray", default=None, metavar="ADDRESS",
                        help="let the Sweep tab run cells on this Ray cluster: local, auto or an address "
                             "(HEAD:6379, ray://HEAD:10001); needs the ray extra")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("app", help="serve the browser app (on the built-in demo family)",
                                   description=DESCRIPTION)
    add_arguments(parser)
    parser.set_defaults(func=lambda args: run_app(args, parser.error))


def run_app(args: argparse.Namespace, refuse: Callable[[str], object]) -> int:
    """Build the app on an engine and serve it until Ctrl-C; ``refuse`` reports a bad option."""
    for key, value in APP_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    from fusion_ui.app import Engine
    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.ui import build_app, launch, listen_problem

    if args.ray:  # fail now, not at the first sweep
        from fusion_ui.sweep.ray_executor import import_ray

        import_ray()
    problem = listen_problem(args.host, args.share, args.auth)
    if problem:
        refuse(problem)  # argparse's error: usage, the message, exit code 2
        return 2
    engine = Engine(demo_dir=args.demo_dir or DEMO_DIR, device=args.device, memory_budget=args.memory_budget,
                    export_root=args.export_root, ray=args.ray)
    try:
        launch(build_app(engine), host=args.host, port=args.port, share=args.share, auth=args.auth,
               inbrowser=not args.no_browser)
    finally:
        engine.close()  # the server has stopped (Ctrl-C, SIGTERM): cancel jobs, stop the workers
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python app.py``: the same options and behaviour as ``fusion-ui app``."""
    parser = argparse.ArgumentParser(description=DESCRIPTION)
    add_arguments(parser)
    return run_app(parser.parse_args(argv), parser.error)
