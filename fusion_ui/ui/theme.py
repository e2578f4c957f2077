"""The app's look: a Gradio theme with system fonts only (nothing fetched), CSS and logo shipped as package data."""

from __future__ import annotations

import gradio as gr

from fusion_ui.resources import ui_text

SYSTEM_SANS = ("system-ui", "-apple-system", "Segoe UI", "Roboto", "Ubuntu", "DejaVu Sans", "sans-serif")
SYSTEM_MONO = ("ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "DejaVu Sans Mono", "monospace")

# Toggles Gradio's dark mode in place (Gradio styles everything under `.dark`), remembered per browser.
TOGGLE_DARK_JS = """() => {
  const dark = !document.body.classList.contains('dark');
  document.body.classList.toggle('dark', dark);
  try { localStorage.setItem('fusion-ui-theme', dark ? 'dark' : 'light'); } catch (e) {}
}"""
RESTORE_THEME_JS = """() => {
  let mode = null;
  try { mode = localStorage.getItem('fusion-ui-theme'); } catch (e) {}
  const url = new URL(window.location.href).searchParams.get('__theme');
  if (url) mode = url;
  if (mode) document.body.classList.toggle('dark', mode === 'dark');
}"""


def fusion_theme() -> gr.themes.Base:
    """Indigo and teal on slate; every font is the system's so the app works offline."""
    theme = gr.themes.Base(
        primary_hue=gr.themes.colors.indigo,
        secondary_hue=gr.themes.colors.teal,
        neutral_hue=gr.themes.colors.slate,
        radius_size=gr.themes.sizes.radius_md,
        font=SYSTEM_SANS,
        font_mono=SYSTEM_MONO,
    )
    return theme.set(
        body_background_fill="*neutral_50",
        body_background_fill_dark="*neutral_950",
        block_background_fill="white",
        block_background_fill_dark="*neutral_900",
        block_border_width="1px",
        block_shadow="0 1px 2px rgba(15, 23, 42, 0.06)",
        block_shadow_dark="none",
        block_label_text_weight="600",
        button_primary_background_fill="linear-gradient(90deg, *primary_600, *secondary_600)",
        button_primary_background_fill_hover="linear-gradient(90deg, *primary_500, *secondary_500)",
        button_primary_background_fill_dark="linear-gradient(90deg, *primary_500, *secondary_600)",
        button_primary_text_color="white",
        slider_color="*primary_500",
        slider_color_dark="*primary_400",
    )


def css() -> str:
    """The app's stylesheet (``fusion_ui/assets/ui/app.css``)."""
    return ui_text("app.css")


def logo_svg() -> str:
    """The header's logo (``fusion_ui/assets/ui/logo.svg``)."""
    return ui_text("logo.svg")
