"""melbo_tl: optimized steering vectors as TransformerLens 4 hook points.

The interpretation code lives in the top-level folder ``analysis/`` of the source tree and is
imported as ``melbo_tl.analysis`` (never as a bare ``analysis``, so a user's own
``analysis.py`` cannot shadow it). An installed wheel carries it inside the package; in a source
checkout (or an editable install) :class:`_AnalysisFinder` maps the name to the sibling folder.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import sys
from pathlib import Path

__version__ = "0.1.0"

_HERE = Path(__file__).resolve().parent
_ANALYSIS = _HERE.parent / "analysis"


class _AnalysisFinder(importlib.abc.MetaPathFinder):
    """Finds ``melbo_tl.analysis`` in the folder beside the package (its submodules then resolve
    through the package's ``__path__`` as usual)."""

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> object:
        if fullname != "melbo_tl.analysis":
            return None
        return importlib.util.spec_from_file_location(
            fullname, _ANALYSIS / "__init__.py", submodule_search_locations=[str(_ANALYSIS)]
        )


_IN_A_CHECKOUT = not (_HERE / "analysis").is_dir() and (_ANALYSIS / "__init__.py").is_file()
if _IN_A_CHECKOUT and not any(isinstance(f, _AnalysisFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AnalysisFinder())
