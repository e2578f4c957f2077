"""The Models tab's facade: named selections (the demo family, recent choices) and the
headers-only compatibility check of a selection."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from fusion_ui.app.context import AppContext
from fusion_ui.app.selection import Selection, make_selection
from fusion_ui.inspect import inspect_models


@dataclass(frozen=True)
class InspectResult:
    table: pd.DataFrame  # one row per model
    verdict: str  # compatible / compatible with adjustments / incompatible
    findings: list[dict[str, str]]  # severity, model, message


class ModelsFacade:
    def __init__(self, context: AppContext) -> None:
        self.context = context

    def presets(self) -> dict[str, Selection]:
        """Named selections: the demo family first, then recent choices."""
        out: dict[str, Selection] = {}
        if self.context.demo is not None:
            out["Built-in demo family"] = self.context.demo.selection()
            for skill in self.context.demo.forgetful:
                out[f"Demo: base + the {skill} expert that forgot (for LM-Cocktail)"] = (
                    self.context.demo.forgetful_selection(skill))
        for sel in self.context.history.recent():
            name = f"Recent: {Path(sel['base']).name} + " + ", ".join(sel["labels"])
            out.setdefault(name, sel)
        return out

    def select(self, base: str, finetunes: str) -> Selection:
        """A selection from the Models tab's boxes (a base, one fine-tune per line), within the bounds."""
        return make_selection(base, finetunes.splitlines(), limits=self.context.limits)

    def inspect(self, sel: Selection) -> InspectResult:
        """Headers-only compatibility check of the base and fine-tunes (fast, no weights read).

        A selection that can be merged becomes a recent choice.
        """
        report = inspect_models([sel["base"], *sel["models"]])
        table = report.table()
        table.insert(1, "label", ["base", *sel["labels"]])
        findings = [{"severity": f.severity, "model": f.model, "message": f.message} for f in report.findings]
        if report.verdict != "incompatible":
            self.context.history.remember(sel)
        return InspectResult(table, report.verdict, findings)


__all__ = ["InspectResult", "ModelsFacade"]
