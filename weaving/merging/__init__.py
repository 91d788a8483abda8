"""The merge engine: nine merge methods, Weight Weaving and task-vector I/O. No Lightning needed."""

from weaving.merging.engine import merge
from weaving.merging.pooling import POOLINGS
from weaving.merging.registry import METHODS, get_method, register_method
from weaving.merging.task_vectors import (
    load_task_vector,
    read_metadata,
    save_state_dict,
    save_task_vector,
    task_vector_from_finetuned,
)
from weaving.merging.weave import parse_lambdas, weave
import weaving.merging.methods  # noqa: E402,F401  (registers every method)

__all__ = [
    "METHODS", "POOLINGS", "get_method", "load_task_vector", "merge", "parse_lambdas", "read_metadata",
    "register_method", "save_state_dict", "save_task_vector", "task_vector_from_finetuned", "weave",
]
