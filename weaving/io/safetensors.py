"""The one safetensors reader and the streamed safetensors writer.

Every safetensors input (`--pretrained`, `--finetuned`, `--task_vectors`, recipes, Hugging Face shards, run
files) is read by `SafetensorsFile`, which checks the header before any tensor is read: a JSON object of
at most 100 MiB; string-to-string `__metadata__`; per tensor a known dtype, a shape of non-negative whole
numbers and `data_offsets` [begin, end] of non-negative whole numbers with end - begin equal to the
tensor's size, inside the data section and overlapping no other tensor. A file that breaks any of these is
a one-line error, never a traceback or a tensor read from outside its bytes.

`SafetensorsStream` writes a file tensor by tensor: the header first (names, shapes and dtypes are known
before a merge), then each tensor's bytes as soon as it is made.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from weaving.io.sizes import Layout, nbytes
from weaving.io.source import TensorSource

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": getattr(torch, "float8_e4m3fn", None), "F8_E5M2": getattr(torch, "float8_e5m2", None),
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}
DTYPES = {name: dtype for name, dtype in DTYPES.items() if dtype is not None}
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
MAX_HEADER = 100 * 2**20  # safetensors' own limit on the JSON header


def _whole(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def read_header(path: Path) -> tuple[int, dict[str, str], dict[str, tuple[torch.dtype, tuple[int, ...], int, int]]]:
    """(data start, metadata, {name: (dtype, shape, begin, end)}) of a safetensors file, fully checked (see
    the module docstring); any problem is a ValueError naming it."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            raise ValueError("shorter than a safetensors header")
        (length,) = struct.unpack("<Q", head)
        if length > min(size - 8, MAX_HEADER):
            raise ValueError("its header length points past the end of the file")
        try:
            header = json.loads(handle.read(length))
        except (UnicodeDecodeError, json.JSONDecodeError):
            raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise ValueError("its __metadata__ is not a mapping of strings to strings")
    start, data = 8 + length, size - 8 - length
    entries = {}
    for key, entry in header.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("dtype"), str):
            raise ValueError(f"tensor {key!r} has no dtype")
        dtype = DTYPES.get(entry["dtype"])
        if dtype is None:
            raise ValueError(f"tensor {key!r} has dtype {entry['dtype']!r}, which weaving does not read")
        shape, offsets = entry.get("shape"), entry.get("data_offsets")
        if not isinstance(shape, list) or not all(_whole(s) for s in shape):
            raise ValueError(f"tensor {key!r} has shape {shape!r}, not a list of non-negative whole numbers")
        if not isinstance(offsets, list) or len(offsets) != 2 or not all(_whole(o) for o in offsets):
            raise ValueError(f"tensor {key!r} has data_offsets {offsets!r}, not two non-negative whole numbers")
        begin, end = offsets
        if end - begin != nbytes(shape, dtype) or end > data:
            raise ValueError(f"tensor {key!r} has inconsistent offsets: {offsets} do not hold its "
                             f"{str(dtype).removeprefix('torch.')} {shape} inside the file's {data} data bytes")
        entries[key] = (dtype, tuple(shape), begin, end)
    spans = sorted((begin, end, key) for key, (_, _, begin, end) in entries.items() if end > begin)
    for (_, end, first), (begin, _, second) in zip(spans, spans[1:]):
        if begin < end:
            raise ValueError(f"tensors {first!r} and {second!r} overlap in the file")
    return start, metadata, entries


class SafetensorsFile(TensorSource):
    """A safetensors file read with plain reads into fresh tensors, not through one memory map of the file.

    A memory map of the whole file keeps every page it touched in the process's resident memory until the
    file is closed, so streaming a model through mapped files makes the resident size grow to the inputs'
    size; reading each tensor's bytes with `readinto` keeps it at the tensors being merged (the OS page
    cache still serves repeated reads). `view` maps one tensor's bytes for as long as that tensor lives.
    """

    reads_into = True

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        path = Path(path)
        self.label = label or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a safetensors state dict)")
        try:
            start, self.metadata, entries = read_header(path)
        except (OSError, ValueError) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
        self.path = path
        self._shapes = {key: shape for key, (_, shape, _, _) in entries.items()}
        self._dtypes = {key: dtype for key, (dtype, _, _, _) in entries.items()}
        self._offsets = {key: start + begin for key, (_, _, begin, _) in entries.items()}

    def read_into(self, key: str, buffer: torch.Tensor) -> torch.Tensor:
        count = nbytes(self._shapes[key], self._dtypes[key])
        if count:
            target = memoryview(buffer.reshape(-1).view(torch.uint8).numpy()).cast("B")
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(self._offsets[key])
                done = 0
                while done < count:
                    read = handle.readinto(target[done:count])
                    if not read:
                        raise ValueError(f"{self.label}: cannot read tensor {key!r} (the file is truncated)")
                    done += read
        return buffer

    def get(self, key: str) -> torch.Tensor:
        return self.read_into(key, torch.empty(self._shapes[key], dtype=self._dtypes[key]))

    def view(self, key: str) -> torch.Tensor:
        """The tensor over a private memory map of its bytes: no copy (the pages are the OS cache's), and the
        mapping ends when the tensor is freed. For reading; a write only changes this process's copy."""
        shape, dtype, offset = self._shapes[key], self._dtypes[key], self._offsets[key]
        count = math.prod(shape)
        if count == 0:
            return torch.empty(shape, dtype=dtype)
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        try:
            with open(self.path, "rb") as handle:
                mapping = mmap.mmap(handle.fileno(), offset - start + count * dtype.itemsize, access=mmap.ACCESS_COPY,
                                    offset=start)
        except (OSError, ValueError):  # the file shrank (or went away) since it was opened
            raise ValueError(f"{self.label}: cannot read tensor {key!r} (the file is truncated)") from None
        return torch.frombuffer(mapping, dtype=dtype, count=count, offset=offset - start).view(shape)


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors file's header."""
    return dict(SafetensorsFile(path).metadata)


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, in memory."""
    source = SafetensorsFile(path)
    return {key: source.get(key) for key in source.keys()}


class SafetensorsStream:
    """A safetensors file written tensor by tensor: the header first (from the layout), then the data."""

    def __init__(self, path: str | os.PathLike, layout: Layout, metadata: Mapping[str, str] | None = None):
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for key, shape, dtype in layout:
            if dtype not in DTYPE_NAMES:
                raise ValueError(f"tensor {key!r}: dtype {dtype} cannot be stored in safetensors")
            size = nbytes(shape, dtype)
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
            offset += size
        text = json.dumps(header, separators=(",", ":")).encode()
        text += b" " * (-len(text) % 8)
        self.layout, self.position = layout, 0
        self.file = open(path, "wb")
        self.file.write(struct.pack("<Q", len(text)) + text)

    def write(self, key: str, tensor: torch.Tensor) -> None:
        if self.position >= len(self.layout) or self.layout[self.position][0] != key:
            raise RuntimeError(f"tensor {key!r} written out of the planned order")
        _, shape, dtype = self.layout[self.position]
        if tuple(tensor.shape) != tuple(shape) or tensor.dtype != dtype:
            raise RuntimeError(f"tensor {key!r}: {tensor.dtype} {list(tensor.shape)} does not match the plan")
        data = tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8)
        self.file.write(memoryview(data.numpy()))
        self.position += 1

    def close(self) -> None:
        self.file.close()
        if self.position != len(self.layout):
            raise RuntimeError(f"only {self.position} of {len(self.layout)} planned tensors were written")
