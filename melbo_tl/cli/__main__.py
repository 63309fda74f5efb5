"""``python -m melbo_tl.cli`` is the ``melbo`` command."""

from melbo_tl.cli import app

app()
