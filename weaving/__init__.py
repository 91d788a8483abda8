"""weaving: data-free model merging and Weight Weaving for CLIP task vectors.

    import weaving
    merged = weaving.merge(pretrained, task_vectors, "ties", lam=1.0, k=0.2)
    woven = weaving.weave(pretrained, task_vectors, "ties", "0.1:1.5:0.1", pooling="mean")

The names below are imported on first use (from weaving.merging), so `import weaving` (and
`weaving --version`) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = ("METHODS", "POOLINGS", "load_task_vector", "merge", "parse_lambdas", "read_metadata", "run_recipe",
            "save_task_vector", "weave")

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'weaving' has no attribute {name!r}")
    return getattr(importlib.import_module("weaving.merging"), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
