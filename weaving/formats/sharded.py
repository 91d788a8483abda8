"""Hugging Face model folders and sharded safetensors checkpoints, in and out, one tensor at a time.

In: a `.safetensors` file, a `model.safetensors.index.json` (or the folder holding it) whose shards are
read lazily, a folder with `model.safetensors`, or `pytorch_model.bin` (single or sharded) read with
`torch.load(weights_only=True)`, which builds tensors without running code from the file. Every reader is
a `TensorSource`, so the merge engine never learns about formats.

Out: `save_streamed` writes tensors as an iterator makes them: each safetensors header is written first
(names, shapes and dtypes are known before the merge), then each tensor's bytes as soon as it is made, so
memory holds one tensor at a time whatever the model's size. A folder output gets shards of at most
`shard_size` bytes (`model-00001-of-00003.safetensors`, ...), `model.safetensors.index.json`, and the
base model's `config.json` and tokenizer files.
"""

from __future__ import annotations

import json
import math
import mmap
import os
import re
import shutil
import struct
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import torch

from weaving.atomic import atomic_write, folder_write_failure
from weaving.merging.task_vectors import _DTYPES, TensorSource

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
TORCH_FILE = "pytorch_model.bin"
WEIGHT_FILES = (INDEX_FILE, SINGLE_FILE, TORCH_INDEX_FILE, TORCH_FILE)
# Files a Hugging Face folder needs besides its weights; copied from the base model into a folder output.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
              "chat_template.jinja", "preprocessor_config.json")
SAFETENSORS_DTYPES = {dtype: name for name, dtype in _DTYPES.items() if dtype is not None}
HUB_ID = re.compile(r"^(hf-hub:)?[A-Za-z0-9][\w.-]*/[\w.-]+$")


# ------------------------------------------------------------------------------------------------- in
class SafetensorsFile(TensorSource):
    """A safetensors file read with plain reads into fresh tensors, not through one memory map of the file.

    A memory map of the whole file keeps every page it touched in the process's resident memory until the
    file is closed, so streaming a model through mapped files makes the resident size grow to the inputs'
    size; reading each tensor's bytes with `readinto` keeps it at the tensors being merged (the OS page
    cache still serves repeated reads). `view` maps one tensor's bytes for as long as that tensor lives.
    """

    def __init__(self, path: str | os.PathLike, label: str | None = None):
        path = Path(path)
        self.label = label or str(path)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such file (expected a safetensors state dict)")
        size = path.stat().st_size
        try:
            with open(path, "rb") as handle:
                (length,) = struct.unpack("<Q", handle.read(8))
                if length > size - 8:
                    raise ValueError("header longer than the file")
                header = json.loads(handle.read(length))
            self.metadata = {str(k): str(v) for k, v in (header.pop("__metadata__", None) or {}).items()}
            self._shapes, self._dtypes, self._offsets = {}, {}, {}
            for key, entry in header.items():
                dtype = _DTYPES.get(entry["dtype"])
                begin, end = (int(v) for v in entry["data_offsets"])
                shape = tuple(int(v) for v in entry["shape"])
                if dtype is None or end - begin != nbytes(shape, dtype) or 8 + length + end > size:
                    raise ValueError(f"tensor {key!r} has an unsupported dtype or inconsistent offsets")
                self._shapes[key], self._dtypes[key], self._offsets[key] = shape, dtype, 8 + length + begin
        except (OSError, ValueError, KeyError, TypeError, struct.error) as error:
            raise ValueError(f"{path}: not a readable safetensors file ({error})") from None
        self.path = path
        self._tensors, self._file = None, None

    def get(self, key: str) -> torch.Tensor:
        tensor = torch.empty(self._shapes[key], dtype=self._dtypes[key])
        if tensor.numel():
            buffer = memoryview(tensor.reshape(-1).view(torch.uint8).numpy())
            with open(self.path, "rb", buffering=0) as handle:
                handle.seek(self._offsets[key])
                if handle.readinto(buffer) != len(buffer):
                    raise ValueError(f"{self.label}: cannot read tensor {key!r} (the file is truncated)")
        return tensor

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


class ShardedSource(TensorSource):
    """Lazy view of a sharded safetensors checkpoint through its index's `weight_map`."""

    def __init__(self, index_path: str | os.PathLike, label: str | None = None):
        index_path = Path(index_path)
        self.label = label or str(index_path)
        try:
            index = json.loads(index_path.read_text())
            weight_map = index["weight_map"]
            if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
                raise TypeError
        except FileNotFoundError:
            raise FileNotFoundError(f"{index_path}: no such file (expected a sharded checkpoint's index)") from None
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{index_path}: not a sharded checkpoint index (needs a 'weight_map' of tensor name -> "
                             "shard file)") from None
        if not weight_map:
            raise ValueError(f"{index_path}: its weight_map lists no tensors")
        shards: dict[str, TensorSource] = {}
        for name in dict.fromkeys(weight_map.values()):
            path = index_path.parent / name
            if not path.is_file():
                raise FileNotFoundError(f"{index_path}: shard {name} is missing (expected {path})")
            shards[name] = SafetensorsFile(path)
        self._shard_of: dict[str, TensorSource] = {}
        self._shapes, self._dtypes = {}, {}
        for key, name in weight_map.items():
            shard = shards[name]
            if key not in shard._shapes:
                raise ValueError(f"{shard.label}: has no tensor {key!r}, which {index_path.name} places there; "
                                 "the checkpoint is incomplete")
            self._shard_of[key] = shard
            self._shapes[key], self._dtypes[key] = shard.shape(key), shard.dtype(key)
        self._tensors, self._file = None, None
        self.metadata = {}
        self.shards = list(shards.values())

    def get(self, key: str) -> torch.Tensor:
        return self._shard_of[key].get(key)

    def view(self, key: str) -> torch.Tensor:
        return self._shard_of[key].view(key)


def read_torch_weights(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A `pytorch_model.bin`-style state dict, loaded with `weights_only=True` (no code from the file runs)."""
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:  # noqa: BLE001 - any failure is a bad file for the user
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path}: not a loadable torch state dict ({message})") from None
    if isinstance(state, Mapping) and isinstance(state.get("state_dict"), Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: holds no state dict of tensors")
    return dict(state)


def _torch_source(path: Path, label: str | None) -> TensorSource:
    if path.name.endswith(".index.json"):
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
        except (OSError, ValueError, KeyError, TypeError):
            raise ValueError(f"{path}: not a sharded checkpoint index (needs a 'weight_map')") from None
        state: dict[str, torch.Tensor] = {}
        for name in dict.fromkeys(weight_map.values()):
            shard = path.parent / name
            if not shard.is_file():
                raise FileNotFoundError(f"{path}: shard {name} is missing (expected {shard})")
            state.update(read_torch_weights(shard))
        missing = [key for key in weight_map if key not in state]
        if missing:
            raise ValueError(f"{path}: tensor {missing[0]!r} is in no shard; the checkpoint is incomplete")
        state = {key: state[key] for key in weight_map}
    else:
        state = read_torch_weights(path)
    return TensorSource(state, label or str(path))


def open_checkpoint(path: str | os.PathLike, label: str | None = None) -> TensorSource:
    """A lazy source for a safetensors file, a sharded index, a torch weights file, or a model folder."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: a folder without weights (expected one of {', '.join(WEIGHT_FILES)})")
        path = found
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    if path.name.endswith(".safetensors.index.json"):
        return ShardedSource(path, label)
    if path.suffix in (".bin", ".pt", ".pth") or path.name.endswith(".bin.index.json"):
        return _torch_source(path, label)
    return SafetensorsFile(path, label)


def resolve_location(location: str | os.PathLike) -> Path:
    """A local path, or a Hugging Face hub id (`org/name` or `hf-hub:org/name`) fetched into the local cache.

    Offline (`HF_HUB_OFFLINE=1`) a hub id must already be in the cache.
    """
    path = Path(location)
    if path.exists():
        return path
    text = str(location)
    if not HUB_ID.match(text):
        raise FileNotFoundError(f"{text}: no such file or folder (nor a hub id like org/name)")
    repo = text.removeprefix("hf-hub:")
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    except ImportError:
        raise ValueError(f"{text}: a hub id needs the huggingface_hub package (pip install huggingface_hub)") from None
    offline = bool(constants.HF_HUB_OFFLINE)
    try:
        folder = snapshot_download(repo, local_files_only=offline,
                                   allow_patterns=["*.safetensors", "*.json", "*.bin", "tokenizer*", "*.txt", "*.model",
                                                   "*.jinja"])
    except LocalEntryNotFoundError:
        if offline:
            raise ValueError(f"{text}: hub id not in the local cache and HF_HUB_OFFLINE is set; download it first "
                             "or give a local folder") from None
        raise ValueError(f"{text}: cannot download this hub id (no connection?)") from None
    except (HfHubHTTPError, OSError, ValueError) as error:
        raise ValueError(f"{text}: cannot fetch this hub id ({str(error).splitlines()[0] if str(error) else error})") from None
    return Path(folder)


# ------------------------------------------------------------------------------------------------ out
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
        value = float(match.group(1)) * scale
    if not value >= 1:
        raise ValueError(f"shard size {size!r} must be at least one byte")
    return int(value)


Layout = list[tuple[str, tuple[int, ...], torch.dtype]]


def nbytes(shape: tuple[int, ...], dtype: torch.dtype) -> int:
    count = 1
    for size in shape:
        count *= size
    return count * torch.empty((), dtype=dtype).element_size()


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


class SafetensorsStream:
    """A safetensors file written tensor by tensor: the header first (from the layout), then the data."""

    def __init__(self, path: str | os.PathLike, layout: Layout, metadata: Mapping[str, str] | None = None):
        header: dict[str, object] = {}
        if metadata:
            header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
        offset = 0
        for key, shape, dtype in layout:
            if dtype not in SAFETENSORS_DTYPES:
                raise ValueError(f"tensor {key!r}: dtype {dtype} cannot be stored in safetensors")
            size = nbytes(shape, dtype)
            header[key] = {"dtype": SAFETENSORS_DTYPES[dtype], "shape": list(shape), "data_offsets": [offset, offset + size]}
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


def _write_file(path: Path, layout: Layout, items: Iterator[tuple[str, torch.Tensor]], metadata) -> None:
    stream = SafetensorsStream(path, layout, metadata)
    try:
        for key, _, _ in layout:
            name, tensor = next(items)
            if name != key:
                raise RuntimeError(f"tensor {name!r} came out of the planned order (expected {key!r})")
            stream.write(name, tensor)
    finally:
        stream.file.close()
    stream.close()


def check_output(output: str | os.PathLike, shard_size: int | None = None) -> Path:
    """Raise a one-line ValueError before any work when `output` cannot be written as asked."""
    output = Path(output)
    if output.suffix == ".safetensors":
        if shard_size is not None:
            raise ValueError(f"output {output} is one file; a sharded output (out_shard_size) needs a folder name")
        if output.is_dir():
            raise ValueError(f"output {output} is a folder; give a file name or a folder without .safetensors")
        return output
    if output.is_file():
        raise ValueError(f"output {output} is a file; give a new folder name (or a name ending in .safetensors)")
    if output.is_dir() and any(output.iterdir()):
        raise ValueError(f"output {output} already exists and is not empty; give a new folder or remove it")
    return output


def save_streamed(output: str | os.PathLike, layout: Layout, items: Iterable[tuple[str, torch.Tensor]], *,
                  shard_size: int | str | None = None, metadata: Mapping[str, str] | None = None,
                  copy_from: str | os.PathLike | None = None) -> Path:
    """Write tensors (in `layout` order) as they come: one `.safetensors` file, or a Hugging Face folder.

    A folder is built in a temporary folder next to `output` and renamed at the end, like every write.
    """
    shard_size = parse_size(shard_size)
    output = check_output(output, shard_size)
    items = iter(items)
    if output.suffix == ".safetensors":
        return atomic_write(output, lambda tmp: _write_file(Path(tmp), layout, items, metadata))
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    except OSError as error:
        raise ValueError(f"output {output}: cannot write there ({error.strerror or error})") from None
    try:
        shards = plan_shards(layout, shard_size)
        if len(shards) == 1:
            _write_file(tmp / SINGLE_FILE, shards[0], items, metadata)
        else:
            weight_map = {}
            for i, shard in enumerate(shards, start=1):
                name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
                _write_file(tmp / name, shard, items, metadata)
                weight_map.update({key: name for key, _, _ in shard})
            total = sum(nbytes(shape, dtype) for _, shape, dtype in layout)
            index = {"metadata": {"total_size": total, **dict(metadata or {})}, "weight_map": weight_map}
            (tmp / INDEX_FILE).write_text(json.dumps(index, indent=2))
        if copy_from is not None and Path(copy_from).is_dir():
            for name in SIDE_FILES:
                if (Path(copy_from) / name).is_file():
                    shutil.copyfile(Path(copy_from) / name, tmp / name)
        os.chmod(tmp, 0o755)
        if output.is_dir():
            output.rmdir()  # empty (checked above)
        os.replace(tmp, output)
    except OSError as error:  # disk full, file too large: one line, and the partial folder is gone
        shutil.rmtree(tmp, ignore_errors=True)
        raise folder_write_failure(error, output, tmp) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return output
