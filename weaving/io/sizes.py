"""Sizes of tensors on disk, in bytes: the one place that turns shapes and dtypes into byte counts."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable

import torch

Layout = list[tuple[str, tuple[int, ...], torch.dtype]]  # (name, shape, dtype) of each tensor, in file order


def nbytes(shape: Iterable[int], dtype: torch.dtype) -> int:
    """Bytes of a tensor of `shape` and `dtype` (no tensor is built)."""
    return math.prod(shape) * dtype.itemsize


def layout_bytes(layout: Iterable[tuple[str, tuple[int, ...], torch.dtype]]) -> int:
    """Bytes of every tensor of a layout together (a file's data section, an output's size on disk)."""
    return sum(nbytes(shape, dtype) for _, shape, dtype in layout)


def parse_size(size: int | str | None) -> int | None:
    """Bytes from 1000000, '500MB', '5GB', '2GiB' (None stays None: no sharding)."""
    if size is None:
        return None
    if isinstance(size, bool):
        raise ValueError(f"shard size must be a number of bytes or like '5GB', got {size!r}")
    if isinstance(size, (int, float)):
        value = float(size)
    else:
        match = re.fullmatch(r"\s*([0-9.]+)\s*([KMGT]i?B|B)?\s*", str(size), re.IGNORECASE)
        if not match:
            raise ValueError(f"shard size {size!r}: expected bytes or a size like '500MB', '5GB', '2GiB'")
        unit = (match.group(2) or "B").upper()
        scale = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
                 "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}[unit]
        try:
            value = float(match.group(1)) * scale
        except ValueError:
            raise ValueError(f"shard size {size!r}: expected bytes or a size like '500MB', '5GB', '2GiB'") from None
    if not value >= 1:
        raise ValueError(f"shard size {size!r} must be at least one byte")
    return int(value)


def plan_shards(layout: Layout, shard_size: int | None) -> list[Layout]:
    """Consecutive tensors grouped into shards of at most `shard_size` bytes (a larger tensor gets its own)."""
    if shard_size is None:
        return [list(layout)]
    shards: list[Layout] = [[]]
    used = 0
    for entry in layout:
        size = nbytes(entry[1], entry[2])
        if shards[-1] and used + size > shard_size:
            shards.append([])
            used = 0
        shards[-1].append(entry)
        used += size
    return shards
