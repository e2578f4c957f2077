"""Endpoints for scripts (``gradio_client``), beside the events the page's controls fire.

The Merge and Export buttons read the whole Merge-tab form; a script has a recipe instead.
These endpoints take the recipe YAML and plain options, run the same engine jobs as the
buttons for the caller's session, and answer once the job has ended (``/stop`` cancels it)::

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/")
    c.predict(base, "ft1\\nft2", api_name="/load_models")
    c.predict(open("recipe.yaml").read(), api_name="/merge_recipe")
    c.predict(open("recipe.yaml").read(), "my-merge", api_name="/export_recipe")
"""

from __future__ import annotations

import gradio as gr

from fusion_ui.app import Engine, parse_recipe
from fusion_ui.ui.shared import JOB_EVENT, session_of, user_errors


def register(engine: Engine) -> None:
    """Add the scripting endpoints to the Blocks being built."""

    @user_errors
    def merge_recipe(recipe: str, allow_large_deltas: bool = False, request: gr.Request = None) -> str:  # type: ignore[assignment]
        """Merge a recipe (YAML) into this session's preview model; returns a one-line summary."""
        result = engine.merges.merge(session_of(request), parse_recipe(recipe), allow_large_deltas=allow_large_deltas)
        warn = "".join(f"; warning: {w}" for w in result.warnings[:6])
        return f"Merged {result.tensors} tensors in {result.seconds:.1f} s{warn}"

    @user_errors
    def export_recipe(
        recipe: str,
        folder: str,
        dtype: str = "",
        max_shard_size: str = "2GB",
        tokenizer_source: str = "base",
        write_mergekit: bool = True,
        replace: bool = False,
        allow_large_deltas: bool = False,
        request: gr.Request = None,  # type: ignore[assignment]
    ) -> dict:
        """Export a recipe (YAML) to ``folder`` under the export root; returns what was written."""
        s = engine.exports.export(
            session_of(request), parse_recipe(recipe), folder, dtype=dtype or None, max_shard_size=max_shard_size,
            tokenizer_source=tokenizer_source, write_mergekit=write_mergekit, force=replace,
            allow_large_deltas=allow_large_deltas,
        )
        return {"folder": s.path, "files": s.files, "size_bytes": s.size_bytes, "seconds": s.seconds,
                "warnings": s.warnings, "recipe": s.recipe_yaml, "mergekit": s.mergekit_yaml or ""}

    concurrency = {k: v for k, v in JOB_EVENT.items() if k != "show_progress"}
    gr.api(merge_recipe, api_name="merge_recipe", **concurrency)
    gr.api(export_recipe, api_name="export_recipe", **concurrency)
