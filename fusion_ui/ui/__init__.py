"""The browser app (Gradio). One module per tab; ``app.build_app`` assembles them.

Only this package imports gradio; it calls the engine through ``fusion_ui.app.Engine``, one facade per tab.
"""

from fusion_ui.ui.app import build_app, launch, listen_problem

__all__ = ["build_app", "launch", "listen_problem"]
