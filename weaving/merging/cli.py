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

from weaving.io.loader import as_source, is_weights_folder
from weaving.io.runs import RunIdentity, check_same_base, pretrained_source, read_run, task_vector_paths
from weaving.merging.recipe import is_recipe_file, recipe_from_options, run_recipe
from weaving.merging.recipe import load_yaml as load_recipe_file
from weaving.merging.registry import METHODS, get_method, get_pooling, with_recorded_zero_entries
from weaving.merging.search_space import load_yaml, parse_search_space, use_in_jsonargparse

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
                        help="Write a full checkpoint: open_clip (a folder open_clip loads as local-dir:FOLDER, or "
                        "one .safetensors file) or hf (a transformers CLIP folder); default: the merged tensors as "
                        "they are.")
    parser.add_argument("--model", type=Optional[str], default=None,
                        help="open_clip model name, or an open_clip model-config JSON file, for --format (default: "
                        "the one the inputs record).")
    parser.add_argument("--overwrite", type=bool, default=False,
                        help="Replace an output that exists, or an input given as the output (default: refuse).")
    parser.add_argument("--allow_mixed", type=bool, default=False,
                        help="Merge task vectors whose base model or run identities disagree (default: refuse).")
    return parser


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
    if not is_weights_folder(cfg.pretrained):
        cfg.pretrained = str(pretrained_source(cfg.pretrained))
    if cfg.task_vectors:  # run folders: the population their index.json records (ties, pcb: zero_entries)
        recorded = {read_run(s, allow_mixed=cfg.allow_mixed).zero_entries for s in cfg.task_vectors
                    if Path(s).is_dir() and not is_weights_folder(s)}
        if len(recorded) == 1:
            hparams = with_recorded_zero_entries(cfg.method, hparams, recorded.pop())
        cfg.task_vectors = task_vector_paths(cfg.task_vectors)
    if cfg.task_vectors and not any(is_weights_folder(s) for s in cfg.task_vectors):
        run = read_run(cfg.task_vectors, allow_mixed=cfg.allow_mixed)  # one base model, unless allow_mixed
        pretrained_meta = as_source(cfg.pretrained, "pretrained").metadata if Path(cfg.pretrained).suffix == ".safetensors" else {}
        if run.pretrained_hash and pretrained_meta.get("pretrained_hash"):
            check_same_base([("the task vectors", run.identity),
                             (cfg.pretrained, RunIdentity.from_mapping(pretrained_meta))],
                            allow_mixed=cfg.allow_mixed, same_run=False)
    recipe = recipe_from_options(
        pretrained=cfg.pretrained, finetuned=cfg.finetuned, task_vectors=cfg.task_vectors, method=cfg.method,
        method_args=hparams, lam=cfg.lam, lambdas=cfg.lambdas, grid=cfg.grid, points=cfg.points,
        pooling=cfg.pooling, include_deltas=cfg.include_deltas, dtype=cfg.dtype, out_shard_size=cfg.out_shard_size,
        output=cfg.output, device=cfg.device, seed=cfg.seed, format=cfg.format, model=cfg.model,
        overwrite=cfg.overwrite)
    return str(run_recipe(recipe, progress=True))


RECIPE_OVERRIDES = ("output", "overwrite")  # what may be given with a recipe (e.g. a merged folder's, re-run)


def recipe_file(argv: list[str]) -> tuple[str, dict[str, Any]] | None:
    """(file, overrides) of `--config FILE` when it is a merge recipe (weaving.merging.recipe), else None;
    the overrides are `--output` and `--overwrite`, the only options a recipe takes beside it."""
    for i, arg in enumerate(argv):
        path = arg.partition("=")[2] if arg.startswith("--config=") else argv[i + 1] if arg == "--config" and i + 1 < len(argv) else None
        if path and is_recipe_file(path):
            rest = argv[:i] + argv[i + (1 if arg.startswith("--config=") else 2):]
            overrides: dict[str, Any] = {}
            while rest:
                name, sep, value = rest.pop(0).partition("=")
                if name.removeprefix("--") not in RECIPE_OVERRIDES or not name.startswith("--"):
                    raise ValueError(f"{path} is a merge recipe, which holds every option: give --config {path} "
                                     "alone (or with --output and --overwrite)")
                if not sep:
                    value = rest.pop(0) if rest and not rest[0].startswith("--") else ("true" if name == "--overwrite" else "")
                if name == "--overwrite":
                    if value.lower() not in ("true", "false"):
                        raise ValueError(f"--overwrite: expected true or false, got {value}")
                    overrides["overwrite"] = value.lower() == "true"
                elif not value:
                    raise ValueError("--output: give the output path")
                else:
                    overrides["output"] = value
            return path, overrides
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
    found = recipe_file(argv)
    if found is not None:
        path, overrides = found
        print(f"wrote {run_recipe({**load_recipe_file(path), **overrides}, progress=True)}")
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
