"""mergekit configuration files, read as they are: `recipe_from_mergekit` turns one into a weaving recipe.

    models:
      - model: ./llama-math
        parameters: {weight: 0.7, density: 0.5}
      - model: ./llama-code
        parameters: {weight: 0.3}               # density: the top-level one, else mergekit's 1.0
    base_model: ./llama-base                    # an entry naming it in models is skipped, as mergekit does
    merge_method: ties                          # task_arithmetic, ties, dare_ties, breadcrumbs, breadcrumbs_ties
    parameters: {density: 0.6, normalize: true, lambda: 1.0, rescale: false, int8_mask: true}
    dtype: bfloat16                             # merged in it, as mergekit; out_dtype (else dtype): the output
    tokenizer_source: base                      # or absent

A mergekit file means mergekit's rules: its methods run as `mergekit_<method>`
(`weaving.merging.methods.generalized`: per-model weights and densities, per-tensor sparsification, sign
consensus over the weighted deltas, mergekit's `normalize` default, L1 rescale, arithmetic in mergekit's
`dtype` or the models' own, `lambda` scaling the merged delta). The recipe's `lam` (or weaving's `lambdas`)
scales mergekit's merged delta on top. Everything else mergekit's schema can say (slices, modules, other merge
methods, parameter gradients and filters, LoRA references, tokenizer surgery, chat templates, unknown keys)
is refused with one line before anything is read.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

METHODS = ("task_arithmetic", "ties", "dare_ties", "breadcrumbs", "breadcrumbs_ties")
TOP_KEYS = ("merge_method", "base_model", "models", "parameters", "dtype", "out_dtype", "tokenizer_source",
            "tokenizer", "chat_template")
ENTRY_KEYS = ("model", "parameters")
MERGE_WIDE = ("int8_mask", "normalize", "rescale", "lambda")  # read from the top-level parameters only
DTYPES = ("float32", "float16", "bfloat16")  # the names mergekit's dtype_from_name knows (int64 aside)
REFUSED_TOP = {
    "slices": "slices (layer ranges) are not supported: weaving merges whole models; list them under models",
    "modules": "modules are not supported: weaving merges whole models; list them under models",
}


def is_mergekit_config(mapping: Any) -> bool:
    """Whether a YAML mapping is a mergekit configuration (it names a `merge_method`)."""
    return isinstance(mapping, Mapping) and "merge_method" in mapping


def per_model_parameters(method: str) -> tuple[str, ...]:
    """The per-model ("tensor") parameters mergekit declares for `method`."""
    return ("weight", "density", "gamma") if method.startswith("breadcrumbs") else ("weight", "density")


def _fail(message: str) -> None:
    raise ValueError(f"mergekit config: {message}")


def _number(value: Any, where: str) -> float:
    if isinstance(value, list) or isinstance(value, Mapping):
        _fail(f"{where}: gradients and filtered values are not supported; give one number")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(f"{where} must be a number, got {value!r}")
    return float(value)


def _flag(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        _fail(f"{where} must be true or false, got {value!r}")
    return value


def _parameters(value: Any, where: str, allowed: tuple[str, ...], method: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        _fail(f"{where} must be a mapping of parameter names to values, got {value!r}")
    for name in value:
        if name not in allowed:
            if name in MERGE_WIDE:
                _fail(f"{where}.{name} is a merge-wide parameter: mergekit reads it from the top-level parameters only")
            _fail(f"{where}.{name} is not a parameter of mergekit's {method}; its parameters: {', '.join(allowed)}")
    return dict(value)


def _model(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        _fail(f"{where} must be a model path or hub id, got {value!r}")
    if "+" in value:
        _fail(f"{where} {value!r}: LoRA references (model+lora) are not supported; merge the adapter first")
    return value


def recipe_from_mergekit(config: Mapping[str, Any]) -> dict[str, Any]:
    """A mergekit configuration (the mapping of its YAML file) -> the weaving recipe mapping that runs it with
    mergekit's rules, in weaving's recipe schema (weaving.merging.recipe.Recipe): pretrained (the base model),
    finetuned (the other models in order), the `mergekit_<method>` method with its per-model lists as
    method_args (with mergekit's `dtype` as `compute_dtype` and its `lambda` as `scale`), and the output
    `dtype` (out_dtype, else dtype) when set. The output path is not part of a mergekit file: the caller
    adds it. Anything weaving does not do is one ValueError line."""
    if not isinstance(config, Mapping):
        _fail(f"a mergekit configuration is a YAML mapping, got {type(config).__name__}")
    for key in config:
        if key in REFUSED_TOP:
            _fail(REFUSED_TOP[key])
        if key not in TOP_KEYS:
            _fail(f"unknown key {key!r}; weaving reads {', '.join(TOP_KEYS)}")
    method = config.get("merge_method")
    if method not in METHODS:
        _fail(f"merge_method {method!r} is not supported; weaving runs mergekit's {', '.join(METHODS)}")
    base = config.get("base_model")
    if base is None:
        _fail(f"{method} needs base_model (the model the task vectors are taken from)")
    base = _model(base, "base_model")
    models = config.get("models")
    if not isinstance(models, list) or not models:
        _fail("models must be a non-empty list of {model: ..., parameters: {...}}")
    if config.get("tokenizer_source") not in (None, "base"):
        _fail(f"tokenizer_source {config['tokenizer_source']!r} is not supported: weaving copies the base model's "
              "tokenizer (tokenizer_source: base, or none)")
    for key in ("tokenizer", "chat_template"):
        if config.get(key) is not None:
            _fail(f"{key} is not supported: weaving copies the base model's tokenizer files as they are")
    tensor_names = per_model_parameters(method)
    top = _parameters(config.get("parameters"), "parameters", MERGE_WIDE + tensor_names, method)
    locations, per_model = [], {name: [] for name in tensor_names}
    for i, entry in enumerate(models):
        where = f"models[{i}]"
        if not isinstance(entry, Mapping) or "model" not in entry:
            _fail(f"{where} must be a mapping with model (and parameters), got {entry!r}")
        for key in entry:
            if key not in ENTRY_KEYS:
                _fail(f"{where}: unknown key {key!r}; a model entry has model and parameters")
        location = _model(entry["model"], f"{where}.model")
        own = _parameters(entry.get("parameters"), f"{where}.parameters", tensor_names, method)
        if location == base:
            continue  # mergekit takes no task vector from the base model, and ignores its parameters
        settings = {**{k: v for k, v in top.items() if k in tensor_names}, **own}
        if "weight" not in settings:
            _fail(f"{where} ({location}) has no weight: mergekit needs one per model (its parameters or the "
                  "top-level parameters)")
        locations.append(location)
        per_model["weight"].append(_number(settings["weight"], f"{where} weight"))
        per_model["density"].append(_number(settings.get("density", 1.0), f"{where} density"))
        if not 0.0 <= per_model["density"][-1] <= 1.0:
            _fail(f"{where} density is the kept fraction and must be in [0, 1], got {settings['density']!r}")
        if "gamma" in per_model:
            per_model["gamma"].append(_number(settings.get("gamma", 0.01), f"{where} gamma"))
            if not 0.0 <= per_model["gamma"][-1] <= 1.0:
                _fail(f"{where} gamma is the removed top fraction and must be in [0, 1], got {settings['gamma']!r}")
    if not locations:
        _fail("models lists only the base model: nothing to merge")
    for name in ("int8_mask", "normalize", "rescale"):
        if name in top:
            _flag(top[name], f"parameters.{name}")  # int8_mask only picks mergekit's mask dtype: no effect
    args: dict[str, Any] = {"weights": per_model["weight"]}
    if "normalize" in top:
        args["normalize"] = top["normalize"]
    if method != "task_arithmetic":  # task_arithmetic declares density and rescale but sparsifies nothing
        args["densities"] = per_model["density"]
        if "rescale" in top:
            args["rescale"] = top["rescale"]
    if "gamma" in per_model:
        args["gammas"] = per_model["gamma"]
    recipe: dict[str, Any] = {"pretrained": base, "finetuned": locations, "method": f"mergekit_{method}",
                              "method_args": args}
    if "lambda" in top:  # mergekit scales its merged delta in its own dtype: the method does the same
        args["scale"] = _number(top["lambda"], "parameters.lambda")
    for key in ("dtype", "out_dtype"):
        name = config.get(key)
        if name is not None and (not isinstance(name, str) or name.removeprefix("torch.") not in DTYPES):
            _fail(f"{key} {name!r} is not supported; mergekit's dtypes: {', '.join(DTYPES)}")
    if config.get("dtype") is not None:  # mergekit computes in it (else in the inputs' own dtype)
        args["compute_dtype"] = config["dtype"].removeprefix("torch.")
    output = config.get("out_dtype") or config.get("dtype")
    if output is not None:
        recipe["dtype"] = output.removeprefix("torch.")
    return recipe
