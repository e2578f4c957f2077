"""The output dtypes a merge can write: one list, for recipes, the command line and the app.

(No torch here: the command line builds its options from it without loading torch.)
"""

from __future__ import annotations

from typing import Literal

OUTPUT_DTYPES: tuple[str, ...] = ("float32", "float16", "bfloat16")
Dtype = Literal[OUTPUT_DTYPES]  # type: ignore[valid-type]  # Literal of the tuple's strings

__all__ = ["OUTPUT_DTYPES", "Dtype"]
