from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))

from factory import build_family  # noqa: E402


@pytest.fixture
def one_thread() -> object:
    """torch on one thread for the test (bit-for-bit repeatable training and batching), then
    back to what it was: changing it at import made the whole run single-threaded."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def llama_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny Llama base + 3 fine-tunes (float32), fine-tunes sharded."""
    return build_family(tmp_path_factory.mktemp("llama"), "llama", shard="20KB")


@pytest.fixture(scope="session")
def gpt2_family(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny GPT-2 base + 2 fine-tunes in bfloat16."""
    return build_family(tmp_path_factory.mktemp("gpt2"), "gpt2", n=2, dtype=torch.bfloat16)
