"""The ``melbo`` Typer app. Command modules register on it with ``from melbo_tl.cli.app import app``.

Every command runs inside :class:`MelboGroup`, which turns the errors the library raises for
bad input (``ValueError``, ``FileNotFoundError``, ``ModelFileError``) into one line
``error: …`` on stderr and exit code 2, whether the command is run from the shell or through
``typer.testing.CliRunner``. Set ``MELBO_TL_DEBUG=1`` to get the traceback instead.

This module imports no torch: ``melbo --help`` stays fast, and commands import the library
inside their bodies.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import click
import typer
from typer.core import TyperGroup

USER_ERROR_EXIT = 2
DEFAULT_MODEL_HELP = (
    "embedded model name, local model directory or hub id [default: the run's model where a run is given, "
    "else qwen2.5-coder-0.5b-instruct]"
)


def is_user_error(exc: BaseException) -> bool:
    """Errors that mean "bad input" rather than "bug": shown as one line, exit code 2."""
    if isinstance(exc, (ValueError, FileNotFoundError)):
        return True
    # ModelFileError lives in melbo_tl.models, whose import pulls in torch; if one was raised,
    # that module is loaded already.
    embedded = sys.modules.get("melbo_tl.models.embedded")
    return embedded is not None and isinstance(exc, embedded.ModelFileError)


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# Options whose value may be left out (``--ray`` alone means ``--ray local``); Typer has no
# optional-value options, so a bare one gets its implied value before parsing.
IMPLIED_VALUES = {"--ray": "local"}


def imply_values(args: list[str]) -> list[str]:
    """``args`` with the implied value after each bare option of :data:`IMPLIED_VALUES` (one
    followed by nothing or by another option)."""
    out: list[str] = []
    for i, arg in enumerate(args):
        out.append(arg)
        if arg in IMPLIED_VALUES and (i + 1 == len(args) or args[i + 1].startswith("-")):
            out.append(IMPLIED_VALUES[arg])
    return out


# The order ``melbo --help`` lists commands in: the workflow, not the import order.
ORDER = (
    "demo", "models", "generate", "chat", "train", "dct", "oneshot", "refusal-direction", "sweep", "triage",
    "enumerate", "recover-trigger", "dashboard", "analyze", "report", "eval", "rank", "export", "import-control-vector", "import-refusal-direction",
    "plant-backdoor", "detect-backdoors",
)  # fmt: skip


class MelboGroup(TyperGroup):
    """A Typer group whose commands report user errors as ``error: …`` and exit code 2."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = super().list_commands(ctx)
        rank = {name: i for i, name in enumerate(ORDER)}
        return sorted(names, key=lambda n: (rank.get(n, len(ORDER)), n))

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, imply_values(list(args)))

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as exc:
            if not is_user_error(exc) or os.environ.get("MELBO_TL_DEBUG"):
                raise
            typer.echo(f"error: {one_line(exc)}", err=True)
            raise typer.Exit(USER_ERROR_EXIT) from None


app = typer.Typer(
    name="melbo",
    cls=MelboGroup,
    no_args_is_help=True,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    add_completion=False,
    help="Optimized steering vectors on TransformerLens 4 models: discover behaviours (MELBO, DCT, triage), "
    "steer on purpose (one-shot vectors, the refusal direction), analyse and export them. Options of the "
    "training commands come from their configs; --set KEY=VALUE reaches every other setting.",
)
