"""The streamed writer: tensors written as an iterator makes them, one `.safetensors` file or a Hugging Face
style folder of shards, and the whole-state-dict writer.

Each safetensors header is written first (names, shapes and dtypes are known before a merge), then each
tensor's bytes as soon as it is made, so memory holds one tensor at a time whatever the model's size. A
folder output gets shards of at most `shard_size` bytes (`model-00001-of-00003.safetensors`, ...) with
`model.safetensors.index.json`, or one `model.safetensors`, and the files a caller adds (the base model's
config and tokenizer files, a model card, the recipe). Everything is published atomically
(`weaving.io.publish`).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path

import torch

from weaving.io.loader import INDEX_FILE, SINGLE_FILE, inside
from weaving.io.publish import atomic_save_safetensors, atomic_write, check_output, publish_folder
from weaving.io.safetensors import SafetensorsStream
from weaving.io.sizes import Layout, layout_bytes, nbytes, parse_size, plan_shards

# Files a Hugging Face folder needs besides its weights; copied from the base model into a folder output.
SIDE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
              "special_tokens_map.json", "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
              "chat_template.jinja", "preprocessor_config.json")


def weights_dtype(weights: Mapping[str, torch.Tensor] | Layout) -> torch.dtype | None:
    """The dtype of a model's weights (of its floating-point tensors, the most common one by bytes), for
    config.json's `torch_dtype`; None when it holds none."""
    entries = ([(key, tuple(v.shape), v.dtype) for key, v in weights.items()] if isinstance(weights, Mapping)
               else list(weights))
    sizes: dict[torch.dtype, int] = {}
    for _, shape, dtype in entries:
        if dtype.is_floating_point:
            sizes[dtype] = sizes.get(dtype, 0) + max(nbytes(shape, dtype), 1)
    return max(sizes, key=sizes.get) if sizes else None


def set_config_dtype(config: dict, dtype: torch.dtype | None) -> bool:
    """Make a Hugging Face config say `dtype` where it records one (`torch_dtype`, or `dtype` as transformers
    writes from 4.56; nested text / vision configs too); True when that changed anything."""
    if dtype is None:
        return False
    name, changed = str(dtype).removeprefix("torch."), False
    for key in ("torch_dtype", "dtype"):
        if key in config and config[key] != name:
            config[key], changed = name, True
    for value in config.values():
        if isinstance(value, dict):
            changed = set_config_dtype(value, dtype) or changed
    return changed


def is_file_output(output: str | os.PathLike) -> bool:
    """A `.safetensors` output is one file; anything else names a folder."""
    return Path(output).suffix == ".safetensors"


def check_streamed_output(output: str | os.PathLike, shard_size: int | None = None, *, overwrite: bool = False,
                          inputs: Iterable[str | os.PathLike] = (), expected_bytes: int = 0) -> Path:
    """`check_output` for what `save_streamed` writes: one file (`.safetensors`) or a folder."""
    if is_file_output(output) and shard_size is not None:
        raise ValueError(f"output {output} is one file; a sharded output (out_shard_size) needs a folder name")
    folder = not is_file_output(output)
    return check_output(output, folder=folder, overwrite=overwrite, inputs=inputs,
                        expected_bytes=expected_bytes + (2**16 if folder else 0))


def write_shard(path: Path, layout: Layout, items: Iterator[tuple[str, torch.Tensor]], metadata) -> None:
    """Write the tensors of `layout` from `items` (in that order) as one safetensors file."""
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


def shard_names(count: int) -> list[str]:
    """The Hugging Face names of `count` shards (one shard: `model.safetensors`)."""
    return [SINGLE_FILE] if count == 1 else [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def write_index(folder: Path, layout: Layout, weight_map: Mapping[str, str], metadata: Mapping[str, str] | None) -> None:
    """`model.safetensors.index.json` of a sharded folder (tensors in `layout` order)."""
    index = {"metadata": {"total_size": layout_bytes(layout), **dict(metadata or {})},
             "weight_map": {key: weight_map[key] for key, _, _ in layout}}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2))


def copy_side_files(source: str | os.PathLike | None, folder: Path, dtype: torch.dtype | None = None) -> None:
    """Copy a base model folder's config and tokenizer files (those inside it, links resolved) into `folder`;
    a config.json that records a dtype says the output's `dtype` (one that records none is copied as is)."""
    if source is None or not Path(source).is_dir():
        return
    for name in SIDE_FILES:
        if (Path(source) / name).is_file():
            path = inside(source, name, f"the model folder {source}")
            if name == "config.json" and dtype is not None:
                try:
                    config = json.loads(path.read_text())
                except (OSError, ValueError):
                    config = None
                if isinstance(config, dict) and set_config_dtype(config, dtype):
                    (folder / name).write_text(json.dumps(config, indent=2) + "\n")
                    continue
            shutil.copyfile(path, folder / name)


def save_streamed(output: str | os.PathLike, layout: Layout, items: Iterable[tuple[str, torch.Tensor]], *,
                  shard_size: int | str | None = None, metadata: Mapping[str, str] | None = None,
                  copy_from: str | os.PathLike | None = None, overwrite: bool = False,
                  extra_files: Callable[[Path], None] | None = None) -> Path:
    """Write tensors (in `layout` order) as they come: one `.safetensors` file, or a Hugging Face folder.

    A folder is built in a temporary folder next to `output` and renamed at the end, like every write;
    `extra_files(folder)` adds files to it before that (a model card, a recipe).
    """
    shard_size = parse_size(shard_size)
    output = check_streamed_output(output, shard_size, overwrite=overwrite)
    items = iter(items)
    if is_file_output(output):
        return atomic_write(output, lambda tmp: write_shard(Path(tmp), layout, items, metadata))
    with publish_folder(output, overwrite=overwrite) as tmp:
        shards = plan_shards(layout, shard_size)
        names = shard_names(len(shards))
        for name, shard in zip(names, shards):
            write_shard(tmp / name, shard, items, metadata)
        if len(shards) > 1:
            write_index(tmp, layout, {key: name for name, shard in zip(names, shards) for key, _, _ in shard}, metadata)
        copy_side_files(copy_from, tmp, weights_dtype(layout))
        if extra_files is not None:
            extra_files(tmp)
    return output


def save_state_dict(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> Path:
    """Write tensors to a safetensors file atomically (temporary file in the same folder, then rename)."""
    contiguous = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    text_metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    return atomic_save_safetensors(path, contiguous, text_metadata)
