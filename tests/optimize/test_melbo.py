"""MELBO vectors on the tiny model: geometry, optimization, seeds, resume, errors."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.optimize import objective as obj
from melbo_tl.optimize.melbo import train_vectors
from melbo_tl.optimize.problem import MelboProblem

PROMPTS = ["Hello there, how are you?", "Write a short poem about cats."]


SMALL = dict(source_layer=0, target_layer=3, steps=4, lr=0.05, progress=False)


def _record(result):
    from melbo_tl.optimize.melbo import VectorRecord

    return VectorRecord(0, result.vectors[0], result.losses[0], result.objectives[0], result.seconds[0])


@pytest.mark.parametrize("steps", [1, 3])
def test_norm_is_radius_after_every_step_and_vectors_orthogonal(tiny_model, steps):
    result = train_vectors(tiny_model, PROMPTS[:1], radius=2.5, n_vectors=4, **{**SMALL, "steps": steps})
    norms = result.vectors.norm(dim=-1)
    assert torch.allclose(norms, torch.full_like(norms, 2.5), atol=1e-5)
    gram = result.vectors @ result.vectors.T / 2.5**2
    assert torch.allclose(gram, torch.eye(4), atol=1e-5)
    assert all(len(curve) == steps for curve in result.losses)


def test_optimization_increases_objective(tiny_model):
    result = train_vectors(tiny_model, PROMPTS, radius=2.0, n_vectors=2, **{**SMALL, "steps": 30})
    for curve, final in zip(result.losses, result.objectives):
        assert final > curve[0]


def test_same_seed_same_vectors_and_different_seed_differs(tiny_model):
    a = train_vectors(tiny_model, PROMPTS[:1], radius=1.0, n_vectors=2, seed=3, **SMALL)
    b = train_vectors(tiny_model, PROMPTS[:1], radius=1.0, n_vectors=2, seed=3, **SMALL)
    c = train_vectors(tiny_model, PROMPTS[:1], radius=1.0, n_vectors=2, seed=4, **SMALL)
    assert torch.equal(a.vectors, b.vectors)
    assert not torch.allclose(a.vectors, c.vectors)


def test_batched_independent_mode_equals_one_at_a_time(tiny_model):
    together = train_vectors(tiny_model, PROMPTS, radius=1.5, n_vectors=3, mode="independent", batch_size=3, **SMALL)
    alone = train_vectors(tiny_model, PROMPTS, radius=1.5, n_vectors=3, mode="independent", batch_size=1, **SMALL)
    assert torch.allclose(together.vectors, alone.vectors, atol=1e-4)


def test_random_baseline_is_steps_zero_through_same_path(tiny_model):
    result = train_vectors(tiny_model, PROMPTS[:1], radius=3.0, n_vectors=3, **{**SMALL, "steps": 0})
    assert torch.allclose(result.vectors.norm(dim=-1), torch.full((3,), 3.0), atol=1e-5)
    assert result.losses == [[], [], []]
    assert all(o > 0 for o in result.objectives)


def test_resume_keeps_finished_vectors_and_matches_uninterrupted(tiny_model):
    full = train_vectors(tiny_model, PROMPTS[:1], radius=1.0, n_vectors=3, **SMALL)
    first = train_vectors(tiny_model, PROMPTS[:1], radius=1.0, n_vectors=1, **SMALL)
    records = []
    resumed = train_vectors(
        tiny_model, PROMPTS[:1], radius=1.0, n_vectors=3, previous=[_record(first)], on_vector=records.append, **SMALL
    )
    assert [r.index for r in records] == [1, 2]
    assert torch.allclose(resumed.vectors, full.vectors, atol=1e-6)


def test_soft_orthogonality_lowers_delta_cosine(tiny_model):
    kwargs = dict(radius=3.0, n_vectors=3, mode="independent", batch_size=3, **{**SMALL, "steps": 40})
    plain = train_vectors(tiny_model, PROMPTS[:1], **kwargs)
    soft = train_vectors(tiny_model, PROMPTS[:1], diversity_penalty=5.0, **kwargs)
    problem = MelboProblem.build(tiny_model, PROMPTS[:1], source=0, target=3, p=2, q=1, positions="all")

    def mean_cos2(vectors):
        _, delta = problem.objective(problem.add_vectors(vectors))
        cos = obj.delta_cosines(delta, problem.select)
        return float((cos.pow(2).sum() - cos.diagonal().pow(2).sum()) / 6)

    with torch.no_grad():
        assert mean_cos2(soft.vectors) < mean_cos2(plain.vectors)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(source_layer=2, target_layer=2), "must come after source"),
        (dict(source_layer=0, target_layer=9), "beyond this model's 4 blocks"),
        (dict(source_layer=-1, target_layer=2), "block index ≥ 0, got -1"),
        (dict(source_layer=0, target_layer=3, radius=0.0), "radius"),
        (dict(source_layer=0, target_layer=3, p=0.0), "p and q"),
        (dict(source_layer=0, target_layer=3, positions="last:500"), "exceed"),
        (dict(source_layer=0, target_layer=3, positions="5:5"), "select no token"),
        (dict(source_layer=0, target_layer=3, n_vectors=0), "n_vectors"),
        (dict(source_layer=0, target_layer=3, diversity_penalty=1.0), "mode=.independent."),
    ],
)
def test_bad_arguments_raise_clear_errors(tiny_model, kwargs, match):
    args = dict(radius=1.0, steps=1, progress=False)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        train_vectors(tiny_model, PROMPTS[:1], **args)


def test_empty_prompt_is_an_error(tiny_model):
    with pytest.raises(ValueError, match="empty"):
        train_vectors(tiny_model, [""], radius=1.0, source_layer=0, target_layer=3, steps=1, progress=False)


# --- batched orthogonal mode (Stiefel manifold) -------------------------------------------------


@pytest.mark.parametrize("steps", [0, 1, 2, 5])
def test_batched_orthogonal_vectors_are_orthogonal_with_norm_r_after_every_step(tiny_model, steps):
    result = train_vectors(
        tiny_model,
        PROMPTS,
        radius=2.5,
        n_vectors=6,
        batch_size=3,
        mode="batched-orthogonal",
        **{**SMALL, "steps": steps},
    )
    gram = result.vectors @ result.vectors.T / 2.5**2  # two batches of 3: orthogonal within and across
    torch.testing.assert_close(gram, torch.eye(6), atol=1e-5, rtol=0)
    assert all(len(curve) == steps for curve in result.losses)


def test_batched_orthogonal_training_raises_the_objective(tiny_model):
    result = train_vectors(
        tiny_model, PROMPTS, radius=2.0, n_vectors=3, batch_size=3, mode="batched-orthogonal", **{**SMALL, "steps": 30}
    )
    for curve, final in zip(result.losses, result.objectives):
        assert final > curve[0]


def test_stiefel_geometry_reduces_to_the_sphere_for_one_vector():
    theta = torch.randn(1, 16) * 3
    grad = torch.randn(1, 16)
    torch.testing.assert_close(obj.stiefel_tangent(grad, theta), obj.tangent(grad, theta), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(obj.stiefel_retract(theta, 2.0), obj.retract(theta, 2.0), atol=1e-6, rtol=1e-6)


def test_stiefel_tangent_is_tangent_and_retraction_is_nearest():
    q = obj.stiefel_retract(torch.randn(4, 32), 1.0)
    z = obj.stiefel_tangent(torch.randn(4, 32), q)
    torch.testing.assert_close(q @ z.T + z @ q.T, torch.zeros(4, 4), atol=1e-5, rtol=0)
    # Polar retraction keeps each row on its side: a small perturbation of an orthonormal frame
    # comes back to (nearly) itself, signs unchanged.
    back = obj.stiefel_retract(q + 1e-3 * torch.randn(4, 32), 1.0)
    assert ((back * q).sum(-1) > 0.99).all()
