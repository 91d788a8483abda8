"""Run folders: what `weaving fit` and `weaving import` write, and how every other command reads them.

A run folder RUN holds

- `RUN/pretrained.safetensors`: theta_pre, the full open_clip state dict (a run fine-tuned from a public
  open_clip tag may record only the tag and the hash);
- `RUN/task_vectors/<task>.safetensors`: `visual.*` tensors of theta_t - theta_pre, whose metadata carries
  the run identity (`run_id`, `pretrained_hash`, `model`, `pretrained`);
- `RUN/task_vectors/index.json`: `{"format": "weaving.run/1", "run_id", "model", "pretrained",
  "pretrained_file", "pretrained_hash", "seed", "stream", "tasks", "zero_entries",
  "task_vectors": [{"task", "file", ...}]}`. `zero_entries` is the count of zero-delta entries the official
  CLIP harnesses add to every task vector (`weaving.models.clip.harness_zero_entries`); merges of the run
  pass it to the methods that count them (ties, pcb) unless the user sets it (0 when absent).

The run id names one training (or import); the pretrained hash (`state_dict_hash`) names theta_pre. Task
vectors merge only when both agree (`check_same_base`, the one identity check: resume, the task-vector
writer, import, merge and the demo all call it), unless the caller allows mixing (`--allow_mixed`).
A run's own files never take weaving outside the run folder: index.json's file names and
`pretrained_file` must name files inside it.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weaving.io.loader import as_source, inside, is_weights_folder
from weaving.io.safetensors import read_metadata

RUN_FORMAT = "weaving.run/1"
INDEX_NAME = "index.json"
TASK_VECTORS_DIR = "task_vectors"
PRETRAINED_FILE = "pretrained.safetensors"
IDENTITY_KEYS = ("run_id", "model", "pretrained", "pretrained_hash")


def new_run_id() -> str:
    """A fresh run id: UTC time of creation plus random hex, e.g. `20261127T212715-3f9a0c1e`."""
    return time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + secrets.token_hex(4)


def _tensor_bytes(tensor: torch.Tensor) -> memoryview:
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return memoryview(flat.view(torch.uint8).numpy())


def state_dict_hash(tensors: Mapping[str, torch.Tensor] | str | os.PathLike) -> str:
    """`sha256:<hex>` over the sorted names, dtypes, shapes and bytes of a state dict (or a safetensors file).

    Equal state dicts give equal hashes whatever their key order or storage; one changed element, dtype,
    shape or name changes the hash.
    """
    source = as_source(tensors, "state dict") if isinstance(tensors, (str, os.PathLike)) else None
    names = sorted(source.keys() if source is not None else tensors.keys())
    digest = hashlib.sha256()
    for name in names:
        tensor = source.get(name) if source is not None else tensors[name]
        header = f"{name}\0{str(tensor.dtype).removeprefix('torch.')}\0{list(tensor.shape)}\0"
        digest.update(header.encode())
        digest.update(_tensor_bytes(tensor))
    return "sha256:" + digest.hexdigest()


@dataclass(frozen=True)
class RunIdentity:
    """Who made a task vector: the run and the pretrained model (name, tag or file, hash of theta_pre)."""

    run_id: str | None = None
    model: str | None = None
    pretrained: str | None = None
    pretrained_hash: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> "RunIdentity":
        return cls(*(_none(values.get(key)) for key in IDENTITY_KEYS))

    def metadata(self) -> dict[str, str]:
        """The identity as safetensors metadata (strings; None becomes "")."""
        return {key: "" if getattr(self, key) is None else str(getattr(self, key)) for key in IDENTITY_KEYS}


def _none(value: Any) -> Any:
    """Metadata stores strings; "", "none" and "null" mean None (random init, or not recorded)."""
    return None if value is None or str(value).strip().lower() in ("", "none", "null") else value


def check_same_base(identities: Sequence[tuple[str, RunIdentity]], *, allow_mixed: bool = False,
                    same_run: bool = True, fields: Sequence[str] | None = None,
                    message: Callable[[str, str, Any, str, Any], str] | None = None) -> None:
    """Raise a one-line ValueError when labelled identities disagree on the base model (or on the run): the
    one identity check of weaving (merge inputs, the task-vector writer, resume, the demo).

    The base model (theta_pre hash, model name, pretrained source) must agree, and with `same_run` the run
    id too, unless `allow_mixed`; `fields` compares those fields only. A field that nobody records is not
    compared; a field that some record and others do not counts as a disagreement. `message(field, label,
    value, first_label, first_value)` words the error for its caller (default: about merging task vectors).
    """
    if allow_mixed or len(identities) < 2:
        return
    described = {"pretrained_hash": "base models (theta_pre hashes)", "model": "models",
                 "pretrained": "pretrained sources", "run_id": "runs"}
    names = list(fields) if fields is not None else ["pretrained_hash", "model", "pretrained"] + (["run_id"] if same_run else [])
    first_label, first = identities[0]
    for field_name in names:
        for label, identity in identities[1:]:
            mine, theirs = getattr(identity, field_name), getattr(first, field_name)
            if mine != theirs:
                if message is not None:
                    raise ValueError(message(field_name, label, mine, first_label, theirs))
                raise ValueError(
                    f"task vectors from different {described[field_name]}: {label} has {field_name}={mine!r}, "
                    f"{first_label} has {theirs!r}; merge task vectors of one run, or pass --allow_mixed to merge "
                    "them anyway")


# ------------------------------------------------------------------------------------- kinds of input
# What a weights file is, as its own metadata says: `weaving fit` writes `format` (weaving.pretrained/1,
# weaving.task_vector/1), `weaving import` writes `kind` (pretrained, task_vector). Files without either
# (public checkpoints, other tools' task vectors) are not judged by this; see `looks_like_full_weights`.
FORMAT_KINDS = {"weaving.pretrained/1": "pretrained", "weaving.task_vector/1": "task_vector"}
KIND_WORDS = {"pretrained": "theta_pre (pretrained weights)", "task_vector": "a task vector (theta_t - theta_pre)",
              "finetuned": "fine-tuned weights"}
KIND_FLAGS = {"pretrained": "--pretrained", "task_vector": "--task_vectors", "finetuned": "--finetuned"}


def recorded_kind(metadata: Mapping[str, Any]) -> str | None:
    """'pretrained' or 'task_vector' as a file's metadata records it, else None (not recorded)."""
    kind = metadata.get("kind")
    return kind if kind in ("pretrained", "task_vector") else FORMAT_KINDS.get(str(metadata.get("format")))


def check_kind(metadata: Mapping[str, Any], label: str, expected: str) -> None:
    """Refuse an input whose metadata says it is another kind than `expected` (pretrained, task_vector,
    finetuned): theta_pre given as a task vector would add the weights again, a task vector given as
    fine-tuned weights would subtract theta_pre from a delta, theta_pre given as fine-tuned adds nothing."""
    kind = recorded_kind(metadata)
    if kind is None or kind == expected:
        return
    if expected == "finetuned" and kind == "pretrained":
        raise ValueError(f"{label} is {KIND_WORDS[kind]} itself, not fine-tuned weights: its task vector is zero; "
                         "give the fine-tuned checkpoints")
    raise ValueError(f"{label}: its metadata says it is {KIND_WORDS[kind]}, not {KIND_WORDS[expected]}; "
                     f"give it with {KIND_FLAGS[kind]}")


FULL_WEIGHTS_RATIO = 0.5


class InputWarning(UserWarning):
    """An input that is probably of the wrong kind, where no metadata says so (`weaving` prints it as one line)."""


def looks_like_full_weights(task_vector: Any, pretrained: Any, label: str, keys: int = 4) -> str | None:
    """A warning when a task vector without a recorded kind looks like full fine-tuned weights (None when
    it does not). The heuristic: over the first `keys` floating-point matrices both hold, ||tau|| /
    ||theta_pre|| above FULL_WEIGHTS_RATIO (0.5). Fine-tuning moves weights by a few percent, so a task vector
    is far smaller than the weights; a full checkpoint is about as large as them (ratio near 1)."""
    if recorded_kind(getattr(task_vector, "metadata", {}) or {}) is not None:
        return None
    shared = [k for k in pretrained.keys() if k in set(task_vector.keys()) and len(pretrained.shape(k)) >= 2
              and pretrained.dtype(k).is_floating_point][:keys]
    if not shared:
        return None
    delta = sum(float(task_vector.get(k).double().square().sum()) for k in shared) ** 0.5
    base = sum(float(pretrained.get(k).double().square().sum()) for k in shared) ** 0.5
    if not base or not delta / base > FULL_WEIGHTS_RATIO:  # NaN (a damaged file): the finite check says so
        return None
    return (f"{label} looks like full fine-tuned weights, not a task vector: ||tau|| / ||theta_pre|| = "
            f"{delta / base:.2f} over {len(shared)} tensors (task vectors are usually below 0.1); if it is a "
            "fine-tuned checkpoint, give it with --finetuned")


@dataclass
class Run:
    """Task vector files by task name (in run order) and the identity of the run they belong to."""

    paths: dict[str, Path]
    identity: RunIdentity = field(default_factory=RunIdentity)
    seed: int | None = None
    stream: str | None = None
    root: Path | None = None
    pretrained_file: Path | None = None
    metadata: dict[str, dict[str, Any]] = field(default_factory=dict)
    zero_entries: int = 0  # index.json's: zero-delta entries the official CLIP harnesses add

    @property
    def model(self) -> str | None:
        return self.identity.model

    @property
    def pretrained(self) -> str | None:
        return self.identity.pretrained

    @property
    def run_id(self) -> str | None:
        return self.identity.run_id

    @property
    def pretrained_hash(self) -> str | None:
        return self.identity.pretrained_hash

    def select(self, tasks: Sequence[str] | None) -> "Run":
        """Only `tasks` (in that order); None keeps all. Unknown names -> ValueError listing the known ones."""
        if tasks is None:
            return self
        missing = [t for t in tasks if t not in self.paths]
        if missing:
            raise ValueError(f"no task vectors for {missing}; available: {', '.join(self.paths)}")
        return Run({t: self.paths[t] for t in tasks}, self.identity, self.seed, self.stream, self.root,
                   self.pretrained_file, {t: self.metadata.get(t, {}) for t in tasks}, self.zero_entries)


def read_index(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The parsed `index.json` of a task_vectors folder (None when absent); unreadable -> one-line ValueError."""
    path = Path(folder) / INDEX_NAME
    if not path.is_file():
        return None
    try:
        index = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error}); delete it or rerun the fine-tuning") from None
    if not isinstance(index, dict) or not isinstance(index.get("task_vectors"), list):
        raise ValueError(f"{path}: expected {{\"task_vectors\": [...]}} as `weaving fit` writes it (format "
                         f"{RUN_FORMAT}); delete it or rerun the fine-tuning")
    return index


def _index_entries(folder: Path, index: Mapping[str, Any]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """Entries of the index.json that `weaving fit` writes: {"task_vectors": [{"task", "file", ...}]}."""
    found = {}
    for entry in index["task_vectors"]:
        if not isinstance(entry, Mapping) or not entry.get("task") or not entry.get("file"):
            raise ValueError(f"{folder / INDEX_NAME}: every entry needs a 'task' and a 'file', got {entry!r}")
        found[str(entry["task"])] = (inside(folder, str(entry["file"]), str(folder / INDEX_NAME)), dict(entry))
    return found


def disagreement(folder: Path, index: Mapping[str, Any], entries: Mapping[str, tuple[Path, dict[str, Any]]]) -> str | None:
    """How a task_vectors folder's index.json and files disagree, in words (None when they agree): tasks of
    the run's stream without a task vector (a fit that stopped, an entry lost), or task vector files the
    index does not list. Such a folder is not the run's result; only an explicit choice of tasks reads it."""
    listed = {path.name for path, _ in entries.values()}
    unlisted = sorted(p.name for p in folder.glob("*.safetensors") if p.name not in listed)
    stream = [str(task) for task in index.get("tasks") or []]
    unfinished = [task for task in stream if task not in entries]
    problems = []
    if unfinished:
        problems.append(f"{len(unfinished)} of its {len(stream)} tasks have no task vector ({', '.join(unfinished[:5])}"
                        f"{', ...' if len(unfinished) > 5 else ''}; a fit that stopped early: resume it with --ckpt_path last)")
    if unlisted:
        problems.append(f"{len(unlisted)} task vector files are not in its index ({', '.join(unlisted[:5])}"
                        f"{', ...' if len(unlisted) > 5 else ''})")
    if not problems:
        return None
    return (f"{folder / INDEX_NAME} does not cover the run: {'; '.join(problems)}; to merge only some task vectors, "
            "name them (their files, or the tasks to use)")


def _read_item(item: Path) -> tuple[dict[str, tuple[Path, dict[str, Any]]], dict[str, Any] | None, Path | None, Path]:
    """Entries (task -> file, index entry), index, run root and folder of one run folder, folder or file."""
    folder, root = item, None
    if (folder / TASK_VECTORS_DIR).is_dir():
        root, folder = folder, folder / TASK_VECTORS_DIR
    elif folder.name == TASK_VECTORS_DIR:
        root = folder.parent
    if folder.is_file():
        return {folder.stem: (folder, {})}, None, None, folder.parent
    if not folder.is_dir():
        raise FileNotFoundError(f"task vectors: {item}: no such file or folder (give a run folder, a task_vectors "
                                "folder or .safetensors files); run `weaving fit` first or fix the path")
    index = read_index(folder)
    entries = (_index_entries(folder, index) if index is not None
               else {p.stem: (p, {}) for p in sorted(folder.glob("*.safetensors"))})
    if not entries:
        raise FileNotFoundError(f"task vectors: no *.safetensors files in {item}; run `weaving fit` first")
    return entries, index, root, folder


def read_run(source: str | os.PathLike | Sequence[str | os.PathLike], *, allow_mixed: bool = False,
             tasks: Sequence[str] | None = None) -> Run:
    """Task vectors and their run identity from a run folder (uses RUN/task_vectors/), a task_vectors
    folder, one file, or a list of any of these; `tasks`: only those (in that order, see `Run.select`).

    A folder must hold its whole run (`disagreement`: every task of the stream has its task vector, every
    file is in index.json) unless `tasks` names the ones wanted, e.g. a prefix of a stopped run.

    Order: index.json's when present, else sorted file names (or the list's order). Task names come from
    the index / file metadata ("task"), else the file stem. Unless `allow_mixed`, every file must share the
    base model (theta_pre hash, model, pretrained) with the others, and the run id with index.json and with
    the other files of its folder: one folder holds one run; runs in separate folders (one fine-tuning per
    task) merge when their base agrees.
    """
    items = [source] if isinstance(source, (str, os.PathLike)) else list(source)
    if not items:
        raise FileNotFoundError("task vectors: an empty list; give a run folder or task vector files")
    paths: dict[str, Path] = {}
    metadata: dict[str, dict[str, Any]] = {}
    labelled: list[tuple[str, RunIdentity]] = []
    by_folder: dict[Path, list[tuple[str, RunIdentity]]] = {}
    first_index, first_root = None, None
    for item in items:
        entries, index, root, folder = _read_item(Path(item))
        problem = disagreement(folder, index, entries) if index is not None and tasks is None else None
        if problem:
            raise ValueError(problem)
        if first_index is None and len(items) == 1:
            first_index, first_root = index, root
        group = by_folder.setdefault(folder.resolve(), [])
        if index is not None:
            group.append((str(folder / INDEX_NAME), RunIdentity.from_mapping(index)))
        for stem, (path, extra) in entries.items():
            if not path.is_file():
                raise FileNotFoundError(f"task vector file {path} is missing; rerun the fine-tuning that writes it")
            own = read_metadata(path)
            check_kind(own, str(path), "task_vector")
            meta = {**own, **extra}
            name = str(extra.get("task") or meta.get("task") or stem)
            if name in paths:
                raise ValueError(f"task vectors: two files for task {name!r} ({paths[name]}, {path}); give each task once")
            paths[name], metadata[name] = path, meta
            labelled.append((str(path), RunIdentity.from_mapping(own)))
            group.append(labelled[-1])
    for group in by_folder.values():
        check_same_base(group, allow_mixed=allow_mixed)
    check_same_base(labelled, allow_mixed=allow_mixed, same_run=False)
    first = first_index if first_index is not None else next(iter(metadata.values()))
    identity = RunIdentity.from_mapping(first)
    seed = _none(first.get("seed"))
    pretrained_file = None
    if first_index is not None and first_index.get("pretrained_file") and first_root is not None:
        pretrained_file = inside(first_root, first_index["pretrained_file"], str(first_root / TASK_VECTORS_DIR / INDEX_NAME))
    zero_entries = (first_index or {}).get("zero_entries") or 0
    if isinstance(zero_entries, bool) or not isinstance(zero_entries, int) or zero_entries < 0:
        raise ValueError(f"{first_root}: index.json's zero_entries must be a whole number >= 0, got {zero_entries!r}")
    return Run(paths, identity, None if seed is None else int(seed), _none(first.get("stream")), first_root,
               pretrained_file, metadata, zero_entries).select(tasks)


def index_payload(identity: RunIdentity, *, pretrained_file: str | None, seed: int | None, stream: str | None,
                  tasks: Sequence[str], entries: Iterable[Mapping[str, Any]], zero_entries: int = 0) -> dict[str, Any]:
    """The index.json object of a run (see module docstring)."""
    return {"format": RUN_FORMAT, "run_id": identity.run_id, "model": identity.model,
            "pretrained": identity.pretrained, "pretrained_file": pretrained_file,
            "pretrained_hash": identity.pretrained_hash, "seed": seed, "stream": stream, "tasks": list(tasks),
            "zero_entries": zero_entries, "task_vectors": [dict(e) for e in entries]}


def write_index(run_dir: str | os.PathLike, payload: Mapping[str, Any]) -> Path:
    """Write RUN/task_vectors/index.json atomically."""
    from weaving.io.publish import atomic_write_text

    return atomic_write_text(Path(run_dir) / TASK_VECTORS_DIR / INDEX_NAME, json.dumps(payload, indent=2))


def run_contents(run_dir: str | os.PathLike) -> list[Path]:
    """What a previous run left in RUN: index.json, task vectors and pretrained.safetensors (sorted)."""
    run_dir = Path(run_dir)
    folder = run_dir / TASK_VECTORS_DIR
    found = sorted(folder.glob("*.safetensors")) + ([folder / INDEX_NAME] if (folder / INDEX_NAME).is_file() else [])
    if (run_dir / PRETRAINED_FILE).is_file():
        found.append(run_dir / PRETRAINED_FILE)
    return found


def pretrained_source(source: str | os.PathLike) -> Path:
    """theta_pre's file from a file or a run folder (the file its index.json names, by default
    RUN/pretrained.safetensors); a run fine-tuned from a public tag without that file is a one-line error."""
    path = Path(source)
    if path.is_dir():
        index = read_index(path / TASK_VECTORS_DIR)
        name = (index or {}).get("pretrained_file") or PRETRAINED_FILE
        file = inside(path, str(name), str(path / TASK_VECTORS_DIR / INDEX_NAME))
        if not file.is_file():
            tag = (index or {}).get("pretrained")
            hint = (f" (the run was fine-tuned from the public tag {tag!r}: export it first)" if tag else
                    "; pass theta_pre's safetensors file or a run written by `weaving import` / `weaving fit`")
            raise FileNotFoundError(f"{path}: a run folder without {name}{hint}")
        return file
    return path


def task_vector_paths(sources: Sequence[str | os.PathLike]) -> list[str]:
    """Folders (a run or its task_vectors/) expand to their task vector files, in the run's order; model
    folders (Hugging Face layout) and files pass through."""
    paths: list[str] = []
    for source in sources:
        if Path(source).is_dir() and not is_weights_folder(source):
            paths += [str(p) for p in read_run(source).paths.values()]
        else:
            paths.append(str(source))
    return paths


def recorded_model(pretrained: str, task_vectors: Sequence[str]) -> str | None:
    """The open_clip model name the inputs record in their metadata (theta_pre first), or None."""
    for path in [pretrained, *task_vectors]:
        if str(path).endswith(".safetensors") and Path(path).is_file():
            model = read_metadata(path).get("model")
            if model:
                return model
    return None
