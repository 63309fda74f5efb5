"""The import graph stays layered: no module imports from a layer above its own.

Layers, bottom to top: models, placement, config → prompts, steering → forward, segment,
generate, artifacts, registry, runs, training → optimize, directions, evaluate, export, backdoors, triggers → analysis
(the top-level folder, imported as ``melbo_tl.analysis``) → cli, api, serve.
Every ``import`` statement counts, including the ones inside functions. (Built-in methods are
found by :func:`melbo_tl.registry.get_method` by module name, as a plugin's entry point would be;
that is no import statement and is tested in ``tests/test_registry.py``.)
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LAYERS = [
    (
        "melbo_tl.models",
        "melbo_tl.placement",
        "melbo_tl.config",
        "melbo_tl.filenames",
        "melbo_tl.positions",
        "melbo_tl.lazy",
    ),
    ("melbo_tl.prompts", "melbo_tl.steering"),
    (
        "melbo_tl.forward",
        "melbo_tl.segment",
        "melbo_tl.generate",
        "melbo_tl.artifacts",
        "melbo_tl.registry",
        "melbo_tl.runs",
        "melbo_tl.training",
        "melbo_tl.stage_folder",
    ),
    (
        "melbo_tl.optimize",
        "melbo_tl.directions",
        "melbo_tl.evaluate",
        "melbo_tl.distributed",
        "melbo_tl.export",
        "melbo_tl.backdoors",
        "melbo_tl.triggers",
    ),
    ("melbo_tl.analysis",),
    ("melbo_tl.cli", "melbo_tl.api", "melbo_tl.serve"),
]


def layer_of(module: str) -> int | None:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    return None


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted([*(ROOT / "melbo_tl").rglob("*.py"), *(ROOT / "analysis").rglob("*.py")]):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[0] == "analysis":  # the top-level folder is the package melbo_tl.analysis
            parts = ["melbo_tl", *parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return {n for n in names if n.split(".")[0] in ("melbo_tl", "analysis")}


def test_nothing_imports_a_bare_analysis_package():
    bare = [f"{m} imports {n}" for m, p in modules().items() for n in imported(p) if n.split(".")[0] == "analysis"]
    assert not bare, "import melbo_tl.analysis, never a bare analysis: " + "; ".join(bare)


def test_every_module_has_a_layer():
    unplaced = [m for m in modules() if m not in ("melbo_tl",) and layer_of(m) is None]
    assert not unplaced, f"modules outside every layer: {unplaced}"


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for module, path in modules().items():
        mine = layer_of(module)
        if mine is None:
            continue
        for name in imported(path):
            theirs = layer_of(name)
            if theirs is not None and theirs > mine:
                upward.append(f"{module} (layer {mine}) imports {name} (layer {theirs})")
    assert not upward, "\n".join(upward)


def test_the_check_would_see_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from melbo_tl.optimize.melbo import train_vectors\n")
    assert "melbo_tl.optimize.melbo" in imported(bad)
    assert layer_of("melbo_tl.optimize.melbo") > layer_of("melbo_tl.steering.interventions")
