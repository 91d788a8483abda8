"""Open any state dict on disk as a `TensorSource`: a safetensors file, a sharded checkpoint through its
index, a Hugging Face model folder, or a `.bin` / `.pt` file (read by the restricted unpickler, the one
policy for pickled weights: nothing from the file runs).

An input's own metadata never takes weaving outside the input's folder: the files a shard index names
must be plain names inside the index's folder (`inside`), links included.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path

import torch

from weaving.io.safetensors import SafetensorsFile
from weaving.io.source import StateDictLike, TensorSource
from weaving.io.torch_pickle import read_torch_state_dict

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
TORCH_INDEX_FILE = "pytorch_model.bin.index.json"
TORCH_FILE = "pytorch_model.bin"
WEIGHT_FILES = (INDEX_FILE, SINGLE_FILE, TORCH_INDEX_FILE, TORCH_FILE)
TORCH_SUFFIXES = (".bin", ".pt", ".pth")


def inside(folder: str | os.PathLike, name: str, what: str) -> Path:
    """`folder / name` when `name` (read from a file in `folder`) stays inside `folder`, links resolved; a
    Hugging Face cache snapshot may link into its repository's blob store. Else a one-line ValueError."""
    folder = Path(folder)
    if not isinstance(name, str) or not name or Path(name).is_absolute() or ".." in Path(name).parts:
        raise ValueError(f"{what} names {name!r}, which is not a file inside {folder}; refusing to read it")
    root = folder.resolve()
    allowed = [root] + ([root.parent.parent] if root.parent.name == "snapshots" else [])
    target = (folder / name).resolve()
    if not any(target == base or base in target.parents for base in allowed):
        raise ValueError(f"{what} names {name!r}, which leads outside {folder} (to {target}); refusing to read it")
    return folder / name


def read_weight_map(index_path: Path) -> dict[str, str]:
    """The `weight_map` (tensor name -> shard file) of a sharded checkpoint's index, every shard checked to
    be inside the index's folder."""
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
    for name in set(weight_map.values()):
        inside(index_path.parent, name, str(index_path))
    return weight_map


class ShardedSource(TensorSource):
    """Lazy view of a sharded safetensors checkpoint through its index's `weight_map`."""

    def __init__(self, index_path: str | os.PathLike, label: str | None = None):
        index_path = Path(index_path)
        self.label = label or str(index_path)
        weight_map = read_weight_map(index_path)
        shards: dict[str, SafetensorsFile] = {}
        for name in dict.fromkeys(weight_map.values()):
            path = index_path.parent / name
            if not path.is_file():
                raise FileNotFoundError(f"{index_path}: shard {name} is missing (expected {path})")
            shards[name] = SafetensorsFile(path)
        self._shard_of: dict[str, SafetensorsFile] = {}
        self._shapes, self._dtypes = {}, {}
        for key, name in weight_map.items():
            shard = shards[name]
            if key not in shard.keys():
                raise ValueError(f"{shard.label}: has no tensor {key!r}, which {index_path.name} places there; "
                                 "the checkpoint is incomplete")
            self._shard_of[key] = shard
            self._shapes[key], self._dtypes[key] = shard.shape(key), shard.dtype(key)
        self.metadata = {}
        self.shards = list(shards.values())

    def get(self, key: str) -> torch.Tensor:
        return self._shard_of[key].get(key)

    def view(self, key: str) -> torch.Tensor:
        return self._shard_of[key].view(key)

    def read_into(self, key: str, buffer: torch.Tensor) -> torch.Tensor:
        return self._shard_of[key].read_into(key, buffer)

    reads_into = True


def read_torch_weights(path: Path) -> dict[str, torch.Tensor]:
    """A `.bin` / `.pt` state dict, or all shards of a `pytorch_model.bin.index.json`, in the index's order."""
    if not path.name.endswith(".index.json"):
        return read_torch_state_dict(path)
    weight_map = read_weight_map(path)
    state: dict[str, torch.Tensor] = {}
    for name in dict.fromkeys(weight_map.values()):
        shard = path.parent / name
        if not shard.is_file():
            raise FileNotFoundError(f"{path}: shard {name} is missing (expected {shard})")
        state.update(read_torch_state_dict(shard))
    missing = [key for key in weight_map if key not in state]
    if missing:
        raise ValueError(f"{path}: tensor {missing[0]!r} is in no shard; the checkpoint is incomplete")
    return {key: state[key] for key in weight_map}


def weights_file(path: str | os.PathLike) -> Path:
    """The weights a location means: a file itself, or the weights file (index first) of a model folder."""
    path = Path(path)
    if path.is_dir():
        found = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if found is None:
            raise FileNotFoundError(f"{path}: a folder without weights (expected one of {', '.join(WEIGHT_FILES)})")
        return found
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file or folder")
    return path


def is_weights_folder(path: str | os.PathLike) -> bool:
    """A model folder (Hugging Face layout: one of WEIGHT_FILES inside), not a run folder."""
    return Path(path).is_dir() and any((Path(path) / name).is_file() for name in WEIGHT_FILES)


def open_checkpoint(path: str | os.PathLike, label: str | None = None) -> TensorSource:
    """A lazy source for a safetensors file, a sharded index, a torch weights file, or a model folder."""
    path = weights_file(path)
    if path.name.endswith(".safetensors.index.json"):
        return ShardedSource(path, label)
    if path.suffix in TORCH_SUFFIXES or path.name.endswith(".bin.index.json"):
        return TensorSource(read_torch_weights(path), label or str(path))
    return SafetensorsFile(path, label)


def as_source(source: StateDictLike | TensorSource, label: str) -> TensorSource:
    """A TensorSource for a source, a mapping of tensors (labelled `label`) or a path (labelled by itself)."""
    if isinstance(source, TensorSource):
        return source
    if isinstance(source, Mapping):
        return TensorSource(source, label)
    if isinstance(source, (str, os.PathLike)):
        return open_checkpoint(source) if Path(source).is_dir() else SafetensorsFile(source)
    raise ValueError(f"{label}: expected a mapping of tensors or a path, got {type(source).__name__}")


def file_sha256(path: str | os.PathLike) -> str:
    """`sha256:<hex>` of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 24), b""):
            digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def weights_hashes(location: str | os.PathLike) -> dict[str, str]:
    """{file: sha256} of the weights a location means: the file itself, or a folder's weights file, its
    index and every shard the index names (a missing location: nothing)."""
    try:
        path = weights_file(location)
    except FileNotFoundError:
        return {}
    files = [path]
    if path.name.endswith(".index.json"):
        files += [path.parent / name for name in dict.fromkeys(read_weight_map(path).values())]
    return {str(file): file_sha256(file) for file in files if file.is_file()}
