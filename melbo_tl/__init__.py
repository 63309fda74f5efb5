"""melbo_tl: optimized steering vectors as TransformerLens 4 hook points.

The notebook path, imported on first use (``import melbo_tl`` itself loads no torch)::

    import melbo_tl as mt
    model = mt.load_model()                                   # the embedded Qwen2.5-Coder-0.5B-Instruct
    result = mt.melbo(model, ["How can I make a bomb?"], radius=4, n_vectors=8)   # or mt.dct, mt.oneshot
    with mt.apply(model, result.intervention(0, scale=1.5)):    # any forward pass, steered
        logits = model(tokens)
    run = mt.train(model, prompts, "dct", n_factors=64, out="runs/bomb")          # any method, into a run folder

Every result has ``vectors``, ``site`` (a :class:`Site`), ``hook`` and ``intervention(i, scale=1.0)``.
``mt.analysis`` is :mod:`melbo_tl.analysis`. Steered generation is
``from melbo_tl.generate import generate`` (``melbo_tl.generate`` is that module's name, so the
package cannot also bind a function to it).

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

from melbo_tl.lazy import lazy_names

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


_WHERE = {
    # models and prompts
    "load_model": "melbo_tl.models.loading",
    "DEFAULT_MODEL": "melbo_tl.models.embedded",
    "Positions": "melbo_tl.positions",
    # where vectors act, and interventions
    "Site": "melbo_tl.steering.sites",
    "AddVector": "melbo_tl.steering.interventions",
    "ClampVector": "melbo_tl.steering.interventions",
    "AblateDirection": "melbo_tl.steering.interventions",
    "MLPAdapter": "melbo_tl.steering.interventions",
    "apply": "melbo_tl.steering.interventions",
    "SteeringResult": "melbo_tl.steering.results",
    # methods: typed results, or any registered method into a run
    "melbo": ("melbo_tl.optimize.melbo", "train_vectors"),
    "dct": ("melbo_tl.optimize.dct", "fit_dct"),
    "oneshot": ("melbo_tl.optimize.oneshot", "optimize_vector"),
    "adapters": ("melbo_tl.optimize.adapters", "train_adapters"),
    "sweep_radius": "melbo_tl.optimize.sweep",
    "refusal_direction": "melbo_tl.api",
    "train": "melbo_tl.api",
    "MelboConfig": "melbo_tl.optimize.melbo",
    "DCTConfig": "melbo_tl.optimize.dct",
    "OneShotConfig": "melbo_tl.optimize.oneshot",
    "AdapterConfig": "melbo_tl.optimize.adapters",
    "RefusalDirectionConfig": "melbo_tl.optimize.configs",
    # run folders, evaluation, analysis
    "load_run": "melbo_tl.artifacts",
    "train_to_folder": "melbo_tl.training",
    "triage": ("melbo_tl.evaluate.triage", "triage_run"),
    "load_triage": "melbo_tl.evaluate.triage",
    "TriageConfig": "melbo_tl.evaluate.triage",
    "refusal_log_odds": "melbo_tl.evaluate.refusal",
    "analyze": ("melbo_tl.analysis.run_analysis", "analyze_run"),
    "report": ("melbo_tl.analysis.report", "write_report"),
}
__all__ = sorted([*_WHERE, "analysis"])


def __getattr__(name: str) -> object:
    if name == "analysis":
        import importlib

        return importlib.import_module("melbo_tl.analysis")
    return _lazy_getattr(name)


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


_IN_A_CHECKOUT = not (_HERE / "analysis").is_dir() and (_ANALYSIS / "__init__.py").is_file()
if _IN_A_CHECKOUT and not any(isinstance(f, _AnalysisFinder) for f in sys.meta_path):
    sys.meta_path.insert(0, _AnalysisFinder())

_lazy_getattr, _ = lazy_names(__name__, _WHERE, globals())
