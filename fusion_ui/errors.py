"""Errors fusion_ui raises on purpose, each with a message a user can act on.

    FusionError
    ├── ModelSourceError        a model cannot be found or opened (folder, hub id, shard)
    │   └── UnsafeCheckpointError   a pickle checkpoint that needs full unpickling
    ├── IncompatibleModelsError     names/shapes/architectures that cannot be merged
    ├── RecipeError                 a recipe or parameter that is invalid
    ├── TensorValueError            NaN/inf in an input tensor
    ├── ExportError                 output folder exists, not enough disk space, write failure
    ├── InputError                  an input past the app's bounds (prompt, models, tokens, seed)
    ├── DeviceError                 a compute device that is not there (CUDA without a GPU)
    ├── GenerationError             a model failed while generating text
    └── CancelledError              the user cancelled a long operation

Every class derives from ``FusionError`` so callers (CLI, UI) can catch one type
and show its message; unexpected exceptions are bugs and keep their tracebacks.

Where the fix is a switch that each front end spells differently (``--force`` on the command
line, a "replace" checkbox in the app, ``force=True`` in Python), the error carries one fix per
front end and each front end asks for its own: ``exc.message_for("app")``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

Frontend = Literal["cli", "app", "python"]


class FusionError(Exception):
    """Base class of every error fusion_ui raises deliberately.

    ``fixes`` maps a front end to the sentence that names the fix there; ``str(exc)`` is the
    message with the Python fix (or the command line's, when there is no Python one).
    """

    def __init__(self, message: str = "", *, fixes: Mapping[Frontend, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fixes: dict[str, str] = dict(fixes or {})

    def message_for(self, frontend: Frontend) -> str:
        """The message as ``frontend`` should show it: with that front end's fix, if any."""
        fix = self.fixes.get(frontend)
        if fix is None and frontend == "python":
            fix = self.fixes.get("cli")
        return f"{self.message}; {fix}" if fix else self.message

    def __str__(self) -> str:
        return self.message_for("python")


class ModelSourceError(FusionError):
    """A model folder, hub id or shard cannot be found or read."""


class UnsafeCheckpointError(ModelSourceError):
    """A pickle checkpoint would need arbitrary code execution to load."""


class IncompatibleModelsError(FusionError):
    """The models cannot be merged tensor by tensor (names, shapes, architecture)."""


class RecipeError(FusionError):
    """A recipe, method name or parameter value is invalid."""


class TensorValueError(FusionError):
    """An input tensor holds NaN or infinite values."""


class ExportError(FusionError):
    """The merged checkpoint cannot be written where asked."""


class InputError(FusionError):
    """An input outside what the app accepts: too long a prompt, too many models or tokens."""


class DeviceError(FusionError):
    """The compute device asked for is unknown or not available."""


class GenerationError(FusionError):
    """A model failed while generating (its own error is chained)."""


class CancelledError(FusionError):
    """A long operation was cancelled by the user; nothing was left half-written."""
