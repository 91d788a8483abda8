"""Checkpoint formats in and out: task_vectors-lineage pickles (read without running them), Hugging Face
CLIP folders and hub ids, open_clip state dicts; `weaving import` and full-checkpoint export.

The names below are imported on first use, so that reading safetensors shards (`weaving.formats.sharded`,
used by every merge) does not import open_clip.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "weaving.formats.checkpoint",
    "Checkpoint": "weaving.formats.checkpoint",
    "read_checkpoint": "weaving.formats.checkpoint",
    "resolve_model": "weaving.formats.checkpoint",
    "UnsafePickleError": "weaving.formats.torch_pickle",
    "read_torch_file": "weaving.formats.torch_pickle",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'weaving.formats' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
