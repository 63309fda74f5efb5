"""What a triage writes into ``RUN/triage/``, its result types, and reading it back
(:func:`load_triage`); :mod:`melbo_tl.evaluate.triage` computes it."""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from melbo_tl.artifacts import read_jsonl

TRIAGE_DIR = "triage"
SETTINGS_FILE = "settings.json"
COMPLETIONS_FILE = "completions.jsonl"
FLUENCY_FILE = "fluency.jsonl"  # per-completion NLLs under the unsteered model, checkpointed per batch
BEHAVIOURS_FILE = "behaviours.json"
BEHAVIOURS_CSV = "behaviours.csv"
CLUSTERS_FILE = "clusters.json"
EMBEDDINGS_FILE = "embeddings.safetensors"
UNSTEERED = -1  # the vector index of unsteered completions


@dataclass
class VectorBehaviour:
    """One vector's triage row (``index`` -1: the unsteered model). ``cluster`` id (see
    ``clusters.json``); ``novelty``, ``perplexity`` (median), ``refusal`` share, ``length`` (mean
    tokens) on the training prompts; ``degenerate`` kind ("soup", "empty", "echo"; "" if
    fine); ``repetitive`` (most training completions repeat coherent text); ``frontier``;
    ``shortlist`` position (None if not listed); ``completion`` (first training completion);
    ``heldout_refusal``/``heldout_novelty`` with held-out prompts."""

    index: int
    cluster: int
    novelty: float
    perplexity: float
    refusal: float
    length: float
    degenerate: str
    repetitive: bool = False
    frontier: bool = False
    shortlist: int | None = None
    completion: str = ""
    heldout_refusal: float | None = None
    heldout_novelty: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BehaviourCluster:
    """A behaviour: ``id``; ``words`` its most distinctive words; ``size``; ``members`` (vector
    indices); ``representative`` vector and its ``completion``; ``refusal`` share of members;
    ``degenerate`` kind for the classes of degenerate vectors ("" for behaviours);
    ``repetitive`` if most members repeat coherent text (a behaviour, shortlisted like any other);
    ``unsteered_like`` if the unsteered completion falls in it."""

    id: int
    words: list[str]
    size: int
    members: list[int]
    representative: int
    completion: str
    refusal: float
    degenerate: str = ""
    repetitive: bool = False
    unsteered_like: bool = False

    @property
    def label(self) -> str:
        if self.degenerate:
            return f"degenerate: {self.degenerate}"
        words = ", ".join(self.words) or "(no distinctive words)"
        return f"repetitive: {words}" if self.repetitive else words

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "label": self.label}


@dataclass
class TriageResult:
    """Fields: ``behaviours`` one row per vector (and one for unsteered, index -1, first);
    ``clusters``; ``shortlist`` vector indices in reading order; ``seconds`` per stage. Read back
    by :func:`load_triage`, also: ``summary`` (behaviours.json without its rows: method,
    embedder, counts, per-completion scores), ``completions`` (completions.jsonl rows) and
    ``embeddings`` (``completions`` [n, dim], ``behaviours`` [vectors + 1, dim])."""

    behaviours: list[VectorBehaviour]
    clusters: list[BehaviourCluster]
    shortlist: list[int]
    seconds: dict[str, float] = field(default_factory=dict)
    summary: dict[str, Any] = field(default_factory=dict)
    completions: list[dict[str, Any]] = field(default_factory=list, repr=False)
    embeddings: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def n_vectors(self) -> int:
        """How many vectors were triaged (the summary's count, else the rows')."""
        rows = sum(1 for b in self.behaviours if b.index != UNSTEERED)
        return int(self.summary.get("n_vectors", rows))

    def behaviour(self, index: int) -> VectorBehaviour:
        """The row of vector ``index`` (``UNSTEERED``: the unsteered model)."""
        for b in self.behaviours:
            if b.index == index:
                return b
        raise ValueError(f"Vector index {index!r} is not in this triage (it covers {self.n_vectors} vectors).")

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><td>{c.id}</td><td>{c.size}</td><td>{c.refusal:.2f}</td><td>{html.escape(c.label)}</td>"
            f"<td>{html.escape(c.completion[:80])}</td></tr>"
            for c in self.clusters
        )
        return (
            f"<div><b>TriageResult</b>: {self.n_vectors} vectors, {len(self.clusters)} clusters; read first: "
            f"{self.shortlist[:12]}<table><tr><th>cluster</th><th>size</th><th>refusal</th><th>label</th>"
            f"<th>representative's completion</th></tr>{rows}</table></div>"
        )


def _cluster(row: dict[str, Any]) -> BehaviourCluster:
    """A ``clusters.json`` row (fields a hand-written or older file lacks take neutral values)."""
    members = [int(m) for m in row.get("members", [])]
    base = {"words": [], "size": len(members), "members": members, "representative": members[0] if members else -1,
            "completion": "", "refusal": float("nan")}  # fmt: skip
    return BehaviourCluster(**{**base, **_known(BehaviourCluster, row)})


def _known(cls: type, row: dict[str, Any]) -> dict[str, Any]:
    """The keys of ``row`` that are fields of ``cls`` (files from other versions carry more or fewer)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in row.items() if k in names}


def triage_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / TRIAGE_DIR


def load_triage(run_dir: str | Path) -> TriageResult:
    """The triage of a run, read back from ``RUN/triage/`` as the :class:`TriageResult` it wrote
    (with its ``summary``, ``completions`` and ``embeddings``)."""
    import safetensors.torch

    folder = triage_dir(run_dir)
    if not (folder / BEHAVIOURS_FILE).is_file():
        raise FileNotFoundError(f"{folder} holds no triage; run `melbo triage {run_dir}` first.")
    data = json.loads((folder / BEHAVIOURS_FILE).read_text())
    clusters = json.loads((folder / CLUSTERS_FILE).read_text())
    return TriageResult(
        behaviours=[VectorBehaviour(**_known(VectorBehaviour, r)) for r in data["rows"]],
        clusters=[_cluster(c) for c in clusters],
        shortlist=list(data.get("shortlist", [])),
        seconds=dict(data.get("seconds", {})),
        summary={k: v for k, v in data.items() if k != "rows"},
        completions=read_jsonl(folder / COMPLETIONS_FILE),
        embeddings=safetensors.torch.load_file(str(folder / EMBEDDINGS_FILE)),
    )
