"""One kind of user error and one line for it.

Every command (`weaving merge`, `import`, `demo`, and LightningCLI's `fit`/`validate`/...) reports a
mistake the user can fix as one line, `weaving COMMAND: error: LINE`, and exits 2 (weaving.cli). A
`UserError` is raised where weaving finds the mistake; `ValueError`s of the checks, file errors, the
parser's `ArgumentError` and Lightning's `MisconfigurationException` count as user errors too, and
`error_line` turns any of them (jsonargparse's multi-line reports included) into that one line.

This module imports nothing heavy: `weaving --version` and a refused `weaving merge` stay cheap.
"""

from __future__ import annotations

import re
import sys
from argparse import ArgumentError


class UserError(ValueError):
    """A mistake in what the user typed or gave (an option, a config key, a path, an input file)."""


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions `weaving` reports as one line with exit status 2. Lightning's own misconfiguration
    error counts only once Lightning is imported (it cannot be raised before), so checking for it never
    imports Lightning."""
    types: list[type[BaseException]] = [ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
                                        PermissionError, ArgumentError]
    lightning = sys.modules.get("lightning.fabric.utilities.exceptions")
    if lightning is not None:
        types.append(lightning.MisconfigurationException)
    return tuple(types)


_EXPECTED = re.compile(r"Expected a (<class '\w+'>|typing\.Literal\[.*\]|\S+)")
_TYPE_GOT = re.compile(r"Expected a <class '(\w+)'>\. Got value: (.*)")


def _expected(text: str) -> str:
    """jsonargparse's name of a type, as a user reads it: 'float', "one of 'hf', 'open_clip'"."""
    if text.startswith("typing.Literal["):
        return f"one of {text.removeprefix('typing.Literal[').removesuffix(']')}"
    return re.sub(r"<class '(\w+)'>", r"\1", text).removesuffix(".")


_LINK_FAILED = re.compile(r"Call to compute_fn of link '[^\n]*?' with args \(.*?\) failed: ")


def error_line(error: BaseException | str) -> str:
    """One line for a user mistake.

    jsonargparse reports a wrong type as several lines ('Parser key "lam": Does not validate against any
    of the Union subtypes ... Expected a <class 'float'> ... Given value: abc'): that becomes
    '--lam: expected float, got abc'. A nested class error ('Parser key "model": ... Problem with given
    class_path 'X': <cause>') keeps the key, the class and the first cause that is not jsonargparse's noise.
    Anything else keeps its first meaningful line."""
    # a failed argument link (LightningCLI's link_arguments): the link's own message is the cause
    report = _LINK_FAILED.sub("", str(error))
    lines = [line.strip() for line in report.splitlines() if line.strip()]
    if not lines:
        return type(error).__name__ if isinstance(error, BaseException) else "invalid input"
    key = next((m.group(1) for line in lines if (m := re.match(r'(?:error: )?Parser key "([^"]+)"', line))), None)
    prefix = f"{key}: " if key else ""
    for i, line in enumerate(lines):
        text = line.removeprefix("- ")
        if text.startswith("Problem with given class_path") and i + 1 < len(lines):
            keys, j = [], i + 1
            while j + 1 < len(lines) and (m := re.fullmatch(r'Parser key "([^"]+)":', lines[j])):
                keys.append(m.group(1))
                j += 1
            cause = lines[j].removeprefix("- ")
            if keys or not cause.startswith(("Problem with given class_path", "Expected a", "Given value")):
                name = re.search(r"'([^']+)'", text)
                where = "".join(f"{k}: " for k in keys)
                cause = _TYPE_GOT.sub(r"expected \1, got \2", cause)
                return f"{prefix}{name.group(1) + ': ' if name else ''}{where}{cause}"
    types = [_expected(m.group(1)) for m in _EXPECTED.finditer(report) if "NoneType" not in m.group(1)]
    if key is not None and types and "class_path" not in report:  # a flag or key of the wrong type
        value = re.search(r"(?:Given|Got) value: (.*)", report)
        expected = f"expected {' or '.join(dict.fromkeys(types))}"
        return f"--{key}: {expected}" + (f", got {value.group(1).strip()}" if value else "")
    reasons = [line[2:] for line in lines if line.startswith("- ") and not line.startswith("- Expected a")]
    if reasons:
        return prefix + reasons[0]
    noise = ("usage:", "tip:", "Does not validate", "Subtypes:", "Errors:", "Given value")
    kept = [re.sub(r'^Parser key "([^"]+)":\s*', r"\1: ", line.removeprefix("error: "))
            for line in lines if not line.startswith(noise)]
    return (kept or lines)[0]
