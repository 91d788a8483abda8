"""CLIP checkpoints in and out: open_clip <-> Hugging Face names, task_vectors-lineage modules, `weaving
import` and full-checkpoint export. Tensors on disk are read and written by `weaving.io`.

The names below are imported on first use, so that importing the package does not import open_clip.
Importing it registers the whole-model formats `open_clip` and `hf` for `weaving merge --format`.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "FORMATS": "weaving.formats.checkpoint",
    "Checkpoint": "weaving.formats.checkpoint",
    "read_checkpoint": "weaving.formats.checkpoint",
    "resolve_model": "weaving.formats.checkpoint",
}

__all__ = sorted(_EXPORTS)

import weaving.formats.export  # noqa: E402,F401  (registers the --format exporters)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'weaving.formats' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
