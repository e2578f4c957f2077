"""Every frozen-LM method of the package in one list, each with its label: what a front end
offers (the app's method choice, ``fusion-ui frozen train KIND``) is drawn from here.

:data:`~fusion_ui.frozen.prompts.KINDS` stays the list of *prompt* kinds (what a
``PromptConfig`` may be); this list adds the recursive LMs beside them. No torch at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

from fusion_ui.errors import RecipeError

MethodKind = Literal["idpt", "prompt", "connector", "recursive"]
ArtefactKind = Literal["prompt", "connector", "recursive"]  # as recursion_artefact.ARTEFACT_KINDS


@dataclass(frozen=True)
class FrozenMethod:
    """One way of training a small part beside a frozen LM."""

    kind: MethodKind  # what `fusion-ui frozen train KIND` takes
    label: str  # how a method choice names it
    name: str  # how a comparison names the frozen LM with it: "frozen LM + <name>"
    artefact: ArtefactKind  # the folder it writes (prompt.json, connector.json, recursive.json)
    trains: str  # what learns, as in "1,024 parameters (<trains>)"
    passes: int  # passes through the frozen LM per answer
    perplexity: bool  # whether answer perplexity is defined (textual recursion must generate)

    @property
    def recursive(self) -> bool:
        """A recursive LM: two passes through the same frozen LM."""
        return self.passes > 1


FROZEN_METHODS: tuple[FrozenMethod, ...] = (
    FrozenMethod("idpt", "ID-PT (input-dependent prompt)", "ID-PT (input-dependent prompt)",
                 "prompt", "the prompt generator", 1, True),
    FrozenMethod("prompt", "plain prompt tuning", "plain prompt tuning",
                 "prompt", "the prompt", 1, True),
    FrozenMethod("connector", "recursive LM, neural: connector",
                 "connector (neural recursion, 2 passes)", "connector", "the connector", 2, True),
    FrozenMethod("recursive", "recursive LM, textual", "textual recursion (2 passes)",
                 "recursive", "pass 2's prompt", 2, False),
)  # fmt: skip
METHOD_KINDS: tuple[MethodKind, ...] = tuple(m.kind for m in FROZEN_METHODS)


def frozen_method(kind: str) -> FrozenMethod:
    """The method of ``kind``; an unknown one is an error naming the known ones."""
    for method in FROZEN_METHODS:
        if method.kind == kind:
            return method
    raise RecipeError(f"unknown frozen-LM method {kind!r}; use one of {', '.join(METHOD_KINDS)}")


def method_of_folder(folder: str | os.PathLike[str]) -> FrozenMethod:
    """The method that wrote ``folder`` (a prompt's kind is read from its ``prompt.json``)."""
    from fusion_ui.frozen.artefact import read_prompt_info
    from fusion_ui.frozen.recursion_artefact import artefact_kind

    kind = artefact_kind(folder)
    return frozen_method(read_prompt_info(folder).prompt.kind if kind == "prompt" else kind)


__all__ = [
    "FROZEN_METHODS",
    "METHOD_KINDS",
    "FrozenMethod",
    "MethodKind",
    "frozen_method",
    "method_of_folder",
]
