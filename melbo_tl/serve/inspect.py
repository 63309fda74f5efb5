"""What the explorer shows next to a vector: its logit-lens readout, its cosine with the refusal
direction r̂ at the same site, and the triage cluster it fell in.

The readout and cosine come from :mod:`analysis` (the same functions the reports use); the
cluster from the run's ``triage/`` files when ``melbo triage`` was run on it. Runs on the engine
thread (it reads the model), see :meth:`melbo_tl.serve.engine.Engine.call`.
"""

from __future__ import annotations

import json
import math
from functools import cache
from pathlib import Path
from typing import Any

import torch

from melbo_tl.analysis.lens import vector_readout
from melbo_tl.analysis.similarity import canonical_site
from melbo_tl.serve.store import REFUSAL_METHOD, Component, LoadedRun, VectorStore


@cache
def _refusal(model: Any, path: str) -> Any:
    from melbo_tl.analysis.run_analysis import load_refusal

    return load_refusal(model, path)


def refusal_cosines(model: Any, store: VectorStore, component: Component) -> list[dict[str, Any]]:
    """cos(v, r̂) for every loaded refusal-direction run, with r̂ read at v's own site (None where
    that run has no direction at this site: vectors at different layers live in different bases)."""
    out = []
    site = canonical_site(component.site)
    for loaded in store.refusal_runs():
        refusal = _refusal(model, str(loaded.path))
        direction, source = refusal.at(site)
        cosine = None
        if direction is not None:
            cosine = float(torch.nn.functional.cosine_similarity(component.vector.float(), direction.float(), dim=0))
        out.append({"run": loaded.name, "site": site.hook, "cosine": cosine, "source": source})
    return out


def triage_entry(loaded: LoadedRun, index: int) -> dict[str, Any] | None:
    """The triage row and cluster of vector ``index`` (None if the run was never triaged)."""
    from melbo_tl.evaluate.triage_files import BEHAVIOURS_FILE, CLUSTERS_FILE, triage_dir

    folder = triage_dir(loaded.path)
    if not (folder / BEHAVIOURS_FILE).is_file() or not (folder / CLUSTERS_FILE).is_file():
        return None
    rows = json.loads((folder / BEHAVIOURS_FILE).read_text()).get("rows", [])
    clusters = {c["id"]: c for c in json.loads((folder / CLUSTERS_FILE).read_text())}
    row = next((r for r in rows if r.get("index") == index), None)
    if row is None:
        return None
    cluster = clusters.get(row.get("cluster"), {})
    return {
        "cluster": row.get("cluster"),
        "label": cluster.get("label"),
        "size": cluster.get("size"),
        "cluster_refusal": cluster.get("refusal"),
        "refusal": row.get("refusal"),
        "degenerate": row.get("degenerate") or "",
        "shortlist": row.get("shortlist"),
        "completion": row.get("completion", ""),
    }


def inspect_vector(
    model: Any,
    store: VectorStore,
    *,
    run: str | None = None,
    index: int = 0,
    name: str | None = None,
    top_k: int = 10,
    max_scale: float = 100.0,
) -> dict[str, Any]:
    """Everything the explorer shows about one vector (run entry, or a registered name's first component)."""
    loaded = store.run(run) if run is not None else None
    if loaded is not None:
        component = store.run_vector(run, index)  # type: ignore[arg-type]
    else:
        components = store.named_vector(name or "").components
        component = components[0]
    readout = vector_readout(model, component.vector, top_k=top_k)
    refusal_like = loaded is not None and loaded.method == REFUSAL_METHOD
    raw_norm = loaded.run.meta.get("raw_norm") if refusal_like and loaded is not None else None
    suggested = float(raw_norm) if raw_norm else 1.0
    d = int(component.vector.shape[0])
    return {
        "run": run,
        "index": index if loaded is not None else None,
        "name": name,
        "method": loaded.method if loaded is not None else "registered",
        "site": component.site,
        "positions": component.where,
        "norm": float(component.vector.norm()),
        "readout": readout.to_dict(),
        "refusal": refusal_cosines(model, store, component) if component.site else [],
        "cosine_random_q95": 1.96 / math.sqrt(d),
        "triage": triage_entry(loaded, index) if loaded is not None else None,
        "scale": {"default": suggested, "max": min(max_scale, max(4 * suggested, 4.0))},
        "is_refusal_direction": refusal_like,
    }


def explorer_html() -> str:
    return (Path(__file__).parent / "explorer.html").read_text()
