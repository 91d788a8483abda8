"""The merge engine: eleven merge methods, Weight Weaving and task-vector I/O. No Lightning needed."""

from weaving.io.safetensors import read_metadata
from weaving.io.writer import save_state_dict
from weaving.merging.engine import merge
from weaving.merging.pooling import POOLINGS
from weaving.merging.registry import METHODS, get_method, register_method
from weaving.merging.task_vectors import load_task_vector, save_task_vector, task_vector_from_finetuned
from weaving.merging.recipe import run_recipe
from weaving.merging.search_space import parse_lambdas, parse_search_space
from weaving.merging.weave import weave
import weaving.merging.methods  # noqa: E402,F401  (registers every method)

__all__ = [
    "METHODS", "POOLINGS", "get_method", "load_task_vector", "merge", "parse_lambdas", "parse_search_space", "read_metadata",
    "register_method", "run_recipe", "save_state_dict", "save_task_vector", "task_vector_from_finetuned", "weave",
]
