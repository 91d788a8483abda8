"""Run folders as merge inputs: `--pretrained RUN` and `--task_vectors RUN` (what fit and import write)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

PRETRAINED_FILE = "pretrained.safetensors"


def pretrained_path(source: str) -> str:
    """A run folder means its RUN/pretrained.safetensors; files pass through."""
    path = Path(source)
    if path.is_dir():
        if (path / PRETRAINED_FILE).is_file():
            return str(path / PRETRAINED_FILE)
        raise FileNotFoundError(f"--pretrained {source}: a folder without {PRETRAINED_FILE}; pass theta_pre's "
                                "safetensors file or a run written by `weaving import` / `weaving fit`")
    return source


def task_vector_paths(sources: Sequence[str]) -> list[str]:
    """Folders (a run or its task_vectors/) expand to their task vector files, in the run's order."""
    from weaving.runs import read_run

    paths: list[str] = []
    for source in sources:
        if Path(source).is_dir():
            paths += [str(p) for p in read_run(source).paths.values()]
        else:
            paths.append(source)
    return paths


def recorded_model(pretrained: str, task_vectors: Sequence[str]) -> str | None:
    """The open_clip model name the inputs record in their metadata (theta_pre first), or None."""
    from weaving.merging.task_vectors import read_metadata

    for path in [pretrained, *task_vectors]:
        if str(path).endswith(".safetensors") and Path(path).is_file():
            model = read_metadata(path).get("model")
            if model:
                return model
    return None
