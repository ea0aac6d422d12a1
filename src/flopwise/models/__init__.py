"""Model architecture only: no parallelism, no training logic."""

from flopwise.models.config import PRESETS, ModelConfig, get_preset, preset_names
from flopwise.models.transformer import KVCache, Transformer, document_segments

__all__ = [
    "PRESETS",
    "KVCache",
    "ModelConfig",
    "Transformer",
    "document_segments",
    "get_preset",
    "preset_names",
]
