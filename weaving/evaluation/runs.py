"""Finding task vectors on disk: a fine-tuning run dir, its task_vectors/ folder, or a list of files,
and the pretrained model (model name, tag, init seed) they were made from.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class TaskVectorFiles:
    """Task vector files by task name (in the order they were written) and their pretrained model."""

    paths: dict[str, Path]
    model: str | None = None
    pretrained: str | None = None
    seed: int | None = None
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)

    def select(self, tasks: Sequence[str] | None) -> "TaskVectorFiles":
        """Only `tasks` (in that order); None keeps all. Unknown names -> ValueError listing the known ones."""
        if tasks is None:
            return self
        missing = [t for t in tasks if t not in self.paths]
        if missing:
            raise ValueError(f"no task vectors for {missing}; available: {', '.join(self.paths)}")
        return TaskVectorFiles({t: self.paths[t] for t in tasks}, self.model, self.pretrained, self.seed,
                               {t: self.metadata.get(t, {}) for t in tasks})


def _none(value: Any) -> Any:
    """Metadata stores strings; "", "none" and "null" mean None (random init)."""
    return None if value is None or str(value).strip().lower() in ("", "none", "null") else value


def _from_index(folder: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Entries of the index.json that TaskVectorWriter writes: {"task_vectors": [{"task", "file", ...}]}."""
    path = folder / "index.json"
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it or rerun the fine-tuning") from None
    entries = index.get("task_vectors") if isinstance(index, Mapping) else None
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{\"task_vectors\": [...]}} as `weaving fit` writes it; delete it or rerun the fine-tuning")
    found = {}
    for entry in entries:
        if not isinstance(entry, Mapping) or not entry.get("task") or not entry.get("file"):
            raise ValueError(f"{path}: every entry needs a 'task' and a 'file', got {entry!r}")
        found[str(entry["task"])] = (folder / Path(entry["file"]).name, dict(entry))
    return found


def find_task_vectors(source: str | os.PathLike | Sequence[str | os.PathLike]) -> TaskVectorFiles:
    """Task vectors from a run dir (uses <dir>/task_vectors/), a task_vectors folder, or a list of files.

    Order: index.json's when present, else sorted file names (or the list's order). Task names come from
    the index / file metadata ("task"), else the file stem. The pretrained model comes from metadata.
    """
    from weaving.merging.task_vectors import read_metadata

    if isinstance(source, (str, os.PathLike)):
        folder = Path(source)
        if (folder / "task_vectors").is_dir():
            folder = folder / "task_vectors"
        if folder.is_file():
            entries = {folder.stem: (folder, {})}
        elif not folder.is_dir():
            raise FileNotFoundError(f"task vectors: {source} is neither a run dir, a folder nor a file; "
                                    "run `weaving fit` first or fix the path")
        elif (folder / "index.json").is_file():
            entries = _from_index(folder)
        else:
            entries = {p.stem: (p, {}) for p in sorted(folder.glob("*.safetensors"))}
    else:
        entries = {Path(p).stem: (Path(p), {}) for p in source}
    if not entries:
        raise FileNotFoundError(f"task vectors: no *.safetensors files in {source}; run `weaving fit` first")
    paths, metadata = {}, {}
    for stem, (path, extra) in entries.items():
        if not path.is_file():
            raise FileNotFoundError(f"task vector file {path} is missing; rerun the fine-tuning that writes it")
        meta = {**read_metadata(path), **extra}
        name = str(extra.get("task") or meta.get("task") or stem)
        if name in paths:
            raise ValueError(f"task vectors: two files for task {name!r} ({paths[name]}, {path}); give each task once")
        paths[name], metadata[name] = path, meta
    first = next(iter(metadata.values()))
    seed = _none(first.get("seed"))
    return TaskVectorFiles(paths, _none(first.get("model")), _none(first.get("pretrained")),
                           None if seed is None else int(seed), metadata)
