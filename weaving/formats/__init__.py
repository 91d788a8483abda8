"""Checkpoint formats in and out: task_vectors-lineage pickles (read without running them), Hugging Face
CLIP folders and hub ids, open_clip state dicts; `weaving import` and full-checkpoint export."""

from weaving.formats.checkpoint import FORMATS, Checkpoint, read_checkpoint, resolve_model
from weaving.formats.torch_pickle import UnsafePickleError, read_torch_file

__all__ = ["FORMATS", "Checkpoint", "UnsafePickleError", "read_checkpoint", "read_torch_file", "resolve_model"]
