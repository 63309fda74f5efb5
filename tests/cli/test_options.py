"""Options generated from configs: one source of defaults and help, ``--set``, one ``--vectors``
spec, and bad input that needs no model failing before anything heavy is imported."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
import typer.main

from melbo_tl.cli import app
from melbo_tl.cli.common import VectorChoice
from melbo_tl.cli.options import cli_fields, option_names, parse_set
from melbo_tl.evaluate.task_config import TaskConfig
from melbo_tl.optimize.configs import DCTConfig, MelboConfig

ROOT = Path(__file__).resolve().parents[2]
RUN = ROOT / "tests" / "data" / "legacy_runs" / "melbo"  # 2 vectors
COMMANDS = typer.main.get_command(app).commands


def _generated() -> list[tuple[str, click.Command, type, dict]]:
    out = []
    for name, command in COMMANDS.items():
        func = command.callback
        cls = getattr(func, "config_class", None)
        if cls is not None:
            out.append((name, command, cls, func.config_defaults))
    return out


def test_the_commands_with_many_settings_take_their_options_from_configs():
    names = {name for name, *_ in _generated()}
    assert {"train", "sweep", "dct", "oneshot", "refusal-direction", "triage", "rank"} <= names


@pytest.mark.parametrize("name", [n for n, *_ in _generated()])
def test_cli_defaults_and_help_are_the_configs(name):
    [(_, command, cls, overrides)] = [g for g in _generated() if g[0] == name]
    params = {p.name: p for p in command.params}
    for f in cli_fields(cls):
        if f.name not in params:
            continue  # left out by this command (e.g. sweep's radius: --radii instead)
        param = params[f.name]
        expected = overrides.get(f.name, f.default)
        if expected is dataclasses.MISSING:
            assert param.required, f"{name} --{f.name}"
            continue
        default = param.default
        if isinstance(expected, tuple):
            expected, default = list(expected), list(default or [])
        assert default == expected, f"{name} {option_names(f)[0]}: CLI default {default!r}, config {expected!r}"
        assert f.metadata["help"] in (param.help or ""), f"{name} {option_names(f)[0]}: help differs from the config's"


def test_every_generated_command_takes_set():
    for name, command, *_ in _generated():
        assert "--set" in {o for p in command.params for o in p.opts}, name


def test_set_reaches_settings_without_an_option_and_names_what_is_valid():
    assert parse_set(TaskConfig, ["indices=[1, 2]"]) == {"indices": [1, 2]}  # no option of its own
    assert parse_set(TaskConfig, []) == {}
    with pytest.raises(ValueError, match="this command sets radius from its own options"):
        parse_set(MelboConfig, ["radius=3"], skip=("radius",))  # sweep: the radii come from --radii
    with pytest.raises(ValueError, match=r"has no setting 'tol'; valid: \["):
        parse_set(DCTConfig, ["tol=1"])
    with pytest.raises(ValueError, match="tolerance has its own option, --tolerance"):
        parse_set(DCTConfig, ["tolerance=1"])
    with pytest.raises(ValueError, match="write KEY=VALUE"):
        parse_set(DCTConfig, ["tolerance"])


def test_one_vectors_spec():
    assert VectorChoice("all").resolve(3) == [0, 1, 2]
    assert VectorChoice("top:2").resolve(5) == [0, 1] and VectorChoice("top:9").resolve(3) == [0, 1, 2]
    assert VectorChoice("4,0-2").resolve(5) == [4, 0, 1, 2]
    assert VectorChoice(None, default="0").one() == 0
    for bad, says in (("-1", "negative ones are refused"), ("1,x", "expected integers"), ("top:0", "N ≥ 1")):
        with pytest.raises(ValueError, match=says):
            VectorChoice(bad)
    with pytest.raises(ValueError, match=r"Vector index 5 is out of range: this run has 3 vectors \(valid 0…2\)"):
        VectorChoice("5").resolve(3)
    with pytest.raises(ValueError, match="applies one vector"):
        VectorChoice("0,1").one()


BAD_INPUTS = [
    (["dct", "-p", "hi", "--out", "{tmp}/o", "--source", "16", "--target", "7"], "must come after source"),
    (["dct", "-p", "hi", "--out", "{tmp}/o", "--rank-by", "sure"], "rank_by 'sure'"),
    (["dct", "-p", "hi", "--out", "{tmp}/o", "--vectors", "top:x"], "top:N needs a whole number"),
    (["train", "-p", "hi", "--out", "{tmp}/o", "--mode", "diagonal"], "mode 'diagonal' is not one of"),
    (["train", "-p", "hi", "--out", "{tmp}/o", "--set", "step=3"], "has no setting 'step'"),
    (["sweep", "-p", "hi", "--out", "{tmp}/o", "--radii", "1,x"], "comma-separated numbers"),
    (["oneshot", "-p", "hi", "--out", "{tmp}/o", "--site", "attn_out.3", "--promote", "x"], "not a residual"),
    (["refusal-direction", "--out", "{tmp}/o", "--layers", "3-1"], "runs backwards"),
    (["triage", "{run}", "--projection", "umap"], "--projection 'umap' is not one of tsne, pca"),
    (["triage", "{run}", "--samples", "3", "--temperature", "0"], "samples > 1 needs temperature > 0"),
    (["analyze", "{run}", "--vectors", "1,x"], "expected integers"),
    (["export", "{run}", "--out", "{tmp}/v.gguf", "--vector", "-1"], "negative ones are refused"),
    (["generate", "-p", "hi", "--run", "{run}", "--vectors", "0,1"], "applies one vector"),
    (["eval", "{run}", "--prompts", "harmful", "--vector", "-2"], "negative ones are refused"),
    (["analyze", "{tmp}/no_run"], "is not a run folder"),
]


@pytest.mark.parametrize(("args", "says"), BAD_INPUTS, ids=lambda a: " ".join(a)[:40] if isinstance(a, list) else "")
def test_bad_input_that_needs_no_model_fails_before_torch_is_imported(tmp_path, args, says):
    """A ``torch`` that refuses to import stands first on the path: each error must come from the
    input check, one line and exit code 2, never from reaching for torch (what would take seconds)."""
    poison = tmp_path / "poison" / "torch"
    poison.mkdir(parents=True)
    (poison / "__init__.py").write_text("raise ImportError('torch was imported before the input was checked')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(poison.parent), str(ROOT)])}
    argv = [a.format(tmp=tmp_path, run=RUN) for a in args]
    done = subprocess.run(
        [sys.executable, "-m", "melbo_tl.cli", *argv], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2, done.stderr
    assert "torch was imported" not in done.stderr
    assert done.stderr.startswith("error: ") and says in done.stderr, done.stderr
