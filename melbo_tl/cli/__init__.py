"""The ``melbo`` command line: ``melbo demo | train | dct | oneshot | refusal-direction | triage | analyze | …``.

The Typer instance lives in :mod:`melbo_tl.cli.app`; each command module registers its
commands on it when imported here.
"""

from melbo_tl.cli import (  # noqa: F401  (registers their commands)
    analyze,
    backdoors,
    basic,
    dct,
    demo,
    directions,
    evaluate,
    export,
    oneshot,
    rank,
    serve,
    train,
    triage,
    triggers,
)
from melbo_tl.cli.app import app

__all__ = ["app"]
