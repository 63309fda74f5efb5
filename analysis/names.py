"""Names of an analysis folder's files and steps, spelled once.

``melbo analyze`` writes each step's table as ``RUN/analysis/<step>.json`` (and ``.csv`` when it
is flat) and its figures under ``RUN/analysis/figures/``; the report and the demo read them back
by these names.
"""

from __future__ import annotations

from pathlib import Path

ANALYSIS_DIR = "analysis"
FIGURES_DIR = "figures"
SETTINGS_FILE = "settings.json"
REPORT_FILE = "report.html"
PROJECTIONS = ("tsne", "pca")  # the atlas's 2-D maps

EFFECTS = "vector_effects"
COSINES = "vector_cosines"
DELTA_COSINES = "delta_cosines"
READOUT = "readout"
LENS = "lens"
ATTRIBUTION = "attribution"
MEDIATION = "mediation"
TOKEN_VIEWS = "token_views"
STEPS = (EFFECTS, COSINES, DELTA_COSINES, READOUT, LENS, ATTRIBUTION, MEDIATION, TOKEN_VIEWS)


def step_file(analysis_dir: str | Path, step: str) -> Path:
    """The JSON table of ``step`` in an analysis folder."""
    return Path(analysis_dir) / f"{step}.json"
