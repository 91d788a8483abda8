"""Merge recipes: one flat schema (`Recipe`) says what to merge, how, and where to write it.

The keys of a recipe are the flags of `weaving merge`, so a YAML file, the flags and the Python API are
one schema, read by one parser (`recipe_parser`):

    pretrained: meta-llama/Llama-3.2-1B      # a file, a Hugging Face folder (sharded or not), a run folder or a hub id
    finetuned:                               # or task_vectors: [...]; one location or a list
      - model: ./math-ft                     # a location with an optional weight (scales its task vector)
        weight: 0.7
      - ./code-ft                            # weight 1
    method: ties
    method_args: {k: 0.2}
    lam: 1.0                                 # one merge ... or Weight Weaving (instead of lam):
    # lambdas: 0.1:1.0:0.1                   # any search space (weaving.merging.search_space)
    # grid: {k: [0.1, 0.2]}
    # pooling: mean
    dtype: bfloat16                          # output dtype (default: the pretrained weights')
    output: ./merged                         # a folder (Hugging Face layout) or a .safetensors file

    weaving merge --config recipe.yaml --output other --lambdas 0.1:1.0:0.1    # flags override keys

A mergekit YAML (a top-level `merge_method`) is turned into this schema by weaving.merging.mergekit.
`run_recipe` checks the whole recipe and the output path before reading any weights, streams the merged
tensors to disk one at a time, and copies config.json and tokenizer files from a pretrained folder.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Mapping
from contextlib import closing, nullcontext
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Optional, Union

import torch

from weaving.errors import UserError
from weaving.io.hub import resolve_location
from weaving.io.loader import as_source, is_weights_folder, open_checkpoint, weights_hashes
from weaving.io.publish import check_writable
from weaving.io.runs import (InputWarning, RunIdentity, check_kind, check_same_base, looks_like_full_weights,
                             pretrained_source, read_run, recorded_model, task_vector_paths)
from weaving.io.sizes import layout_bytes, parse_size
from weaving.io.source import TensorSource
from weaving.io.writer import check_streamed_output, save_streamed
from weaving.merging.distributed import init_process_group, save_distributed, stop_together
from weaving.merging.engine import iter_assemble, output_layout, prepare_merge, resolve_device
from weaving.merging.exporters import check_export, export
from weaving.merging.model_card import describe_folder
from weaving.merging.registry import METHODS, get_method, get_pooling, with_recorded_zero_entries
from weaving.merging.search_space import SpaceValue, parse_search_space
from weaving.schema import load_yaml as load_yaml_text
from weaving.merging.sources import DifferenceSource, LastReadSource, ScaledSource
from weaving.merging.weave import prepare_weave

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float64": torch.float64}
Dtype = Literal["float32", "fp32", "float16", "fp16", "bfloat16", "bf16", "float64"]


@dataclass
class InputModel:
    """One input model, with a weight that scales its task vector before the method sees it.

    Args:
        model: A .safetensors file, a Hugging Face folder (sharded or not), a run folder or a hub id.
        weight: Multiplies the model's task vector (default 1).
    """

    model: str
    weight: float = 1.0


Models = Union[str, list[Union[str, InputModel]]]


@dataclass
class Recipe:
    """Merge fine-tuned checkpoints or task vectors, with a fixed lambda (lam) or with Weight Weaving
    (lambdas, grid or points). Every key is also a flag of `weaving merge`.

    Args:
        pretrained: The base model theta_pre: a .safetensors file, a Hugging Face folder, a run folder (its
            pretrained.safetensors) or a hub id.
        method: The merge method (docs/methods.md lists them).
        output: A .safetensors file, or a folder (Hugging Face layout; config and tokenizer copied from a
            pretrained folder); written atomically.
        finetuned: Fine-tuned models (task vectors are computed from them): one location or a list, each
            a location or {model: location, weight: number}.
        task_vectors: Task vectors theta_t - theta_pre (files or run folders), instead of finetuned.
        method_args: The method's hyper-parameters, e.g. '{k: 0.2}' for ties.
        lam: Scale of the merged delta, theta_pre + lam * g (one merge; default 1.0).
        lambdas: Weight Weaving search space: 'start:stop:step' (inclusive), '0.1,0.5,1.0', a YAML list, a
            distribution or a per-layer lambda (docs/evaluation.md, 'Search spaces').
        grid: Weight Weaving over the method's hyper-parameters too, e.g. '{k: [0.1, 0.2]}'.
        points: Explicit weaving points, e.g. '[{lam: 0.5, k: 0.1}, {lam: 1.0, k: 0.2}]'. (lambdas, grid and
            points are checked by the search-space parser, at most 10,000 points, before any reading.)
        pooling: Weaving pooling: mean, random, magmax, or any merge method name.
        include_deltas: Pool the task vectors together with the lambda-scaled merges.
        dtype: Output dtype of floating tensors (default: the pretrained's).
        out_shard_size: Write a folder in shards of at most this size, e.g. 2GB.
        device: cpu (default), cuda or cuda:N.
        seed: Seed of random methods (dare, dare_ties) and random pooling.
        format: Write one whole CLIP model: open_clip or hf (default: the merged tensors as they are).
        model: open_clip model name, or an open_clip model-config JSON file, for format (default: the one
            the inputs record).
        overwrite: Replace an output that exists, or an input given as the output (default: refuse).
        allow_mixed: Merge task vectors whose base model or run identities disagree (default: refuse).
    """

    pretrained: str
    method: str
    output: str
    finetuned: Optional[Models] = None
    task_vectors: Optional[Models] = None
    method_args: Optional[dict[str, Any]] = None
    lam: Optional[float] = None
    lambdas: SpaceValue = None
    grid: SpaceValue = None
    points: SpaceValue = None
    pooling: str = "mean"
    include_deltas: bool = True
    dtype: Optional[Dtype] = None
    out_shard_size: Optional[Union[int, str]] = None
    device: Optional[str] = None
    seed: int = 0
    format: Optional[str] = None
    model: Optional[str] = None
    overwrite: bool = False
    allow_mixed: bool = False

    def __post_init__(self) -> None:
        for key in ("finetuned", "task_vectors"):  # one location or a list -> a list of InputModel
            value = getattr(self, key)
            if value is not None:
                setattr(self, key, [_input_model(v) for v in (value if isinstance(value, list) else [value])])
        self.method_args = dict(self.method_args or {})

    @property
    def from_finetuned(self) -> bool:
        return self.task_vectors is None

    @property
    def models(self) -> list[InputModel]:
        return list((self.finetuned if self.from_finetuned else self.task_vectors) or [])

    @property
    def weaving(self) -> dict[str, Any] | None:
        """The Weight Weaving part (lambdas, grid, points, pooling, include_deltas); None for one merge."""
        space = {k: getattr(self, k) for k in ("lambdas", "grid", "points") if getattr(self, k) is not None}
        return {"pooling": self.pooling, "include_deltas": self.include_deltas, **space} if space else None

    @property
    def scale(self) -> float:
        return 1.0 if self.lam is None else self.lam


def _input_model(value: Any) -> InputModel:
    if isinstance(value, InputModel):
        return value
    if isinstance(value, Mapping):
        return InputModel(**value)
    return InputModel(str(value))


RECIPE_KEYS = tuple(f.name for f in fields(Recipe))
NESTED_FORM = ("a nested recipe (inputs:, method: {NAME: {...}}, weaving:) is no longer read; write its keys flat: "
               "pretrained, finetuned or task_vectors, method, method_args, lam or lambdas/grid/points/pooling, output "
               "(docs/recipes.md)")


def recipe_keys(content: Any, where: str) -> dict[str, Any]:
    """A recipe file's mapping in this schema: a mergekit YAML (top-level `merge_method`) is translated;
    the older nested form is refused with how to write it now."""
    if not isinstance(content, Mapping):
        raise UserError(f"{where}: a recipe is a YAML mapping ({', '.join(RECIPE_KEYS[:3])}, ...)")
    if "merge_method" in content:
        from weaving.merging.mergekit import recipe_from_mergekit

        return dict(recipe_from_mergekit(content))
    if "inputs" in content or "weaving" in content or isinstance(content.get("method"), Mapping):
        raise UserError(f"{where}: {NESTED_FORM}")
    return dict(content)


def _config_action() -> type:
    """`--config FILE` of `weaving merge`: a weaving recipe as it is, a mergekit YAML translated first."""
    from jsonargparse import ActionConfigFile

    class RecipeConfig(ActionConfigFile):
        def __call__(self, parser: Any, cfg: Any, values: Any, option_string: Any = None) -> None:
            path = Path(str(values))
            if path.is_file():
                import yaml

                try:
                    content = load_yaml_text(path.read_text())
                except (OSError, yaml.YAMLError) as error:
                    raise UserError(f"{path}: not a readable YAML file ({' '.join(str(error).split())})") from None
                if isinstance(content, Mapping) and "merge_method" in content or not isinstance(content, Mapping) \
                        or "inputs" in content or "weaving" in content or isinstance(content.get("method"), Mapping):
                    values = json.dumps(recipe_keys(content, str(path)), default=str)
            self.apply_config(parser, cfg, self.dest, values)

    return RecipeConfig


def recipe_parser() -> Any:
    """The one parser of the recipe schema: `weaving merge`'s flags and --config, and `run_recipe`'s mappings."""
    import weaving.merging.methods  # noqa: F401  (fills the registry for the help text)
    from weaving.schema import command_parser

    return command_parser("weaving merge", "Merge fine-tuned checkpoints or task vectors, with a fixed lambda "
                          "(--lam) or with Weight Weaving (--lambdas). Methods: " + ", ".join(sorted(METHODS)) + ".",
                          Recipe, one_or_more=("finetuned", "task_vectors"), flags=("overwrite", "allow_mixed"),
                          config_action=_config_action())


def recipe_from_namespace(cfg: Any) -> Recipe:
    values = cfg.as_dict()
    return Recipe(**{key: values.get(key) for key in RECIPE_KEYS if key in values})


def parse_recipe(recipe: Recipe | Mapping[str, Any] | str | os.PathLike) -> Recipe:
    """A recipe (a Recipe, a mapping of its keys, or a YAML file) -> a checked `Recipe`; any mistake is a
    one-line UserError. Nothing is read but the file itself (and nothing written)."""
    if not isinstance(recipe, Recipe):
        from argparse import ArgumentError

        from weaving.errors import error_line
        from weaving.schema import parse_command

        parser = recipe_parser()
        if isinstance(recipe, Mapping):
            try:
                cfg = parser.parse_object(recipe_keys(recipe, "recipe"))
            except ArgumentError as error:
                raise UserError(error_line(error)) from None
        else:
            if not Path(recipe).is_file():
                raise FileNotFoundError(f"{recipe}: no such recipe file")
            cfg = parse_command(parser, ["--config", str(recipe)])
        recipe = recipe_from_namespace(cfg)
    check_recipe(recipe)
    return recipe


def check_recipe(recipe: Recipe) -> None:
    """Everything that can be checked without reading weights, in this order: inputs given, method and
    its hyper-parameters, search space, pooling (no file read); then run folders resolved from their
    index.json (resolve_runs); then the output path and format."""
    if (recipe.finetuned is None) == (recipe.task_vectors is None) or not recipe.models:
        raise UserError("give exactly one of finetuned or task_vectors (--finetuned FILE... or --task_vectors FILE...)")
    if recipe.lam is not None and recipe.weaving is not None:
        raise UserError("give lam (one merge) or lambdas/grid/points (Weight Weaving), not both")
    spec = get_method(recipe.method)
    resolved = spec.resolve(recipe.method_args)
    recipe.method_args = {name: resolved[name] for name in recipe.method_args}  # what the user set, checked
    weaving = recipe.weaving
    if weaving is not None:
        for point in parse_search_space(weaving.get("lambdas"), weaving.get("grid"), weaving.get("points")):
            clash = sorted(set(point.setting) & set(recipe.method_args))
            if clash:
                raise UserError(f"{clash[0]!r} is both in method_args and in the weaving search space")
            spec.resolve({**recipe.method_args, **point.setting})
        get_pooling(recipe.pooling)
    resolve_runs(recipe)
    inputs = [recipe.pretrained, *(model.model for model in recipe.models)]
    if recipe.format is None:
        check_streamed_output(recipe.output, parse_size(recipe.out_shard_size), overwrite=recipe.overwrite, inputs=inputs)
        return
    if recipe.grid is not None or recipe.points is not None or recipe.dtype is not None or recipe.out_shard_size is not None:
        raise UserError(f"format {recipe.format} exports one model in the pretrained's dtype: grid, points, dtype and "
                        "out_shard_size work without a format")
    check_export(recipe.format, recipe.output, export_model(recipe), overwrite=recipe.overwrite, inputs=inputs)


def resolve_runs(recipe: Recipe) -> None:
    """Run folders -> their files (weaving.io.runs), read from their index.json before any tensor: the
    pretrained of a run folder, its task vectors, the zero_entries it records (the default population of
    ties and pcb), and one base model across the task vectors unless allow_mixed. Idempotent."""
    if not is_weights_folder(recipe.pretrained):
        recipe.pretrained = str(pretrained_source(recipe.pretrained))
    if recipe.task_vectors is None:
        return
    locations = [model.model for model in recipe.task_vectors]
    folders = [s for s in locations if Path(s).is_dir() and not is_weights_folder(s)]
    recorded = {read_run(s, allow_mixed=recipe.allow_mixed).zero_entries for s in folders}
    if len(recorded) == 1:
        recipe.method_args = with_recorded_zero_entries(recipe.method, recipe.method_args, recorded.pop())
    if folders:
        recipe.task_vectors = [InputModel(path, model.weight) for model in recipe.task_vectors
                               for path in task_vector_paths([model.model])]
    files = [model.model for model in recipe.task_vectors]
    if all(Path(s).is_file() for s in files):
        run = read_run(files, allow_mixed=recipe.allow_mixed)  # one base model, unless allow_mixed
        meta = as_source(recipe.pretrained, "pretrained").metadata if Path(recipe.pretrained).suffix == ".safetensors" else {}
        if run.pretrained_hash and meta.get("pretrained_hash"):
            check_same_base([("the task vectors", run.identity), (recipe.pretrained, RunIdentity.from_mapping(meta))],
                            allow_mixed=recipe.allow_mixed, same_run=False)


def export_model(recipe: Recipe) -> str | None:
    """The model a format export writes: the recipe's, else the one the inputs record in their metadata."""
    return recipe.model or recorded_model(recipe.pretrained, [model.model for model in recipe.models])


def open_models(recipe: Recipe) -> tuple[TensorSource, list[TensorSource], Path | None]:
    """The pretrained source, the (weighted, lazy) task vectors, and the pretrained's folder (for its
    config and tokenizer files; None when the pretrained is a lone file).

    Each input must be the kind its place says (`weaving.io.runs.check_kind`: theta_pre, fine-tuned weights or
    a task vector, as its metadata records), and each model is given once; a task vector without a recorded
    kind that looks like full weights is warned about (`weaving.io.runs.looks_like_full_weights`)."""
    kind = "finetuned" if recipe.from_finetuned else "task_vector"
    base_path = resolve_location(recipe.pretrained)
    base = open_checkpoint(base_path, recipe.pretrained)
    check_kind(base.metadata, f"pretrained {recipe.pretrained}", "pretrained")
    pretrained = LastReadSource(base)
    seen: dict[Path, int] = {base_path.resolve(): -1}
    task_vectors: list[TensorSource] = []
    for i, model in enumerate(recipe.models):
        where = f"{'finetuned' if recipe.from_finetuned else 'task_vectors'}[{i}] {model.model}"
        path = resolve_location(model.model)
        first = seen.setdefault(path.resolve(), i)
        if first == -1:
            raise ValueError(f"{where} is the pretrained model itself: its task vector is zero; give the fine-tuned models")
        if first != i:
            raise ValueError(f"{where}: the same model as entry {first}; give each model once (a weight scales one)")
        source = open_checkpoint(path, model.model)
        check_kind(source.metadata, where, kind)
        if recipe.from_finetuned:
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
    recipe = parse_recipe(recipe)  # every option, the search space and the output path, before any reading
    distributed = init_process_group(resolve_device(recipe.device))
    if distributed and Path(recipe.output).suffix == ".safetensors":
        raise ValueError(f"output {recipe.output}: a distributed merge writes a folder (shards per rank); give a folder name")
    with stop_together() if distributed else nullcontext():  # an error on one rank stops every rank
        pretrained, task_vectors, base_folder = open_models(recipe)
        output = Path(recipe.output)
        size = layout_bytes(pretrained.layout(DTYPES[recipe.dtype] if recipe.dtype else None))
        check_writable(output if output.suffix == ".safetensors" else output / "model.safetensors", expected_bytes=size)
        if recipe.weaving is None:
            inputs, delta_for, description = prepare_merge(pretrained, task_vectors, recipe.method, recipe.scale,
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
    described.update(recipe.weaving if recipe.weaving is not None else {"lam": recipe.scale})
    described.update(seed=recipe.seed, pretrained=recipe.pretrained, inputs=[m.model for m in recipe.models],
                     weights=[m.weight for m in recipe.models], finetuned=recipe.from_finetuned, dtype=recipe.dtype)
    if recipe.format is not None:
        described.update(format=recipe.format, model=export_model(recipe), input_sha256={
            file: digest for location in [recipe.pretrained, *described["inputs"]]
            for file, digest in weights_hashes(location).items()})
    return json.dumps(described, default=str)
