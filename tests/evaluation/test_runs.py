"""The task-vector index: only the format `weaving fit` writes is read."""

import json

import pytest
import torch

from weaving.evaluation.runs import find_task_vectors
from weaving.merging.task_vectors import save_task_vector


def test_reads_the_written_format_and_refuses_others(tmp_path):
    folder = tmp_path / "task_vectors"
    for task in ("b", "a"):
        save_task_vector(folder / f"{task}.safetensors", {"w": torch.ones(2)}, {"task": task, "model": "m"})
    index = folder / "index.json"
    index.write_text(json.dumps({"model": "m", "task_vectors": [{"task": "b", "file": "b.safetensors"},
                                                               {"task": "a", "file": "a.safetensors"}]}))
    found = find_task_vectors(tmp_path)
    assert list(found.paths) == ["b", "a"] and found.paths["a"] == folder / "a.safetensors"
    for other in ([{"task": "a", "file": "a.safetensors"}], {"entries": [{"name": "a", "path": "a.safetensors"}]},
                  {"task_vectors": [{"name": "a", "path": "a.safetensors"}]}):
        index.write_text(json.dumps(other))
        with pytest.raises(ValueError, match="index.json"):
            find_task_vectors(tmp_path)
