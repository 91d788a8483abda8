"""Every `weaving merge`, `import`, `demo`, `fit` and `validate` command that README.md and docs/*.md show
parses as written: each runs with `--print_config` (the options as parsed; nothing is read or written).
merge/import/demo run in a folder that holds the YAML files the same documents show (a block whose first
line is `# NAME.yaml`; a merged folder's weaving_recipe.yaml is docs/recipes.md's recipe.yaml, the same
schema); fit/validate run in the repository, whose configs/ they name (`$task` as one of the tasks, the
Docker image's /opt/weaving/ as the repository). Commands of other tools (`torchrun ... -m weaving merge
...`, `srun weaving fit ...`) are read from `weaving` on."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from weaving.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
WALKED = ("merge", "import", "demo", "fit", "validate")
LIGHTNING = ("fit", "validate")
BLOCK = re.compile(r"```(\w*)\n(.*?)```", re.S)


def documented() -> tuple[list[tuple[str, list[str]]], dict[str, str]]:
    """([(where, argv after `weaving`)], {file name: YAML text}) of every document."""
    commands, files = [], {}
    for document in DOCUMENTS:
        text = document.read_text()
        for match in BLOCK.finditer(text):
            kind, body = match.groups()
            line_number = text[:match.start()].count("\n") + 2
            first = body.splitlines()[0] if body.strip() else ""
            if kind == "yaml" and re.fullmatch(r"# [\w.-]+\.ya?ml", first.strip()):
                files[first.strip()[2:]] = body
            if kind not in ("bash", "sh", ""):
                continue
            for i, line in enumerate(body.replace("\\\n", " ").splitlines()):
                if not re.search(rf"\bweaving ({'|'.join(WALKED)})\b", line):
                    continue
                words = shlex.split(line.replace("$task", "sun397").replace("/opt/weaving/", ""), comments=True)
                if "weaving" in words:
                    words = words[words.index("weaving") + 1:]
                    if words and words[0] in WALKED:
                        commands.append((f"{document.name}:{line_number + i}", words))
    return commands, files


COMMANDS, FILES = documented()


def test_the_documents_show_every_walked_command():
    assert {argv[0] for _, argv in COMMANDS} == set(WALKED)
    assert "recipe.yaml" in FILES


@pytest.mark.parametrize("argv", [argv for _, argv in COMMANDS], ids=[where for where, _ in COMMANDS])
def test_a_documented_command_parses_as_written(argv, tmp_path, monkeypatch, capsys):
    for name, text in FILES.items():
        (tmp_path / name).write_text(text)
    for i, word in enumerate(argv[:-1]):  # a merged folder's weaving_recipe.yaml: the recipe schema too
        if word == "--config" and Path(argv[i + 1]).name == "weaving_recipe.yaml":
            (tmp_path / argv[i + 1]).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / argv[i + 1]).write_text(FILES["recipe.yaml"])
    monkeypatch.chdir(ROOT if argv[0] in LIGHTNING else tmp_path)
    with pytest.raises(SystemExit) as done:
        main([*argv, *([] if "--print_config" in argv else ["--print_config"])])
    captured = capsys.readouterr()
    assert done.value.code in (0, None), captured.err
    assert captured.out.strip(), "nothing printed"
