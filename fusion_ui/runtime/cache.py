"""Loaded models kept in memory under a byte budget; the least recently used go first."""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from fusion_ui.errors import ModelSourceError


@dataclass
class LoadedModel:
    """A model in memory and what it takes."""

    model: torch.nn.Module
    tokenizer: Any
    nbytes: int
    source: str  # the folder or hub id it was loaded from
    recipe_yaml: str | None = None  # for merge previews: the recipe merged into it


class ModelCache:
    """Loaded models under a byte budget; the least recently used go first."""

    def __init__(self, budget_bytes: int) -> None:
        self.budget_bytes = budget_bytes
        self._items: OrderedDict[str, LoadedModel] = OrderedDict()
        self._lock = threading.Lock()

    @property
    def used_bytes(self) -> int:
        return sum(m.nbytes for m in self._items.values())

    def keys(self) -> list[str]:
        return list(self._items)

    def peek(self, key: str) -> LoadedModel | None:
        with self._lock:
            item = self._items.get(key)
            if item is not None:
                self._items.move_to_end(key)
            return item

    def get(self, key: str, nbytes: int, load: Callable[[], LoadedModel]) -> LoadedModel:
        """The cached model, or ``load()`` after evicting enough older ones."""
        item = self.peek(key)
        if item is not None:
            return item
        if nbytes > self.budget_bytes:
            raise ModelSourceError(
                f"{key} needs about {nbytes / 2**30:.2f} GiB in memory, more than the app's "
                f"budget of {self.budget_bytes / 2**30:.2f} GiB; restart with a larger "
                "--memory-budget or pick smaller models"
            )
        self.make_room(nbytes)
        item = load()
        with self._lock:
            self._items[key] = item
        return item

    def make_room(self, nbytes: int) -> None:
        with self._lock:
            while self._items and self.used_bytes + nbytes > self.budget_bytes:
                self._items.popitem(last=False)

    def discard(self, key: str) -> None:
        with self._lock:
            self._items.pop(key, None)


def default_memory_budget() -> int:
    """Half the machine's RAM: room for the models with the OS and the browser beside them."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") * 0.5)
    except (ValueError, OSError, AttributeError):
        return 8 * 2**30


__all__ = ["LoadedModel", "ModelCache", "default_memory_budget"]
