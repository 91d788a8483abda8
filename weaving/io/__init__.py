"""Tensors on disk: the one storage layer every other package of weaving uses. It imports nothing else of
weaving.

- `source`: the `TensorSource` protocol (lazy, per tensor) and its in-memory implementation;
- `safetensors`: the one safetensors reader (`SafetensorsFile`, header checks, memory-mapped views) and the
  streamed file writer;
- `torch_pickle`: the restricted unpickler, the one policy for `.bin` / `.pt` files;
- `loader`: `open_checkpoint` for files, sharded folders and Hugging Face folders; `hub`: the hub resolver;
- `sizes`: bytes of shapes and layouts, shard sizes and plans;
- `writer`: the streamed writer (one file or a sharded folder); `publish`: atomic, signal-safe,
  umask-respecting files and folders, and the one output check (`--overwrite`);
- `runs`: the run folder contract (`weaving fit` / `weaving import` write it) and `check_same_base`, its one
  identity check.
"""

from weaving.io.loader import ShardedSource, as_source, open_checkpoint
from weaving.io.publish import atomic_write, check_output, publish_folder
from weaving.io.safetensors import SafetensorsFile, load_state_dict, read_metadata
from weaving.io.source import TensorSource, check_finite
from weaving.io.writer import save_state_dict, save_streamed

__all__ = [
    "SafetensorsFile", "ShardedSource", "TensorSource", "as_source", "atomic_write", "check_finite", "check_output",
    "load_state_dict", "open_checkpoint", "publish_folder", "read_metadata", "save_state_dict", "save_streamed",
]
