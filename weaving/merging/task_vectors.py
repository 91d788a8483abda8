"""Task vectors: validate a merge's inputs, compute theta_t - theta_pre, and read / write task vector files
(through `weaving.io`, where every tensor on disk is read and written).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch

from weaving.io.loader import as_source
from weaving.io.safetensors import load_state_dict
from weaving.io.source import StateDictLike, TensorSource, check_finite
from weaving.io.writer import save_state_dict


def validate_inputs(pretrained: TensorSource, task_vectors: Sequence[TensorSource]) -> list[str]:
    """Check that all task vectors share keys, shapes and floating dtypes with each other and the base.

    Returns the merged keys (those of the task vectors, in the first one's order). Keys present only in
    `pretrained` pass through the merge unchanged.
    """
    if len(task_vectors) == 0:
        raise ValueError("no task vectors given: pass at least one task vector or fine-tuned checkpoint")
    first = task_vectors[0]
    keys = first.keys()
    if not keys:
        raise ValueError(f"{first.label}: holds no tensors")
    key_set = set(keys)
    for tv in task_vectors[1:]:
        other = set(tv.keys())
        if other != key_set:
            missing = sorted(key_set - other)
            extra = sorted(other - key_set)
            detail = f"missing key {missing[0]!r}" if missing else f"unexpected key {extra[0]!r}"
            raise ValueError(
                f"{tv.label}: {detail} (compared with {first.label}); all task vectors must have the same keys"
            )
    for key in keys:
        shape = first.shape(key)
        for tv in task_vectors:
            if not tv.dtype(key).is_floating_point:
                raise ValueError(f"{tv.label}: tensor {key!r} has dtype {tv.dtype(key)}; task vectors must be floating point")
            if tv.shape(key) != shape:
                raise ValueError(
                    f"{tv.label}: tensor {key!r} has shape {list(tv.shape(key))} but {first.label} has {list(shape)}"
                )
        if key not in pretrained.keys():
            raise ValueError(f"{pretrained.label}: has no tensor {key!r}, which the task vectors change")
        if pretrained.shape(key) != shape:
            raise ValueError(
                f"{pretrained.label}: tensor {key!r} has shape {list(pretrained.shape(key))} but the task vectors have {list(shape)}"
            )
        if not pretrained.dtype(key).is_floating_point:
            raise ValueError(f"{pretrained.label}: tensor {key!r} has dtype {pretrained.dtype(key)}; merged tensors must be floating point")
    return keys


def save_task_vector(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write one task vector (theta_t - theta_pre) with its metadata, atomically."""
    return save_state_dict(path, tensors, metadata)


def load_task_vector(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a whole task vector (or any safetensors state dict) into memory."""
    return load_state_dict(path)


def task_vector_from_finetuned(pretrained: StateDictLike, finetuned: StateDictLike) -> dict[str, torch.Tensor]:
    """theta_t - theta_pre for every floating tensor of the fine-tuned checkpoint."""
    base = as_source(pretrained, "pretrained")
    tuned = as_source(finetuned, "finetuned")
    delta = {}
    for key in tuned.keys():
        if not tuned.dtype(key).is_floating_point:
            continue
        if key not in base.keys():
            raise ValueError(f"{base.label}: has no tensor {key!r}, which {tuned.label} has")
        if base.shape(key) != tuned.shape(key):
            raise ValueError(
                f"{tuned.label}: tensor {key!r} has shape {list(tuned.shape(key))} but {base.label} has {list(base.shape(key))}"
            )
        a = check_finite(tuned.get(key), tuned.label, key)
        b = check_finite(base.get(key), base.label, key)
        delta[key] = a - b.to(a.dtype)
    if not delta:
        raise ValueError(f"{tuned.label}: holds no floating-point tensors")
    return delta
