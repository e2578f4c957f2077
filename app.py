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
    parser.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    args = parser.parse_args(argv)

    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    from fusion_ui.demo import DEMO_DIR
    from fusion_ui.engine import Engine
    from fusion_ui.ui import build_app, launch, listen_problem

    problem = listen_problem(args.host, args.share, args.auth)
    if problem:
        parser.error(problem)
    engine = Engine(demo_dir=args.demo_dir or DEMO_DIR, device=args.device, memory_budget=args.memory_budget)
    launch(build_app(engine), host=args.host, port=args.port, share=args.share, auth=args.auth,
           inbrowser=not args.no_browser)


if __name__ == "__main__":
    main()
