"""Whole-model output formats (`weaving merge --format NAME`), looked up by name.

The merge engine knows tensors, not models: a package that knows a model family registers how to write
it whole (`weaving.formats` registers `open_clip` and `hf` for CLIP when it is imported, as `weaving merge`
does). An exporter's `check` runs before any tensor is read (format, model name, output); its `write`
publishes the merged state dict.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass(frozen=True)
class Exporter:
    """`check(output, model, overwrite=, inputs=) -> model name` (before work; the model it will write) and
    `write(output, state, model, recipe, overwrite=) -> path` (the merged state dict, published)."""

    name: str
    check: Callable[..., str]
    write: Callable[..., Path]


EXPORTERS: dict[str, Exporter] = {}


def register_exporter(exporter: Exporter) -> Exporter:
    EXPORTERS[exporter.name] = exporter
    return exporter


def get_exporter(name: str) -> Exporter:
    """The registered exporter `name`; an unknown name is a one-line error listing the known ones."""
    if name not in EXPORTERS:
        known = ", ".join(sorted(EXPORTERS)) or "none registered (import weaving.formats)"
        raise ValueError(f"unknown export format {name!r}; expected one of: {known}")
    return EXPORTERS[name]


def check_export(format: str, output: str | os.PathLike, model: str | None, *, overwrite: bool = False,
                 inputs: Iterable[str | os.PathLike] = ()) -> str:
    """The model `format` will write to `output`, everything checked before any tensor is read."""
    return get_exporter(format).check(output, model, overwrite=overwrite, inputs=list(inputs))


def export(format: str, output: str | os.PathLike, state: Mapping[str, torch.Tensor], model: str,
           recipe: Mapping[str, Any], *, overwrite: bool = False, extra_files: Callable[[Path], None] | None = None
           ) -> Path:
    """Publish `state` as a whole `model` in `format`; `extra_files(folder)` adds files to a folder output."""
    return get_exporter(format).write(output, state, model, recipe, overwrite=overwrite, extra_files=extra_files)
