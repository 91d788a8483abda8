"""The task_vectors lineage's pickled modules, read as records (see `weaving.io.torch_pickle`).

Ilharco et al.'s task_vectors code (and the TSV / ISO-C repositories that reuse its checkpoints) saves
whole modules with `torch.save`: `zeroshot.pt` / `finetuned.pt` hold an `ImageEncoder` whose open_clip CLIP
is its `model` attribute (the text transformer deleted), and `head_<task>.pt` a `ClassificationHead`
(a `torch.nn.Linear` with `normalize` and the zero-shot weight). The classes are never imported: this
module walks the records' `_parameters`, `_buffers` and `_modules` the way `nn.Module.state_dict` would.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from weaving.io.torch_pickle import ObjectRecord

QUICK_GELU = "QuickGELU"


def _module_dict(record: Any) -> dict | None:
    """The `__dict__` a pickled nn.Module was rebuilt with, or None when `record` is not one."""
    if not isinstance(record, ObjectRecord):
        return None
    state = record.state
    if isinstance(state, tuple) and state and isinstance(state[0], Mapping):
        state = state[0]
    if isinstance(state, Mapping) and "_parameters" in state and "_modules" in state:
        return dict(state)
    return None


def is_module_record(obj: Any) -> bool:
    return _module_dict(obj) is not None


@dataclass
class ModuleTree:
    """What a pickled module holds: its state dict and the classes / attention heads of its submodules."""

    state_dict: dict[str, torch.Tensor]
    classes: dict[str, str] = field(default_factory=dict)  # submodule path -> class qualname
    num_heads: dict[str, int] = field(default_factory=dict)  # attention submodule path -> heads
    root_class: str = ""


def read_module(record: Any) -> ModuleTree:
    """The state dict of a pickled module record (names as `nn.Module.state_dict` gives them)."""
    if _module_dict(record) is None:
        raise ValueError("not a pickled torch module")
    tree = ModuleTree({}, root_class=record.cls.qualname)
    _walk(record, "", tree)
    return tree


def _walk(record: ObjectRecord, prefix: str, tree: ModuleTree) -> None:
    state = _module_dict(record)
    tree.classes[prefix.rstrip(".")] = record.cls.qualname
    if "num_heads" in state and isinstance(state["num_heads"], int):
        tree.num_heads[prefix.rstrip(".")] = state["num_heads"]
    skip = set(state.get("_non_persistent_buffers_set") or ())
    for kind in ("_parameters", "_buffers"):
        for name, value in dict(state.get(kind) or {}).items():
            if value is None or (kind == "_buffers" and name in skip):
                continue
            if not isinstance(value, torch.Tensor):
                raise ValueError(f"{prefix}{name} is a {type(value).__name__} record, not a tensor; "
                                 "the file uses a tensor type weaving cannot read")
            tree.state_dict[f"{prefix}{name}"] = value
    for name, child in dict(state.get("_modules") or {}).items():
        if child is not None and _module_dict(child) is not None:
            _walk(child, f"{prefix}{name}.", tree)


def uses_quick_gelu(tree: ModuleTree) -> bool | None:
    """Whether the pickled model's MLP activations are QuickGELU (None: no activation module found)."""
    activations = [cls for path, cls in tree.classes.items() if path.endswith(("mlp.gelu", "mlp.act"))]
    if not activations:
        return None
    return all(cls.rsplit(".", 1)[-1] == QUICK_GELU for cls in activations)


def read_head(obj: Any, label: str) -> torch.Tensor:
    """The weight [classes, dim] of a lineage `head_<task>.pt` (a normalizing Linear with zero bias)."""
    if isinstance(obj, Mapping) and isinstance(obj.get("weight"), torch.Tensor):
        state, normalize = dict(obj), True
    elif is_module_record(obj):
        state = read_module(obj).state_dict
        normalize = _module_dict(obj).get("normalize", True)
    else:
        raise ValueError(f"{label}: not a classification head (expected a pickled ClassificationHead or a "
                         "state dict with 'weight')")
    weight = state.get("weight")
    if not isinstance(weight, torch.Tensor) or weight.ndim != 2:
        raise ValueError(f"{label}: a classification head needs a 2-D 'weight' [classes, dim]")
    bias = state.get("bias")
    if bias is not None and bool(bias.abs().max() > 0):
        raise ValueError(f"{label}: the head has a non-zero bias, which weaving's heads (normalize, then "
                         "weight) cannot represent")
    if normalize is not True:
        raise ValueError(f"{label}: the head does not normalize image features (normalize={normalize!r}); "
                         "weaving's heads always do")
    return weight.float()
