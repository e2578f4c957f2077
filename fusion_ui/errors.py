"""Errors fusion_ui raises on purpose, each with a message a user can act on.

    FusionError
    ├── ModelSourceError        a model cannot be found or opened (folder, hub id, shard)
    │   └── UnsafeCheckpointError   a pickle checkpoint that needs full unpickling
    ├── IncompatibleModelsError     names/shapes/architectures that cannot be merged
    ├── RecipeError                 a recipe or parameter that is invalid
    ├── TensorValueError            NaN/inf in an input tensor
    ├── ExportError                 output folder exists, not enough disk space, write failure
    └── CancelledError              the user cancelled a long operation

Every class derives from ``FusionError`` so callers (CLI, UI) can catch one type
and show its message; unexpected exceptions are bugs and keep their tracebacks.
"""

from __future__ import annotations


class FusionError(Exception):
    """Base class of every error fusion_ui raises deliberately."""


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


class CancelledError(FusionError):
    """A long operation was cancelled by the user; nothing was left half-written."""
