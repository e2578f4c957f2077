"""Open the fusion_ui app in the browser: ``python app.py`` is ``fusion-ui app`` (``--help``: options)."""

from fusion_ui.cli.app import main

if __name__ == "__main__":
    raise SystemExit(main())
