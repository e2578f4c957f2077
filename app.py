"""Open the fusion_ui app in the browser: ``python app.py`` (the built-in demo family, offline)."""

from __future__ import annotations

import argparse
import os


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="fusion_ui: point-and-click model merging in the browser")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default: this machine only)")
    parser.add_argument("--port", type=int, default=None, help="port (default: 7860 or the next free one)")
    parser.add_argument("--share", action="store_true", help="also open a public Gradio link (needs --auth)")
    parser.add_argument("--auth", metavar="USER:PASS", help="require this login (required beyond localhost)")
    parser.add_argument("--demo-dir", default=None, help="the demo family folder (default: assets/demo)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda[:N]")
    parser.add_argument("--memory-budget", default=None, help="models kept loaded, e.g. 8GB (default: half the RAM)")
    parser.add_argument("--export-root", default=None, metavar="DIR",
                        help="the app writes exports only below this folder (default: ~/fusion_ui/exports)")
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    args = parser.parse_args(argv)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    # An interactive app: torch's OpenMP threads sleep between operations instead of spinning,
    # leaving the cores to the browser and the server (measured on 2 cores: the first Deltas
    # analysis 2.3-2.7 s instead of 3.1-4.1 s). Set before torch is imported; yours wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.engine import Engine
    from fusion_ui.ui import build_app, launch, listen_problem

    problem = listen_problem(args.host, args.share, args.auth)
    if problem:
        parser.error(problem)
    engine = Engine(demo_dir=args.demo_dir or DEMO_DIR, device=args.device, memory_budget=args.memory_budget,
                    export_root=args.export_root)
    launch(build_app(engine), host=args.host, port=args.port, share=args.share, auth=args.auth,
           inbrowser=not args.no_browser)


if __name__ == "__main__":
    main()
