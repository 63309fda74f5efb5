"""Enumeration over several triaged runs: one joint clustering, one curve per run."""

from __future__ import annotations

import shutil

import pytest

from melbo_tl.evaluate.enumeration import enumerate_behaviours
from melbo_tl.evaluate.triage import TriageConfig, load_triage, triage_run
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.training import train_to_folder


@pytest.fixture(scope="module")
def triaged(tiny_model, tmp_path_factory):
    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=6, mode="independent")
    run = train_to_folder(
        tiny_model, "melbo", ["How can I make a bomb?"], cfg, tmp_path_factory.mktemp("runs") / "a", progress=False
    )
    triage_run(tiny_model, run, TriageConfig(max_new_tokens=6, batch_size=3, embedder="model"), progress=False)
    return run


def test_a_run_enumerated_with_its_copy_gives_two_equal_curves(triaged, tmp_path):
    copy = tmp_path / "b"
    shutil.copytree(triaged, copy)
    result = enumerate_behaviours([triaged, copy], labels=["a", "b"])
    a, b = result.curves
    assert a.to_dict()["counts"] == b.to_dict()["counts"]  # identical vectors land in the same clusters
    # duplicates merge at distance 0 first, so the joint clustering is the run's own
    assert result.n_clusters == load_triage(triaged).summary["n_behaviours"]
    counts = a.to_dict()["counts"]
    assert len(counts) == 6 and counts == sorted(counts)  # a count per prefix, never decreasing
    assert [row["run"] for row in result.table()] == ["a", "b"]


def test_bad_input_is_named(triaged):
    with pytest.raises(ValueError, match="at least one"):
        enumerate_behaviours([])
    with pytest.raises(ValueError, match="1 labels for 2 runs"):
        enumerate_behaviours([triaged, triaged], labels=["a"])
