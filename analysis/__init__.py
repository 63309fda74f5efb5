"""melbo_tl.analysis: interpretation of steering runs (similarity, lens, attribution, mediation,
token views, figures, the HTML report and the behaviour atlas).

Analyses consume run folders, vectors and interventions; they never train. Import this package
as ``melbo_tl.analysis``: the folder sits at the top of the source tree, but a bare
``import analysis`` is refused (a user's own ``analysis.py`` must never be confused with it).
"""

if __name__ != "melbo_tl.analysis":
    raise ImportError(f"Import melbo_tl's analysis package as `melbo_tl.analysis`, not as `{__name__}`.")
