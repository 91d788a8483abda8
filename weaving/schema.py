"""The typed command lines of `weaving merge`, `weaving import` and `weaving demo`.

Each command reads ONE schema, a dataclass whose fields are its options (their types, defaults and the
docstring's `Args:` as help): jsonargparse builds the parser from it, so a YAML `--config` file and the
flags are the same keys, `--print_config` prints them, and unknown keys or wrong types are refused by the
parser with the key named. (`weaving fit`/`validate` are LightningCLI's, read from the classes' signatures.)

It also holds the one YAML reading of every command (`load_yaml`, `use_in_jsonargparse`): YAML 1.2's
numbers, so `1:3:1` is a range and `1e-3` a number.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

from weaving.errors import UserError, error_line


def command_parser(prog: str, description: str, schema: type, *, one_or_more: Sequence[str] = (),
                   flags: Sequence[str] = (), config_action: type | None = None) -> Any:
    """A jsonargparse parser over the fields of the dataclass `schema`, with `--config FILE` (and
    `--print_config`).

    one_or_more: list fields that also take several values after one flag (`--finetuned a b c`) and a
    single value in a config file (`finetuned: a`); each value is checked against the list's item type.
    flags: bool fields that may be given bare (`--fast` means `--fast true`)."""
    from jsonargparse import ActionConfigFile, ArgumentParser

    use_in_jsonargparse()  # YAML numbers as every command reads them: '1:3:1' is a range, '1e-3' a number
    parser = ArgumentParser(prog=prog, description=description, exit_on_error=False)
    parser.add_argument("--config", action=config_action or ActionConfigFile,
                        help="A YAML file with any of these options (flags after it override its keys).")
    parser.add_class_arguments(schema, None, as_group=False)
    actions = {action.dest: action for action in parser._actions}
    for name in one_or_more:
        _one_or_more(actions[name])
    for name in flags:
        actions[name].nargs, actions[name].const = "?", True
    return parser


def _one_or_more(action: Any) -> None:
    """`--NAME a b c` on the command line, `NAME: a` or `NAME: [a, b]` in a config file: one list either
    way. jsonargparse reads a list-typed option from one value only (`--NAME '[a, b]'`), and an option
    with nargs fails on a single value from a file; so the action takes nargs and checks each item
    against the list's item type, a lone value being a list of one."""
    from typing import Union, get_args, get_origin

    from jsonargparse._typehints import ActionTypeHint

    def item_type(hint: Any) -> Any:
        for arg in (hint, *get_args(hint)):
            if get_origin(arg) in (list, tuple):  # list[X] or tuple[X, ...]
                return get_args(arg)[0]
        raise TypeError(f"{action.dest}: one_or_more needs a list type, got {hint}")

    class OneOrMore(ActionTypeHint):
        def _check_type(self, value: Any, **kwargs: Any) -> Any:
            items = []
            for item in value if isinstance(value, (list, tuple)) else [value]:
                items += item if isinstance(item, (list, tuple)) else [item]
            return super()._check_type(items, **kwargs)

    action._typehint = Union[item_type(action._typehint), None]
    action.nargs = "+"
    action.__class__ = OneOrMore


def parse_command(parser: Any, argv: Sequence[str]) -> Any:
    """The parsed namespace; a parser error as a one-line UserError (`--help` and `--print_config`
    print and exit 0 as usual)."""
    from argparse import ArgumentError

    try:
        return parser.parse_args(list(argv))
    except ArgumentError as error:
        raise UserError(error_line(error)) from None


# Every command reads YAML through this loader: flags and --config files of every command (through
# jsonargparse, see use_in_jsonargparse), recipes, and search spaces given as text. It is YAML 1.1
# safe loading with YAML 1.2's numbers: `1:3:1` stays a string (YAML 1.1 reads base-60 integers, 3781,
# so a range would become one huge lambda), `1e-3` and `1e39` are floats (YAML 1.1 wants `1.0e-3`), and
# dates stay strings.
_INT = re.compile(r"^(?:[-+]?(?:0|[1-9][0-9_]*)|[-+]?0x[0-9a-fA-F_]+|[-+]?0o[0-7_]+|[-+]?0b[01_]+)$")
_FLOAT = re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                         |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                         |[-+]?\.[0-9][0-9_]*(?:[eE][-+]?[0-9]+)?
                         |[-+]?\.(?:inf|Inf|INF)
                         |\.(?:nan|NaN|NAN))$""", re.X)


def _yaml_loader() -> type:
    import yaml

    class NumberLoader(yaml.SafeLoader):
        pass

    replaced = {"tag:yaml.org,2002:int", "tag:yaml.org,2002:float", "tag:yaml.org,2002:timestamp"}
    NumberLoader.yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in replaced]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
    NumberLoader.add_implicit_resolver("tag:yaml.org,2002:int", _INT, list("-+0123456789"))
    NumberLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT, list("-+0123456789."))
    NumberLoader.add_constructor("tag:yaml.org,2002:int", lambda loader, node: int(
        loader.construct_scalar(node).replace("_", ""), 0))
    return NumberLoader


_LOADER: type | None = None


def load_yaml(text: str) -> Any:
    """YAML text -> Python values, with the number rules above (raises yaml.YAMLError on bad YAML)."""
    global _LOADER
    import yaml

    if _LOADER is None:
        _LOADER = _yaml_loader()
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a SafeLoader subclass


def use_in_jsonargparse() -> None:
    """Make jsonargparse (`weaving merge`, `weaving import`, LightningCLI) read flags and --config files
    with `load_yaml`'s number rules. Its parser modes do not cover typed leaves (a `float` flag is read by
    its module-level default loader), so that one loader is replaced; idempotent."""
    from jsonargparse import _loaders_dumpers

    global _LOADER
    if _LOADER is None:
        _LOADER = _yaml_loader()
    _loaders_dumpers.yaml_default_loader = _LOADER
