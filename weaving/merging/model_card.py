"""What a merged folder says about itself: `weaving_recipe.yaml` (the recipe, which `weaving merge --config
FOLDER/weaving_recipe.yaml --output OTHER` re-runs to the same tensors) and a README.md model card (the
method, the recipe, and every input with the sha256 of its weights files), as mergekit writes one."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from weaving.io.hub import is_hub_id, resolve_location
from weaving.io.loader import weights_hashes

RECIPE_FILE = "weaving_recipe.yaml"
CARD_FILE = "README.md"


def _absolute(location: str) -> str:
    """A local input as an absolute path (the recipe re-runs from any folder); a hub id stays as it is."""
    path = Path(location).expanduser()
    return str(path.resolve()) if path.exists() or not is_hub_id(location) else location


def recipe_mapping(recipe: Any) -> dict[str, Any]:
    """A checked `Recipe` (weaving.merging.recipe) as the flat YAML mapping that parses back to it (the keys
    of `weaving merge`); local inputs and the output as absolute paths."""
    def entry(model: Any) -> Any:
        location = _absolute(model.model)
        return location if model.weight == 1.0 else {"model": location, "weight": model.weight}

    kind = "finetuned" if recipe.from_finetuned else "task_vectors"
    mapping: dict[str, Any] = {"pretrained": _absolute(recipe.pretrained), kind: [entry(m) for m in recipe.models],
                               "method": recipe.method}
    if recipe.method_args:
        mapping["method_args"] = dict(recipe.method_args)
    if recipe.weaving is not None:
        mapping.update(recipe.weaving)
    else:
        mapping["lam"] = recipe.scale
    for key in ("dtype", "out_shard_size", "format", "model"):
        if getattr(recipe, key, None) is not None:
            mapping[key] = getattr(recipe, key)
    mapping["seed"] = recipe.seed
    if recipe.allow_mixed:
        mapping["allow_mixed"] = True
    mapping["output"] = str(Path(recipe.output).expanduser().resolve())
    return mapping


def recipe_yaml(recipe: Any) -> str:
    return yaml.safe_dump(recipe_mapping(recipe), sort_keys=False, default_flow_style=False)


def model_card(recipe: Any, hashes: Mapping[str, Mapping[str, str]]) -> str:
    """README.md of a merged folder: what was merged, how, and the hashes of what went in."""
    mapping = recipe_mapping(recipe)
    inputs = [("pretrained (theta_pre)", mapping["pretrained"])]
    kind = "finetuned" if recipe.from_finetuned else "task_vectors"
    inputs += [(f"{'fine-tuned' if recipe.from_finetuned else 'task vector'} {i + 1}", m if isinstance(m, str) else m["model"])
               for i, m in enumerate(mapping[kind])]
    base = mapping["pretrained"]
    lines = ["---", "base_model:", f"- {base}", "library_name: transformers" if recipe.format != "open_clip"
             else "library_name: open_clip", "tags:", "- weaving", "- merge", "---", "",
             f"# {Path(recipe.output).name}", "",
             f"This model was merged with weaving {_version()} from the base model `{base}`.", "",
             "## Merge method", ""]
    how = (f"Weight Weaving over {recipe.method} (search space {recipe.weaving.get('lambdas')!r}, pooling "
           f"{recipe.weaving.get('pooling', 'mean')})" if recipe.weaving is not None
           else f"{recipe.method} with lambda {recipe.scale}")
    lines += [f"{how}, seed {recipe.seed}.", "", "## Inputs", "", "| role | location | file | sha256 |",
              "|---|---|---|---|"]
    for role, location in inputs:
        files = hashes.get(location) or {}
        if not files:
            lines.append(f"| {role} | `{location}` | | |")
        for file, digest in files.items():
            name = Path(file).name
            lines.append(f"| {role} | `{location}` | {name} | `{digest.removeprefix('sha256:')}` |")
    lines += ["", "## Recipe", "", f"`{RECIPE_FILE}` in this folder; `weaving merge --config {RECIPE_FILE} "
              "--output OTHER` merges it again into the same tensors.", "", "```yaml", recipe_yaml(recipe).rstrip(),
              "```", ""]
    return "\n".join(lines)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("weaving")
    except PackageNotFoundError:
        return "(version unknown)"


def _hashes(location: str) -> dict[str, str]:
    try:
        return weights_hashes(resolve_location(location))
    except (OSError, ValueError):
        return {}


def describe_folder(folder: Path, recipe: Any) -> None:
    """Write the recipe and the model card of `recipe` into the (temporary) output folder."""
    mapping = recipe_mapping(recipe)
    kind = "finetuned" if recipe.from_finetuned else "task_vectors"
    locations = [mapping["pretrained"]] + [m if isinstance(m, str) else m["model"] for m in mapping[kind]]
    hashes = {location: _hashes(location) for location in locations}
    (folder / RECIPE_FILE).write_text(recipe_yaml(recipe))
    (folder / CARD_FILE).write_text(model_card(recipe, hashes))
