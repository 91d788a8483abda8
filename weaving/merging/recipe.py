"""Merge recipes: one YAML file (or mapping) that says what to merge, how, and where to write it.

    inputs:
      pretrained: meta-llama/Llama-3.2-1B      # a file, a Hugging Face folder (sharded or not) or a hub id
      finetuned:                               # or task_vectors: [...]
        - model: ./math-ft                     # a location, with an optional weight (scales its task vector)
          weight: 0.7
        - ./code-ft                            # weight 1
    method:
      ties: {k: 0.2}                           # or just `method: task_arithmetic`
    lam: 1.0                                   # one merge ...
    weaving:                                   # ... or Weight Weaving (instead of lam)
      lambdas: 0.1:1.0:0.1                     # any search space (weaving.merging.search_space)
      grid: {k: [0.1, 0.2]}
      pooling: mean
      include_deltas: true
    dtype: bfloat16                            # output dtype (default: the pretrained weights')
    output: ./merged                           # a folder (Hugging Face layout) or a .safetensors file
    out_shard_size: 2GB                        # folder output only
    device: cpu
    seed: 0

`run_recipe` checks the whole recipe and the output path before reading any weights, streams the merged
tensors to disk one at a time, and copies config.json and tokenizer files from a pretrained folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping, Sequence
from contextlib import closing, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from weaving.io.hub import resolve_location
from weaving.io.loader import open_checkpoint, weights_hashes
from weaving.io.publish import check_writable
from weaving.io.runs import recorded_model
from weaving.io.sizes import layout_bytes, parse_size
from weaving.io.source import TensorSource
from weaving.io.writer import check_streamed_output, save_streamed
from weaving.merging.distributed import init_process_group, save_distributed, stop_together
from weaving.merging.engine import iter_assemble, output_layout, prepare_merge, resolve_device
from weaving.merging.exporters import check_export, export
from weaving.merging.model_card import describe_folder
from weaving.merging.registry import get_method, get_pooling
from weaving.merging.search_space import check_keys, load_yaml as load_yaml_text, number, parse_search_space
from weaving.merging.sources import DifferenceSource, LastReadSource, ScaledSource
from weaving.merging.weave import prepare_weave
from weaving.io.runs import InputWarning, check_kind, looks_like_full_weights

TOP_KEYS = ("inputs", "method", "lam", "weaving", "dtype", "output", "out_shard_size", "device", "seed", "format", "model",
            "overwrite")
INPUT_KEYS = ("pretrained", "finetuned", "task_vectors")
ENTRY_KEYS = ("model", "weight")
WEAVING_KEYS = ("lambdas", "grid", "points", "pooling", "include_deltas")
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}


@dataclass
class InputModel:
    location: str
    weight: float = 1.0


@dataclass
class Recipe:
    """A checked recipe (see the module docstring); every field is what the YAML key of that name says."""

    pretrained: str
    models: list[InputModel]
    method: str
    output: str
    finetuned: bool = True
    method_args: dict[str, Any] = field(default_factory=dict)
    lam: float = 1.0
    weaving: dict[str, Any] | None = None
    dtype: str | None = None
    out_shard_size: int | str | None = None
    device: str | None = None
    seed: int = 0
    format: str | None = None  # a whole-model format (weaving.merging.exporters), e.g. open_clip or hf
    model: str | None = None  # the model name (or model-config JSON) of `format`; default: the inputs' record
    overwrite: bool = False  # replace an existing output (or an input given as the output)


def _location(value: Any, where: str) -> str:
    if not isinstance(value, (str, os.PathLike)) or not str(value):
        raise ValueError(f"recipe: {where} must be a path, a folder or a hub id, got {value!r}")
    return str(value)


def parse_recipe(recipe: Mapping[str, Any] | str | os.PathLike) -> Recipe:
    """A recipe mapping (or YAML file) -> a checked `Recipe`; any mistake is a one-line ValueError."""
    if not isinstance(recipe, Mapping):
        recipe = load_yaml(recipe)
    check_keys(recipe, TOP_KEYS, "the recipe", "recipe")
    for key in ("inputs", "method", "output"):
        if key not in recipe:
            raise ValueError(f"recipe: missing {key!r} (a recipe needs inputs, method and output)")
    inputs = recipe["inputs"]
    if not isinstance(inputs, Mapping):
        raise ValueError("recipe: inputs must be a mapping with pretrained and finetuned (or task_vectors)")
    check_keys(inputs, INPUT_KEYS, "inputs", "recipe")
    if "pretrained" not in inputs:
        raise ValueError("recipe: inputs needs 'pretrained' (the base model)")
    if ("finetuned" in inputs) == ("task_vectors" in inputs):
        raise ValueError("recipe: inputs needs exactly one of 'finetuned' or 'task_vectors'")
    kind = "finetuned" if "finetuned" in inputs else "task_vectors"
    entries = inputs[kind]
    if isinstance(entries, (str, Mapping)):
        entries = [entries]
    if not isinstance(entries, Sequence) or not entries:
        raise ValueError(f"recipe: inputs.{kind} must be a non-empty list of models")
    models = []
    for i, entry in enumerate(entries):
        where = f"inputs.{kind}[{i}]"
        if isinstance(entry, Mapping):
            check_keys(entry, ENTRY_KEYS, where, "recipe")
            if "model" not in entry:
                raise ValueError(f"recipe: {where} needs 'model' (a path, folder or hub id)")
            weight = number(entry.get("weight", 1.0), f"recipe: {where}.weight")
            models.append(InputModel(_location(entry["model"], f"{where}.model"), weight))
        else:
            models.append(InputModel(_location(entry, where)))
    method, method_args = _parse_method(recipe["method"])
    weaving = recipe.get("weaving")
    if weaving is not None:
        if "lam" in recipe:
            raise ValueError("recipe: give lam (one merge) or a weaving block (Weight Weaving), not both")
        if not isinstance(weaving, Mapping):
            raise ValueError("recipe: weaving must be a mapping (lambdas, grid, points, pooling, include_deltas)")
        check_keys(weaving, WEAVING_KEYS, "weaving", "recipe")
        weaving = dict(weaving)
    dtype = recipe.get("dtype")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"recipe: unknown dtype {dtype!r}; known: {', '.join(DTYPES)}")
    seed = recipe.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"recipe: seed must be a whole number, got {seed!r}")
    device = recipe.get("device")
    if device is not None and not isinstance(device, str):
        raise ValueError(f"recipe: device must be a string like 'cpu' or 'cuda:0', got {device!r}")
    parsed = Recipe(
        pretrained=_location(inputs["pretrained"], "inputs.pretrained"), models=models, method=method,
        output=_location(recipe["output"], "output"), finetuned=kind == "finetuned", method_args=method_args,
        lam=number(recipe.get("lam", 1.0), "recipe: lam"), weaving=weaving, dtype=dtype,
        out_shard_size=recipe.get("out_shard_size"), device=device, seed=seed,
    )
    for key in ("format", "model"):
        if recipe.get(key) is not None and not isinstance(recipe[key], str):
            raise ValueError(f"recipe: {key} must be a name, got {recipe[key]!r}")
    if not isinstance(recipe.get("overwrite", False), bool):
        raise ValueError(f"recipe: overwrite must be true or false, got {recipe['overwrite']!r}")
    parsed.format, parsed.model, parsed.overwrite = recipe.get("format"), recipe.get("model"), recipe.get("overwrite", False)
    check_recipe(parsed)
    return parsed


def _parse_method(method: Any) -> tuple[str, dict[str, Any]]:
    if isinstance(method, str):
        return method, {}
    if isinstance(method, Mapping) and len(method) == 1:
        (name, args), = method.items()
        if args is None:
            args = {}
        if not isinstance(name, str) or not isinstance(args, Mapping):
            raise ValueError(f"recipe: method must look like 'ties' or {{ties: {{k: 0.2}}}}, got {dict(method)!r}")
        return name, dict(args)
    raise ValueError(f"recipe: method must be a name ('ties') or one name with its hyper-parameters "
                     f"({{ties: {{k: 0.2}}}}), got {method!r}")


def check_recipe(recipe: Recipe) -> None:
    """Everything that can be checked without reading weights: method, search space, pooling, output."""
    spec = get_method(recipe.method)
    spec.resolve(recipe.method_args)
    if recipe.weaving is not None:
        weaving = recipe.weaving
        points = parse_search_space(weaving.get("lambdas"), weaving.get("grid"), weaving.get("points"))
        for point in points:
            clash = sorted(set(point.setting) & set(recipe.method_args))
            if clash:
                raise ValueError(f"recipe: {clash[0]!r} is both under the method and in the weaving search space")
            spec.resolve({**recipe.method_args, **point.setting})
        get_pooling(weaving.get("pooling", "mean"))
        if not isinstance(weaving.get("include_deltas", True), bool):
            raise ValueError(f"recipe: weaving.include_deltas must be true or false, got {weaving['include_deltas']!r}")
    inputs = [recipe.pretrained, *(model.location for model in recipe.models)]
    if recipe.format is None:
        check_streamed_output(recipe.output, parse_size(recipe.out_shard_size), overwrite=recipe.overwrite, inputs=inputs)
        return
    if recipe.weaving is not None and (recipe.weaving.get("grid") is not None or recipe.weaving.get("points") is not None) \
            or recipe.dtype is not None or recipe.out_shard_size is not None:
        raise ValueError(f"format {recipe.format} exports one model in the pretrained's dtype: grids, points, dtype and "
                         "out_shard_size work without a format")
    check_export(recipe.format, recipe.output, export_model(recipe), overwrite=recipe.overwrite, inputs=inputs)


def export_model(recipe: Recipe) -> str | None:
    """The model a format export writes: the recipe's, else the one the inputs record in their metadata."""
    return recipe.model or recorded_model(recipe.pretrained, [model.location for model in recipe.models])


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    import yaml

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such recipe file")
    try:
        content = load_yaml_text(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not a readable YAML file ({' '.join(str(error).split())})") from None
    if not isinstance(content, Mapping):
        raise ValueError(f"{path}: a recipe is a YAML mapping (inputs, method, output, ...)")
    return dict(content)


def open_models(recipe: Recipe) -> tuple[TensorSource, list[TensorSource], Path | None]:
    """The pretrained source, the (weighted, lazy) task vectors, and the pretrained's folder (for its
    config and tokenizer files; None when the pretrained is a lone file).

    Each input must be the kind its place says (`weaving.io.runs.check_kind`: theta_pre, fine-tuned weights or
    a task vector, as its metadata records), and each model is given once; a task vector without a recorded
    kind that looks like full weights is warned about (`weaving.io.runs.looks_like_full_weights`)."""
    kind = "finetuned" if recipe.finetuned else "task_vector"
    base_path = resolve_location(recipe.pretrained)
    base = open_checkpoint(base_path, recipe.pretrained)
    check_kind(base.metadata, f"inputs.pretrained {recipe.pretrained}", "pretrained")
    pretrained = LastReadSource(base)
    seen: dict[Path, int] = {base_path.resolve(): -1}
    task_vectors: list[TensorSource] = []
    for i, model in enumerate(recipe.models):
        where = f"inputs.{'finetuned' if recipe.finetuned else 'task_vectors'}[{i}] {model.location}"
        path = resolve_location(model.location)
        first = seen.setdefault(path.resolve(), i)
        if first == -1:
            raise ValueError(f"{where} is the pretrained model itself: its task vector is zero; give the fine-tuned models")
        if first != i:
            raise ValueError(f"{where}: the same model as entry {first}; give each model once (a weight scales one)")
        source = open_checkpoint(path, model.location)
        check_kind(source.metadata, where, kind)
        if recipe.finetuned:
            source = DifferenceSource(source, pretrained)
        else:
            warning = looks_like_full_weights(source, base, where)
            if warning:
                warnings.warn(warning, InputWarning, stacklevel=2)
        task_vectors.append(source if model.weight == 1.0 else ScaledSource(source, model.weight))
    side_files = base_path if base_path.is_dir() else base_path.parent if base_path.name.endswith(".index.json") else None
    return pretrained, task_vectors, side_files


def run_recipe(recipe: Recipe | Mapping[str, Any] | str | os.PathLike, progress: bool | None = None) -> Path:
    """Merge (or weave) as the recipe says and write the output, tensor by tensor; returns the output path."""
    if not isinstance(recipe, Recipe):
        recipe = parse_recipe(recipe)
    else:
        check_recipe(recipe)
    distributed = init_process_group(resolve_device(recipe.device))
    if distributed and Path(recipe.output).suffix == ".safetensors":
        raise ValueError(f"output {recipe.output}: a distributed merge writes a folder (shards per rank); give a folder name")
    with stop_together() if distributed else nullcontext():  # an error on one rank stops every rank
        pretrained, task_vectors, base_folder = open_models(recipe)
        output = Path(recipe.output)
        size = layout_bytes(pretrained.layout(DTYPES[recipe.dtype] if recipe.dtype else None))
        check_writable(output if output.suffix == ".safetensors" else output / "model.safetensors", expected_bytes=size)
        if recipe.weaving is None:
            inputs, delta_for, description = prepare_merge(pretrained, task_vectors, recipe.method, recipe.lam,
                                                           device=recipe.device, seed=recipe.seed, hparams=recipe.method_args,
                                                           distributed=distributed)
        else:
            weaving = recipe.weaving
            inputs, delta_for, description = prepare_weave(
                pretrained, task_vectors, recipe.method, weaving.get("lambdas"), weaving.get("pooling", "mean"),
                weaving.get("include_deltas", True), device=recipe.device, seed=recipe.seed, hparams=recipe.method_args,
                grid=weaving.get("grid"), points=weaving.get("points"), distributed=distributed)
    dtype = DTYPES[recipe.dtype] if recipe.dtype else None
    def describe_output(folder: Path) -> None:
        describe_folder(folder, recipe)

    # closing: on an error or Ctrl-C the progress bar ends before the message, not after it at exit
    with closing(iter_assemble(inputs, delta_for, description, progress, dtype)) as items:
        if recipe.format is not None:  # one whole model, written by the exporter of its family
            if distributed:
                raise ValueError(f"format {recipe.format}: a whole-model export runs in one process")
            recipe.model = check_export(recipe.format, recipe.output, export_model(recipe), overwrite=recipe.overwrite)
            return export(recipe.format, recipe.output, dict(items), recipe.model, json.loads(describe(recipe)),
                          overwrite=recipe.overwrite, extra_files=describe_output)
        save = save_distributed if distributed else save_streamed
        return save(recipe.output, *((inputs,) if distributed else ()), output_layout(inputs, dtype), items,
                    shard_size=recipe.out_shard_size, metadata={"weaving_recipe": describe(recipe)}, copy_from=base_folder,
                    overwrite=recipe.overwrite, extra_files=describe_output)


def describe(recipe: Recipe) -> str:
    """The recipe as JSON, stored in the output's metadata (what was merged, how); a format export adds the
    model and the sha256 of every input's weights."""
    described: dict[str, Any] = {"method": recipe.method, "hparams": recipe.method_args}
    described.update(recipe.weaving if recipe.weaving is not None else {"lam": recipe.lam})
    described.update(seed=recipe.seed, pretrained=recipe.pretrained, inputs=[m.location for m in recipe.models],
                     weights=[m.weight for m in recipe.models], finetuned=recipe.finetuned, dtype=recipe.dtype)
    if recipe.format is not None:
        described.update(format=recipe.format, model=export_model(recipe), input_sha256={
            file: digest for location in [recipe.pretrained, *described["inputs"]]
            for file, digest in weights_hashes(location).items()})
    return json.dumps(described, default=str)


def recipe_from_options(*, pretrained: str, finetuned: Sequence[str] | None, task_vectors: Sequence[str] | None,
                        method: str, output: str, method_args: Mapping[str, Any] | None = None,
                        lam: float | None = None, lambdas: Any = None, grid: Mapping[str, Any] | None = None,
                        points: Sequence[Mapping[str, Any]] | None = None, pooling: str = "mean",
                        include_deltas: bool = True, dtype: str | None = None, out_shard_size: int | str | None = None,
                        device: str | None = None, seed: int = 0, format: str | None = None, model: str | None = None,
                        overwrite: bool = False) -> Recipe:
    """The recipe that `weaving merge`'s flags describe (weaving when lambdas, grid or points are given)."""
    if bool(finetuned) == bool(task_vectors):
        raise ValueError("give exactly one of --finetuned FILE... or --task_vectors FILE...")
    weaving_block = None
    if lambdas is not None or grid is not None or points is not None:
        if lam is not None:
            raise ValueError("give --lam (one merge) or --lambdas (Weight Weaving), not both")
        weaving_block = {"pooling": pooling, "include_deltas": include_deltas}
        weaving_block.update({k: v for k, v in (("lambdas", lambdas), ("grid", grid), ("points", points)) if v is not None})
    recipe = {"inputs": {"pretrained": pretrained, "finetuned" if finetuned else "task_vectors": list(finetuned or task_vectors)},
              "method": {method: dict(method_args or {})}, "output": output, "seed": seed,
              **({"weaving": weaving_block} if weaving_block else {"lam": 1.0 if lam is None else lam}),
              **{k: v for k, v in (("dtype", dtype), ("out_shard_size", out_shard_size), ("device", device),
                                   ("format", format), ("model", model)) if v is not None},
              "overwrite": overwrite}
    return parse_recipe(recipe)


def is_recipe_file(path: str | os.PathLike) -> bool:
    """Whether a `--config` file is a recipe (it has an `inputs` block) rather than flags as YAML."""
    try:
        return "inputs" in load_yaml(path)
    except (ValueError, FileNotFoundError):
        return False
