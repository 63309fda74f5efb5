"""analysis.similarity: cosines between vectors and between the activation changes they cause."""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.analysis.similarity import (
    canonical_site,
    cosine_heatmap,
    delta_similarity,
    subspace_overlap,
    vector_similarity,
)
from melbo_tl.prompts import prepare_prompts
from melbo_tl.steering.interventions import AddVector
from melbo_tl.steering.sites import Site

HOOK = "blocks.1.hook_resid_pre"


def test_identical_vectors_have_cosine_one_and_orthogonal_zero():
    v = torch.randn(64)
    w = torch.randn(64)
    w = w - (w @ v) / (v @ v) * v
    sim = vector_similarity({"v": (v, HOOK), "2v": (2 * v, HOOK), "w": (w, HOOK), "-v": (-v, HOOK)})
    cos = torch.tensor(sim.cosine)
    assert cos[0, 1] == pytest.approx(1.0, abs=1e-6)
    assert cos[0, 2] == pytest.approx(0.0, abs=1e-6)
    assert cos[0, 3] == pytest.approx(-1.0, abs=1e-6)
    assert sim.norms[1] == pytest.approx(2 * float(v.norm()), rel=1e-6)
    assert sim.random_std == pytest.approx(1 / math.sqrt(64))
    assert sim.random_q95 == pytest.approx(1.96 / 8)


def test_random_baseline_matches_random_directions():
    gen = torch.Generator().manual_seed(1)
    a, b = torch.randn(2000, 64, generator=gen), torch.randn(2000, 64, generator=gen)
    cos = torch.nn.functional.cosine_similarity(a, b)
    sim = vector_similarity({"a": (a[0], HOOK)})
    assert float(cos.std()) == pytest.approx(sim.random_std, rel=0.1)
    assert float((cos.abs() > sim.random_q95).float().mean()) == pytest.approx(0.05, abs=0.02)


def test_different_sites_are_refused_unless_mapped():
    v = torch.randn(64)
    with pytest.raises(ValueError, match="different sites.*site_map"):
        vector_similarity({"a": (v, "blocks.1.hook_resid_pre"), "b": (v, "blocks.3.hook_resid_pre")})
    sim = vector_similarity(
        {"a": (v, "blocks.1.hook_resid_pre"), "b": (v, "blocks.3.hook_resid_pre")},
        site_map={"blocks.3.hook_resid_pre": "blocks.1.hook_resid_pre"},
    )
    assert sim.site == Site(1) and sim.cosine[0][1] == pytest.approx(1.0, abs=1e-6)
    assert sim.to_dict()["site"] == "blocks.1.hook_resid_pre"


def test_resid_post_is_the_next_resid_pre():
    assert canonical_site("blocks.0.hook_resid_post").hook == "blocks.1.hook_resid_pre"
    assert canonical_site("blocks.2.hook_mlp_out").hook == "blocks.2.hook_mlp_out"
    v = torch.randn(64)
    assert vector_similarity({"a": (v, Site(0, "resid_post")), "b": (v, 1)}).site == Site(1)
    sim = vector_similarity({"a": v, "b": -v}, site="resid_pre.2")
    assert sim.sites == [Site(2), Site(2)] and sim.cosine[0][1] == pytest.approx(-1.0, abs=1e-6)
    assert sim.figure().data[0].z[0][1] == pytest.approx(-1.0, abs=1e-6)


def test_bad_vectors_are_named():
    with pytest.raises(ValueError, match="'m'.*expected \\[d_model\\]"):
        vector_similarity({"m": (torch.randn(2, 64), HOOK)})
    with pytest.raises(ValueError, match="different widths"):
        vector_similarity({"a": (torch.randn(64), HOOK), "b": (torch.randn(32), HOOK)})


def test_delta_at_the_steering_hook_is_the_vector(tiny_model):
    texts = prepare_prompts(tiny_model, ["hello there", "how are you today, friend?"])
    v = torch.randn(64)
    zero = torch.zeros(64)
    ds = delta_similarity(
        tiny_model,
        texts,
        {"v": AddVector(v, HOOK), "3v": AddVector(3 * v, HOOK), "zero": AddVector(zero, HOOK)},
        at=HOOK,
        against={"v": v},
        n_random=4,
        chat=False,
    )
    for key in ds.token_sets:
        assert ds.cosine[key][0][1] == pytest.approx(1.0, abs=1e-5)
        assert ds.cosine_against[key][0][0] == pytest.approx(1.0, abs=1e-5)
        assert ds.delta_norm[key][0] == pytest.approx(float(v.norm()), rel=1e-4)
        assert ds.delta_norm[key][2] == 0.0  # a zero vector changes nothing
        assert 0 < ds.random_abs_cos[key] < 0.6
    assert ds.token_sets == ["all", "last:4"] and ds.n_prompts == 2


def test_delta_downstream_and_errors(tiny_model):
    texts = prepare_prompts(tiny_model, ["hello there"])
    v = torch.randn(64)
    ds = delta_similarity(
        tiny_model,
        texts,
        {"v": AddVector(v, HOOK), "2v": AddVector(2 * v, HOOK)},
        at="blocks.3.hook_resid_pre",
        n_random=2,
        chat=False,
    )
    assert ds.cosine["all"][0][1] > 0.5  # same direction, nonlinear downstream
    assert ds.against == [] and ds.cosine_against["all"] == [[], []]
    with pytest.raises(ValueError, match="blocks.9"):
        delta_similarity(tiny_model, texts, {"v": AddVector(v, HOOK)}, at="blocks.9.hook_resid_pre", chat=False)
    with pytest.raises(ValueError, match="at least one prompt"):
        delta_similarity(tiny_model, [], {"v": AddVector(v, HOOK)}, at=HOOK, chat=False)


def test_subspace_overlap_exact_cases():
    v, w = torch.randn(64), torch.randn(64)
    inside = subspace_overlap(torch.stack([v, w]), 0.3 * v - 2 * w)
    assert inside["overlap"] == pytest.approx(1.0, abs=1e-5)
    q, _ = torch.linalg.qr(torch.randn(64, 64))
    outside = subspace_overlap(q[:, :3].T, q[:, 10])
    assert outside["overlap"] == pytest.approx(0.0, abs=1e-6)
    assert outside["random_mean"] == pytest.approx(3 / 64)


def test_heatmap_carries_the_matrix():
    fig = cosine_heatmap(["a", "b"], [[1.0, 0.2], [0.2, 1.0]], title="t", baseline=0.245)
    assert list(fig.data[0].x) == ["a", "b"] and fig.data[0].z[0][1] == 0.2
    assert fig.data[0].zmin == -1 and fig.data[0].zmax == 1
    assert "0.245" in fig.layout.title.text
