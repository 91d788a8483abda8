"""`weaving merge`: merge safetensors checkpoints from the command line (jsonargparse, `--config` works).

    weaving merge --pretrained base.safetensors --finetuned a.safetensors b.safetensors \
        --method ties --k 0.2 --lambdas 0.1:1.5:0.1 --pooling mean --output merged.safetensors
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

from jsonargparse import ActionConfigFile, ArgumentParser

from weaving.merging.engine import run_merge
from weaving.merging.registry import METHODS, get_method
from weaving.merging.task_vectors import TensorSource, save_state_dict, task_vector_from_finetuned
from weaving.merging.weave import run_weave


def method_hparams() -> dict[str, Any]:
    """Every hyper-parameter name of every registered method, with its default (names are unique)."""
    get_method("task_arithmetic")  # fills the registry
    names: dict[str, Any] = {}
    for method in METHODS.values():
        names.update(method.defaults)
    return names


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="weaving merge", description="Merge fine-tuned checkpoints or task vectors, "
                            "with a fixed lambda (--lam) or with Weight Weaving (--lambdas).")
    parser.add_argument("--config", action=ActionConfigFile, help="YAML file with any of these options.")
    parser.add_argument("--pretrained", type=str, required=True, help="Pretrained weights (safetensors).")
    parser.add_argument("--finetuned", type=str, nargs="+", default=None,
                        help="Fine-tuned checkpoints (safetensors); task vectors are computed from them.")
    parser.add_argument("--task_vectors", type=str, nargs="+", default=None,
                        help="Task vectors theta_t - theta_pre (safetensors), instead of --finetuned.")
    parser.add_argument("--method", type=str, required=True, help=f"Merge method: {', '.join(sorted(METHODS))}.")
    for name, default in method_hparams().items():
        users = [m.name for m in METHODS.values() if name in m.defaults]
        kind = Optional[bool] if isinstance(default, bool) else Optional[float]
        parser.add_argument(f"--{name}", type=kind, default=None,
                            help=f"Hyper-parameter of {', '.join(users)} (default {default}).")
    parser.add_argument("--lam", type=Optional[float], default=None,
                        help="Scale of the merged delta: theta_pre + lam * g (default 1.0).")
    parser.add_argument("--lambdas", type=Optional[str], default=None,
                        help="Weight Weaving search space: 'start:stop:step' (inclusive) or '0.1,0.5,1.0'.")
    parser.add_argument("--pooling", type=str, default="mean",
                        help="Weaving pooling: mean, random, magmax, or any merge method name.")
    parser.add_argument("--include_deltas", type=bool, default=True,
                        help="Pool the task vectors together with the lambda-scaled merges.")
    parser.add_argument("--device", type=Optional[str], default=None, help="cpu (default), cuda or cuda:N.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of random methods and random pooling.")
    parser.add_argument("--output", type=str, required=True, help="Output safetensors file (written atomically).")
    return parser


def run(cfg) -> str:
    if bool(cfg.finetuned) == bool(cfg.task_vectors):
        raise ValueError("give exactly one of --finetuned FILE... or --task_vectors FILE...")
    if cfg.lam is not None and cfg.lambdas is not None:
        raise ValueError("give --lam (one merge) or --lambdas (Weight Weaving), not both")
    method = get_method(cfg.method)
    hparams = {name: getattr(cfg, name) for name in method_hparams() if getattr(cfg, name) is not None}
    foreign = sorted(set(hparams) - set(method.defaults))
    if foreign:
        raise ValueError(f"--{foreign[0]} is not a hyper-parameter of {cfg.method!r} "
                         f"(its hyper-parameters: {', '.join(method.defaults) or 'none'})")
    pretrained = TensorSource(cfg.pretrained)
    if cfg.finetuned:
        task_vectors = [task_vector_from_finetuned(pretrained, TensorSource(path)) for path in cfg.finetuned]
    else:
        task_vectors = [TensorSource(path) for path in cfg.task_vectors]
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
    save_state_dict(cfg.output, merged, {"weaving_recipe": json.dumps(recipe)})
    return cfg.output


def underscore_options(argv: list[str]) -> list[str]:
    """Accept `--task-vectors` as well as `--task_vectors` (and so on): option names use underscores."""
    normalized = []
    for arg in argv:
        if arg.startswith("--"):
            name, sep, value = arg[2:].partition("=")
            arg = "--" + name.replace("-", "_") + sep + value
        normalized.append(arg)
    return normalized


def merge_main(argv: list[str]) -> None:
    cfg = build_parser().parse_args(underscore_options(argv))
    try:
        output = run(cfg)
    except (ValueError, FileNotFoundError) as error:
        print(f"weaving merge: error: {error}", file=sys.stderr)
        sys.exit(1)
    print(f"wrote {output}")
