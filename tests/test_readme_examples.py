"""What the README, docs/ and the notebooks' text tell a user to type works on the current API:
every ``melbo …`` line in their shell blocks parses (command and options exist, values convert),
and the README's Python quick start runs (on a tiny random model with the embedded model's 24
layers, shortened steps)."""

from __future__ import annotations

import functools
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
SHELL_BLOCK = re.compile(r"^```(?:bash|sh|shell|console)\n(.*?)^```", re.M | re.S)
MELBO_CALL = re.compile(r"^(?:\S*/)?melbo\s+(.*)$")  # melbo …, .venv/bin/melbo …


def prose(path: Path) -> str:
    """A page's text, or a notebook's markdown cells."""
    if path.suffix != ".ipynb":
        return path.read_text()
    import nbformat

    return "\n".join(c.source + "\n" for c in nbformat.read(path, as_version=4).cells if c.cell_type == "markdown")


def shell_commands() -> list[tuple[str, list[str]]]:
    """(``page: line``, arguments after ``melbo``) for each melbo call in a shell block."""
    found = []
    for page in [*PAGES, *NOTEBOOKS]:
        for block in SHELL_BLOCK.findall(prose(page)):
            for line in block.replace("\\\n", " ").splitlines():
                for call in line.split(" && "):
                    found += melbo_call(page, call)
    return found


def melbo_call(page: Path, line: str) -> list[tuple[str, list[str]]]:
    words = shlex.split(line, comments=True)
    while words and (words[0].startswith("/work/bin/") or "=" in words[0]):
        words = words[1:]  # wrappers and VAR=value prefixes
    match = MELBO_CALL.match(shlex.join(words))
    return [(f"{page.relative_to(ROOT)}: {line.strip()}", shlex.split(match.group(1)))] if match else []


INLINE_CALL = re.compile(r"`((?:\S*/)?melbo [^`]+)`")


def inline_commands() -> list[tuple[str, list[str]]]:
    """``melbo …`` in inline code (tables, prose) with at least one argument: fragments that may
    leave out required arguments, but whose options must exist."""
    found = []
    for page in PAGES:
        text = FENCE_ANY.sub("", page.read_text())
        for span in INLINE_CALL.findall(text):
            if re.search(r"…|<|\[|(?<![-\w])[A-Z]+(?!\w)", span):
                continue  # placeholders: RUN, FILE.gguf, --batch-size B, [--scale s], …
            for call in melbo_call(page, span):
                if len(call[1]) >= 2:
                    found.append(call)
    return found


FENCE_ANY = re.compile(r"^```.*?^```", re.M | re.S)
COMMANDS = shell_commands()
INLINE = inline_commands()


def test_the_docs_show_the_main_commands():
    called = {args[0] for _, args in COMMANDS if args}
    assert {"generate", "dct", "triage", "chat", "refusal-direction", "analyze", "report"} <= called


def check_parses(where: str, args: list[str], *, fragment: bool = False) -> None:
    """Parse ``melbo ARGS`` with the real command (nothing runs); ``fragment``: required arguments may be missing."""
    import typer.main

    import melbo_tl.cli  # noqa: F401  (registers the commands)
    from melbo_tl.cli.app import app, imply_values

    group = typer.main.get_command(app)
    if not args or args[0] in ("--help", "-h"):
        return
    assert args[0] in group.commands, f"{where}: no command {args[0]!r}"
    try:
        group.commands[args[0]].make_context(args[0], imply_values(args[1:]))
    except Exception as exc:  # Typer's own click: match the exception by name
        if type(exc).__name__ == "Exit" or (fragment and type(exc).__name__ == "MissingParameter"):
            return  # --help; a fragment leaving out a required argument
        pytest.fail(f"{where}: {type(exc).__name__}: {exc}")


@pytest.mark.parametrize(("where", "args"), COMMANDS, ids=[w for w, _ in COMMANDS])
def test_every_documented_command_line_parses(where, args):
    check_parses(where, args)


@pytest.mark.parametrize(("where", "args"), INLINE, ids=[w for w, _ in INLINE])
def test_every_inline_command_uses_options_that_exist(where, args):
    check_parses(where, args, fragment=True)


def readme_python_quick_start() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"## Quick start in Python\n.*?```python\n(.*?)```", text, re.S)
    assert match, "README.md has no Python quick start"
    return match.group(1)


def test_the_python_quick_start_is_ten_lines_or_so():
    lines = [line for line in readme_python_quick_start().splitlines() if line.strip()]
    assert 4 <= len(lines) <= 12


def test_the_python_quick_start_runs(tmp_path, monkeypatch, capsys):
    import melbo_tl as mt
    from melbo_tl.models import build_tiny_model, load_model
    from melbo_tl.optimize.melbo import train_vectors

    # The embedded model's depth (its default sites are blocks 7 and 16), at a tiny width.
    directory = build_tiny_model(tmp_path / "tiny", architecture="qwen2", n_layers=24, d_model=32)
    model = load_model(str(directory), device="cpu")
    monkeypatch.setattr(mt, "load_model", lambda *a, **k: model, raising=False)
    monkeypatch.setattr(mt, "melbo", functools.partial(train_vectors, steps=5, progress=False), raising=False)
    exec(compile(readme_python_quick_start(), "README.md quick start", "exec"), {})
    printed = [line for line in capsys.readouterr().out.splitlines() if line.strip()]
    assert len(printed) >= 4  # one answer per vector


PYTHON_BLOCK = re.compile(r"^```python\n(.*?)^```", re.M | re.S)
PYTHON_SNIPPETS = [
    (f"{page.relative_to(ROOT)} #{i}", code)
    for page in PAGES
    for i, code in enumerate(PYTHON_BLOCK.findall(page.read_text()), 1)
]


@pytest.mark.parametrize(("where", "code"), PYTHON_SNIPPETS, ids=[w for w, _ in PYTHON_SNIPPETS])
def test_every_python_snippet_names_what_exists(where, code):
    """Each snippet compiles, its ``from melbo_tl… import`` names import, and each ``mt.name`` is on the facade."""
    import ast
    import importlib

    import melbo_tl as mt

    tree = ast.parse(code, filename=where)
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom | ast.Import):
            names = [node.module or ""] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
            assert not any(n.split(".")[0] == "analysis" for n in names), f"{where}: import melbo_tl.analysis"
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "melbo_tl":
            module = importlib.import_module(node.module)
            for alias in node.names:
                if not hasattr(module, alias.name):
                    importlib.import_module(f"{node.module}.{alias.name}")  # a submodule, or fails naming it
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "melbo_tl":
                    importlib.import_module(alias.name)
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "mt":
            assert node.attr in mt.__all__, f"{where}: mt.{node.attr} is not on the facade"
