"""The typed command lines of `weaving merge`, `weaving import` and `weaving demo`.

Each command reads ONE schema, a dataclass whose fields are its options (their types, defaults and the
docstring's `Args:` as help): jsonargparse builds the parser from it, so a YAML `--config` file and the
flags are the same keys, `--print_config` prints them, and unknown keys or wrong types are refused by the
parser with the key named. (`weaving fit`/`validate` are LightningCLI's, read from the classes' signatures.)
"""

from __future__ import annotations

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

    from weaving.merging.search_space import use_in_jsonargparse

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
