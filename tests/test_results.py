"""Every result steers itself: ``vectors``, ``site``/``hook``, ``intervention(i, scale)``, an HTML
summary; and the lazy top-level facade (``import melbo_tl as mt``) reaches each method."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch

import melbo_tl as mt
from melbo_tl.steering import AddVector, MLPAdapter, Site, SteeringResult, apply
from tests.helpers import HARMFUL, HARMLESS

PROMPTS = ["Hello there, how are you?", "Write a short poem about cats."]
SITES = dict(source="resid_post.0", target=3)
TOKENS = torch.tensor([[14, 2054, 377, 9001, 42, 7]])


def _results(model, tmp_path):
    """One result of every kind, each from a short fit on the tiny model."""
    fast = dict(progress=False)
    yield "melbo", mt.melbo(model, PROMPTS, radius=6.0, steps=2, n_vectors=2, **SITES, **fast)
    yield "dct", mt.dct(model, PROMPTS, n_factors=4, iterations=1, radius=6.0, **SITES, **fast)
    yield "oneshot", mt.oneshot(model, PROMPTS[0], site=1, promote=["Sure"], steps=2, init_norm=6.0, **fast)
    yield "adapters", mt.adapters(model, PROMPTS, radius=30.0, rank=2, n_adapters=2, steps=2, **SITES, **fast)
    from melbo_tl.directions import diff_in_means, select_direction

    candidates = diff_in_means(model, HARMFUL[:4], HARMLESS[:4], layers=[1, 2], positions=[-1], progress=False)
    yield (
        "refusal",
        select_direction(
            model,
            candidates,
            HARMFUL[4:],
            HARMLESS[4:],
            kl_threshold=math.inf,
            induce_threshold=-math.inf,
            progress=False,
        ),
    )
    yield "run", mt.train(model, PROMPTS, "melbo", radius=6.0, steps=1, n_vectors=2, **SITES, progress=False)
    yield "run folder", mt.train(model, PROMPTS, "oneshot", site=2, promote=["Sure"], steps=1, out=tmp_path / "os")


def test_every_result_steers_itself(tiny_model, tmp_path):
    with torch.no_grad():
        base = tiny_model(TOKENS)
    kinds = []
    for kind, result in _results(tiny_model, tmp_path):
        kinds.append(kind)
        assert isinstance(result, SteeringResult), kind
        n = result.vectors.shape[0]
        assert result.vectors.ndim == 2 and result.vectors.shape[1] == 64 and n >= 1, kind
        assert isinstance(result.site, Site) and result.site.hook == result.hook, kind
        steer = result.intervention(0)
        assert steer.site == result.site, kind
        assert isinstance(steer, MLPAdapter if kind == "adapters" else AddVector), kind
        with torch.no_grad(), apply(tiny_model, steer):
            steered = tiny_model(TOKENS)
        assert not torch.allclose(steered, base, atol=1e-4), f"{kind}: intervention(0) changes nothing"
        with torch.no_grad(), apply(tiny_model, result.intervention(0, scale=0.0)):
            torch.testing.assert_close(tiny_model(TOKENS), base, atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match=r"index -1 is out of range"):
            result.intervention(-1)
        with pytest.raises(ValueError, match=rf"index {n} is out of range"):
            result.intervention(n)
        page = result._repr_html_()
        assert type(result).__name__ in page and result.site.hook in page, kind
    assert kinds == ["melbo", "dct", "oneshot", "adapters", "refusal", "run", "run folder"]


def test_scale_multiplies_the_added_vector(tiny_model):
    result = mt.melbo(tiny_model, PROMPTS, radius=6.0, steps=1, n_vectors=1, **SITES, progress=False)
    steer = result.intervention(0, scale=2.5)
    torch.testing.assert_close(steer.vector * steer.scale, 2.5 * result.vectors[0])
    assert steer.hook == "blocks.0.hook_resid_post" and result.site == Site(1)


def test_import_melbo_tl_loads_no_torch_and_the_facade_is_complete():
    code = "import sys, melbo_tl as mt; assert 'torch' not in sys.modules; print(' '.join(mt.__all__))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = done.stdout.split()
    for name in ("load_model", "melbo", "dct", "oneshot", "train", "Site", "apply", "analyze", "analysis"):
        assert name in names
    for name in names:
        assert getattr(mt, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        mt.nope  # noqa: B018


def test_the_refusal_direction_from_the_facade_is_the_selected_candidate(tiny_model):
    sel = mt.refusal_direction(
        tiny_model, n_train=4, n_val=2, layers=(1, 2), positions=(-1,), kl_threshold=math.inf,
        induce_threshold=-math.inf, progress=False,
    )  # fmt: skip
    assert sel.layer in (1, 2) and sel.pos == -1 and sel.site == Site(sel.layer)
    assert torch.equal(sel.vectors[0], sel.raw) and sel.ablation().direction is sel.direction
    assert len(sel.scores) == 2 and "bypass" in sel._repr_html_()
