"""The ``melbo`` command line: ``melbo models | generate | chat | demo``.

The Typer instance lives in :mod:`melbo_tl.cli.app`; each command module registers its
commands on it when imported here.
"""

from melbo_tl.cli import basic, directions, evaluate, oneshot, train  # noqa: F401  (registers their commands)
from melbo_tl.cli.app import app

__all__ = ["app"]
