"""experiments/backdoor_report.py: the subtle backdoor's table counts a vector once however many
reads show the swap, takes the lowest index as first, and keeps methods without a triage."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from backdoor_report import subtle_table


def _reads(shown: dict[str, list[int]], n: int) -> dict:
    vectors = [{"vector": -1, "shows": False}] + [{"vector": v, "shows": False} for v in range(n)]
    return {
        t: {"function": f"f_{t}", "swap": {"swap": {"vectors": vs, "first": min(vs, default=None)}},
            "report": {"vectors": vectors, "groups": []}}
        for t, vs in shown.items()
    }  # fmt: skip


def test_subtle_table_counts_each_vector_once_across_reads() -> None:
    results = {
        "radius": 24.12,
        "methods": {
            "DCT": {"n_vectors": 256, "behaviours": {"swap": {"eliciting": [6, 9], "first": 6}}},
            "random": {"n_vectors": 256, "behaviours": {"swap": {"eliciting": [], "first": None}}},
        },
        "answer_change": {
            "DCT": _reads({"answer": [40, 7], "a": [7], "b": []}, 256),
            "random": _reads({"answer": [], "a": [], "b": []}, 64),
            "control": _reads({"answer": [0], "a": [0], "b": [0]}, 1),
        },
    }
    rows = subtle_table(results)[2:]
    assert rows[0] == "| DCT | 256 | 24.1 | 2 | 6 | 2 of 256 | 7 | a, answer |"
    assert rows[1] == "| random | 256 | 24.1 | 0 | not found | 0 of 64 | not found | – |"
    assert rows[2] == "| control | 1 | 24.1 | – | – | 1 of 1 | 0 | a, answer, b |"
