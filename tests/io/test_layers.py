"""The house's import direction, read from the source: weaving.io imports nothing else of weaving, merging
depends on io and not on formats (or anything above it), and no package imports in a circle (weaving.data
included)."""

from __future__ import annotations

import ast
from pathlib import Path

import weaving

ROOT = Path(weaving.__file__).parent


def module_imports() -> dict[str, set[str]]:
    """{module: the weaving modules it imports, at the top or inside functions}."""
    modules = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    found: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets: set[str] = set()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                node.body = []  # annotations only: never imported at run time
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                targets |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                targets |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
        found[name] = {t for t in targets if t in modules and t != name}
    return found


def package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else ""


def test_io_imports_nothing_else_and_merging_nothing_above_io():
    imports = module_imports()
    for module, targets in imports.items():
        if package(module) == "io":
            assert {package(t) for t in targets} <= {"io"}, (module, targets)
        if package(module) == "merging":  # errors and schema: the command-line base, below every package
            assert {package(t) for t in targets} <= {"io", "merging", "errors", "schema"}, (module, targets)
        if module in ("weaving.errors", "weaving.schema"):
            assert targets <= {"weaving.errors"}, (module, targets)


def test_no_module_imports_itself_in_a_circle():
    """Top-level and function-level imports alike (weaving.data included); a package's __init__ re-exporting
    its own modules is not a circle."""
    imports = module_imports()
    for start in imports:
        seen, todo = set(), [t for t in imports[start] if not start.startswith(t + ".")]
        while todo:
            module = todo.pop()
            assert module != start, f"{start} imports itself through {sorted(seen)}"
            if module not in seen:
                seen.add(module)
                todo += [t for t in imports.get(module, ()) if not module.startswith(t + ".")]
