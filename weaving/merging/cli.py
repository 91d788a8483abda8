"""`weaving merge`: the recipe schema (weaving.merging.recipe.Recipe) as a command line.

    weaving merge --pretrained base.safetensors --finetuned a.safetensors b.safetensors \
        --method ties --method_args '{k: 0.2}' --lambdas 0.1:1.5:0.1 --pooling mean --output merged.safetensors
    weaving merge --config recipe.yaml                       # the same keys in a file (docs/recipes.md)
    weaving merge --config recipe.yaml --output other        # flags after --config override its keys
    weaving merge --config mergekit.yml --output merged      # a mergekit YAML (top-level merge_method)
    weaving merge --config recipe.yaml --print_config        # the recipe as parsed, nothing merged

Inputs may also be Hugging Face folders (sharded or not), run folders or hub ids; `run_recipe` does the
work after checking every option, the search space and the output path, streaming the output.
"""

from __future__ import annotations

from collections.abc import Sequence

from weaving.merging.recipe import recipe_from_namespace, recipe_parser, run_recipe
from weaving.schema import parse_command


def merge_main(argv: Sequence[str]) -> None:
    """Parse, merge, write; user errors propagate as one-line UserErrors (`weaving` prints them)."""
    recipe = recipe_from_namespace(parse_command(recipe_parser(), argv))
    print(f"wrote {run_recipe(recipe, progress=True)}")
