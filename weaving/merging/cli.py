"""`weaving merge`: merge safetensors checkpoints from the command line (jsonargparse, `--config` works).

    weaving merge --pretrained base.safetensors --finetuned a.safetensors b.safetensors \
        --method ties --method_args '{k: 0.2}' --lambdas 0.1:1.5:0.1 --pooling mean --output merged.safetensors
    weaving merge --config recipe.yaml        # a merge recipe (weaving.merging.recipe, docs/recipes.md)

Inputs may also be Hugging Face folders (sharded or not) or hub ids; without --format the flags build the
recipe a recipe file holds, and `weaving.merging.recipe.run_recipe` does the work, streaming the output.

A method's hyper-parameters are one dictionary, `--method_args` (YAML: `method_args: {k: 0.2}`), checked
against that method's signature by the registry, the same spelling as MergeModule's configs.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from jsonargparse import ActionConfigFile, ArgumentParser

from weaving.atomic import check_writable
from weaving.merging.engine import run_merge
from weaving.merging.recipe import is_recipe_file, recipe_from_options, run_recipe
from weaving.merging.registry import METHODS, get_method, get_pooling, with_recorded_zero_entries
from weaving.merging.search_space import load_yaml, parse_search_space, use_in_jsonargparse
from weaving.merging.task_vectors import TensorSource, save_state_dict, task_vector_from_finetuned
from weaving.merging.weave import run_weave
from weaving.runs import RunIdentity, check_same_base, read_run

LIST_OPTIONS = ("finetuned", "task_vectors")


def build_parser() -> ArgumentParser:
    import weaving.merging.methods  # noqa: F401  (fills the registry for the help text)

    use_in_jsonargparse()
    parser = ArgumentParser(prog="weaving merge", exit_on_error=False,
                            description="Merge fine-tuned checkpoints or task vectors, with a fixed lambda (--lam) "
                            "or with Weight Weaving (--lambdas).")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_argument("--pretrained", type=str, required=True,
                        help="Pretrained weights (safetensors), or a run folder (its pretrained.safetensors).")
    parser.add_argument("--finetuned", type=Optional[str], nargs="+", default=None,
                        help="Fine-tuned checkpoints (safetensors); task vectors are computed from them.")
    parser.add_argument("--task_vectors", type=Optional[str], nargs="+", default=None,
                        help="Task vectors theta_t - theta_pre (safetensors or run folders), instead of --finetuned.")
    parser.add_argument("--method", type=str, required=True, help=f"Merge method: {', '.join(sorted(METHODS))}.")
    parser.add_argument("--method_args", type=Optional[dict[str, Any]], default=None,
                        help="The method's hyper-parameters, e.g. '{k: 0.2}' for ties (docs/methods.md lists them).")
    parser.add_argument("--lam", type=Optional[float], default=None,
                        help="Scale of the merged delta: theta_pre + lam * g (default 1.0).")
    parser.add_argument("--lambdas", type=Optional[Union[float, list[Union[float, dict[str, Any]]], dict[str, Any], str]],
                        default=None, help="Weight Weaving search space: 'start:stop:step' (inclusive), '0.1,0.5,1.0', "
                        "a YAML list, a distribution or a per-layer lambda (docs/evaluation.md, 'Search spaces').")
    parser.add_argument("--pooling", type=str, default="mean",
                        help="Weaving pooling: mean, random, magmax, or any merge method name.")
    parser.add_argument("--include_deltas", type=bool, default=True,
                        help="Pool the task vectors together with the lambda-scaled merges.")
    parser.add_argument("--device", type=Optional[str], default=None, help="cpu (default), cuda or cuda:N.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of random methods and random pooling.")
    parser.add_argument("--grid", type=Optional[dict[str, Any]], default=None,
                        help="Weight Weaving over method hyper-parameters too, e.g. '{k: [0.1, 0.2]}' (with --lambdas).")
    parser.add_argument("--points", type=Optional[list[dict[str, Any]]], default=None,
                        help="Explicit weaving points, e.g. '[{lam: 0.5, k: 0.1}, {lam: 1.0, k: 0.2}]'.")
    parser.add_argument("--dtype", type=Optional[str], default=None,
                        help="Output dtype: float32, float16, bfloat16 or float64 (default: the pretrained's).")
    parser.add_argument("--out_shard_size", type=Optional[str], default=None,
                        help="Write a Hugging Face folder in shards of at most this size, e.g. 2GB.")
    parser.add_argument("--output", type=str, required=True,
                        help="Output: a .safetensors file, or a folder (Hugging Face layout, config and tokenizer "
                        "copied from a pretrained folder); written atomically.")
    parser.add_argument("--format", type=Optional[str], default=None,
                        help="Write a full checkpoint: open_clip (one file for open_clip.create_model) or hf "
                        "(a transformers CLIP folder); default: the merged tensors as they are.")
    parser.add_argument("--model", type=Optional[str], default=None,
                        help="open_clip model name for --format (default: the one the inputs record).")
    parser.add_argument("--allow_mixed", type=bool, default=False,
                        help="Merge task vectors whose base model or run identities disagree (default: refuse).")
    return parser


def output_size(pretrained: TensorSource) -> int:
    """Bytes of the merged file's tensors (it has the pretrained model's names, shapes and dtypes)."""
    import torch

    total = 0
    for key in pretrained.keys():
        count = 1
        for size in pretrained.shape(key):
            count *= size
        total += count * torch.empty((), dtype=pretrained.dtype(key)).element_size()
    return total


def run(cfg) -> str:
    """Check every input and the output path, then merge and write the output (see module docstring)."""
    if bool(cfg.finetuned) == bool(cfg.task_vectors):
        raise ValueError("give exactly one of --finetuned FILE... or --task_vectors FILE...")
    if cfg.lam is not None and cfg.lambdas is not None:
        raise ValueError("give --lam (one merge) or --lambdas (Weight Weaving), not both")
    hparams = get_method(cfg.method).resolve(dict(cfg.method_args or {}))
    hparams = {name: hparams[name] for name in (cfg.method_args or {})}  # what the user set, for the recipe
    if cfg.lambdas is not None or cfg.grid is not None or cfg.points is not None:
        parse_search_space(cfg.lambdas, cfg.grid, cfg.points)  # before any file is read
        get_pooling(cfg.pooling)
    from weaving.formats.run_inputs import pretrained_path, recorded_model, task_vector_paths
    from weaving.formats.sharded import WEIGHT_FILES

    def is_weights_folder(path: str) -> bool:  # a Hugging Face folder, not a run
        return Path(path).is_dir() and any((Path(path) / name).is_file() for name in WEIGHT_FILES)

    if not is_weights_folder(cfg.pretrained):
        cfg.pretrained = pretrained_path(cfg.pretrained)
    if cfg.task_vectors:  # run folders: the population their index.json records (ties, pcb: zero_entries)
        recorded = {read_run(s, allow_mixed=cfg.allow_mixed).zero_entries for s in cfg.task_vectors
                    if Path(s).is_dir() and not is_weights_folder(s)}
        if len(recorded) == 1:
            hparams = with_recorded_zero_entries(cfg.method, hparams, recorded.pop())
        cfg.task_vectors = [p for s in cfg.task_vectors for p in ([s] if is_weights_folder(s) else task_vector_paths([s]))]
    if cfg.task_vectors and not any(is_weights_folder(s) for s in cfg.task_vectors):
        run = read_run(cfg.task_vectors, allow_mixed=cfg.allow_mixed)  # one base model, unless allow_mixed
        pretrained_meta = TensorSource(cfg.pretrained).metadata if Path(cfg.pretrained).suffix == ".safetensors" else {}
        if run.pretrained_hash and pretrained_meta.get("pretrained_hash"):
            check_same_base([("the task vectors", run.identity),
                             (cfg.pretrained, RunIdentity.from_mapping(pretrained_meta))],
                            allow_mixed=cfg.allow_mixed, same_run=False)
    if cfg.format is None:  # the recipe path: any input format, streamed output, grids, dtype, shards
        recipe = recipe_from_options(
            pretrained=cfg.pretrained, finetuned=cfg.finetuned, task_vectors=cfg.task_vectors, method=cfg.method,
            method_args=hparams, lam=cfg.lam, lambdas=cfg.lambdas, grid=cfg.grid, points=cfg.points,
            pooling=cfg.pooling, include_deltas=cfg.include_deltas, dtype=cfg.dtype, out_shard_size=cfg.out_shard_size,
            output=cfg.output, device=cfg.device, seed=cfg.seed)
        return str(run_recipe(recipe, progress=True))
    if cfg.grid is not None or cfg.points is not None or cfg.dtype is not None or cfg.out_shard_size is not None:
        raise ValueError("--format exports one CLIP checkpoint: --grid, --points, --dtype and --out_shard_size "
                         "work without --format")
    model = cfg.model or recorded_model(cfg.pretrained, cfg.task_vectors or [])
    if cfg.format is not None:
        from weaving.formats.export import check_export

        check_export(cfg.output, cfg.format)
        if model is None:
            raise ValueError(f"--format {cfg.format} needs the open_clip model name: pass --model NAME")
    pretrained = TensorSource(cfg.pretrained)
    if cfg.format != "hf":  # an hf export is a folder, checked by check_export
        check_writable(cfg.output, expected_bytes=output_size(pretrained))
    if cfg.finetuned:
        task_vectors = [task_vector_from_finetuned(pretrained, TensorSource(path)) for path in cfg.finetuned]
    else:
        run = read_run(cfg.task_vectors, allow_mixed=cfg.allow_mixed)
        task_vectors = [TensorSource(path) for path in run.paths.values()]
        if run.pretrained_hash and pretrained.metadata.get("pretrained_hash"):
            check_same_base([("the task vectors", run.identity),
                             (pretrained.label, RunIdentity.from_mapping(pretrained.metadata))],
                            allow_mixed=cfg.allow_mixed, same_run=False)
    if cfg.lambdas is None:
        lam = 1.0 if cfg.lam is None else cfg.lam
        merged = run_merge(pretrained, task_vectors, cfg.method, lam, device=cfg.device, seed=cfg.seed,
                           progress=True, hparams=hparams)
        recipe = {"method": cfg.method, "lam": lam}
    else:
        merged = run_weave(pretrained, task_vectors, cfg.method, cfg.lambdas, cfg.pooling, cfg.include_deltas,
                           device=cfg.device, seed=cfg.seed, progress=True, hparams=hparams)
        recipe = {"method": cfg.method, "lambdas": cfg.lambdas, "pooling": cfg.pooling,
                  "include_deltas": cfg.include_deltas}
    recipe.update(hparams=hparams, seed=cfg.seed, inputs=list(cfg.finetuned or cfg.task_vectors))
    if cfg.format is not None:
        from weaving.formats.export import export_checkpoint, input_hashes

        recipe.update(pretrained=cfg.pretrained, input_sha256=input_hashes([cfg.pretrained, *recipe["inputs"]]))
        return str(export_checkpoint(cfg.output, merged, cfg.format, model, recipe))
    save_state_dict(cfg.output, merged, {"weaving_recipe": json.dumps(recipe)})
    return cfg.output


def recipe_file(argv: list[str]) -> str | None:
    """The file of `--config FILE` when it is a merge recipe (weaving.merging.recipe), else None."""
    for i, arg in enumerate(argv):
        path = arg.partition("=")[2] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if path and is_recipe_file(path):
            if len(argv) != (1 if arg.startswith("--config=") else 2):
                raise ValueError(f"{path} is a merge recipe, which holds every option: give --config {path} alone")
            return path
    return None


def normalize_options(argv: list[str]) -> list[str]:
    """Accept `--task-vectors` as well as `--task_vectors` (option names use underscores), and a single
    file where a config expects a list (`task_vectors: one.safetensors`)."""
    normalized = []
    expect_config = False
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            name = name.replace("-", "_")
            if name == "config" and sep:
                arg = "--config=" + _config_with_lists(value)
            else:
                arg = "--" + name + sep + value
            expect_config = name == "config" and not sep
        elif expect_config:
            arg, expect_config = _config_with_lists(arg), False
        normalized.append(arg)
    return normalized


def _config_with_lists(config: str) -> str:
    """A config file whose list options hold one string, rewritten (as YAML text) with one-element lists.
    jsonargparse cannot read a single string into a multi-value option; other files pass unchanged."""
    path = Path(config)
    if not path.is_file():
        return config
    try:
        content = load_yaml(path.read_text())
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"{path}: not a readable YAML file ({error})".replace("\n", " ")) from None
    if not isinstance(content, dict) or not any(isinstance(content.get(key), str) for key in LIST_OPTIONS):
        return config
    for key in LIST_OPTIONS:
        if isinstance(content.get(key), str):
            content[key] = [content[key]]
    return json.dumps(content)


def merge_main(argv: list[str]) -> None:
    """Parse, merge, write; user errors propagate as ValueError/FileNotFoundError (`weaving` prints them)."""
    from jsonargparse import ArgumentError

    argv = normalize_options(argv)
    recipe = recipe_file(argv)
    if recipe is not None:
        print(f"wrote {run_recipe(recipe, progress=True)}")
        return
    parser = build_parser()
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as error:
        raise ValueError(option_error_line(str(error))) from None
    print(f"wrote {run(cfg)}")


def option_error_line(report: str) -> str:
    """jsonargparse's multi-line type report as one line: '--lam: expected float, got abc'."""
    lines = [line.strip() for line in report.strip().splitlines() if line.strip()] or ["invalid options"]
    key = re.match(r'Parser key "([^"]+)"', lines[0])
    if key is None:
        return lines[0]
    types = [t for t in re.findall(r"Expected a <class '(\w+)'>", report) if t != "NoneType"]
    value = re.search(r"(?:Given|Got) value: (.*)", report)
    expected = f"expected {' or '.join(dict.fromkeys(types))}" if types else "invalid value"
    return f"--{key.group(1)}: {expected}" + (f", got {value.group(1).strip()}" if value else "")
