"""The ``melbo`` command line: ``melbo demo | train | oneshot | refusal-direction | eval | analyze | report | …``.

The Typer instance lives in :mod:`melbo_tl.cli.app`; each command module registers its
commands on it when imported here.
"""

from melbo_tl.cli import analyze, basic, dct, demo, directions, evaluate, oneshot, rank, train, triage  # noqa: F401  (registers their commands)
from melbo_tl.cli.app import app

__all__ = ["app"]
