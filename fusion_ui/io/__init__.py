"""Reading models lazily and writing merged checkpoints."""

from fusion_ui.io.checkpoint import Checkpoint, TensorInfo
from fusion_ui.io.source import ModelSource, resolve_model

__all__ = ["Checkpoint", "ModelSource", "TensorInfo", "resolve_model"]
