"""The MELBO problem: the objective and the truncated forward against full forward passes."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.optimize import objective as obj
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.steering import AddVector, apply, token_layout
from melbo_tl.steering.layout import TokenLayout

PROMPTS = ["Hello there, how are you?", "Write a short poem about cats."]


def full_forward_delta(model, problem: MelboProblem, theta: torch.Tensor) -> torch.Tensor:
    """Δ at the target from two complete forward passes (to the logits), the vector added by an
    AddVector hook; differentiable in ``theta``."""
    b = problem.batch
    name = problem.target.hook
    seen = []

    def keep(acts, hook):
        seen.append(acts)
        return acts

    with token_layout(TokenLayout(b.token_index, b.lengths)):
        model.run_with_hooks(b.input_ids, attention_mask=b.attention_mask, fwd_hooks=[(name, keep)])
        with apply(model, AddVector(theta, problem.hook)):
            model.run_with_hooks(b.input_ids, attention_mask=b.attention_mask, fwd_hooks=[(name, keep)])
    clean, steered = seen
    return steered - clean.detach()


def test_objective_matches_paper_formula_on_full_forward(tiny_model):
    problem = MelboProblem.build(tiny_model, PROMPTS, source="resid_post.0", target=3, p=3.0, q=2.0, positions="last:2")
    theta = torch.randn(1, 64)
    value, _ = problem.objective(problem.add_vectors(theta))
    delta = full_forward_delta(tiny_model, problem, theta[0])
    expected = 0.0
    for i in range(len(PROMPTS)):
        n = int(problem.batch.lengths[i])
        width = problem.batch.input_ids.shape[1]
        rows = [width - n + t for t in (n - 2, n - 1)]  # last two real tokens, left padding
        expected += sum(float(delta[i, r].norm()) ** 3 for r in rows) ** (1 / 2)
    assert value.item() == pytest.approx(expected, rel=1e-4)


def test_truncated_forward_matches_full_forward_value_and_gradient(tiny_model):
    problem = MelboProblem.build(tiny_model, PROMPTS, source="resid_post.0", target=3, p=2.0, q=1.0, positions="all")
    theta = torch.randn(64, requires_grad=True)
    value, delta_fast = problem.objective(problem.add_vectors(theta[None]))
    (grad_fast,) = torch.autograd.grad(value.sum(), theta)

    theta_full = theta.detach().clone().requires_grad_(True)
    delta_full = full_forward_delta(tiny_model, problem, theta_full)
    value_full = obj.melbo_objective(delta_full, problem.select, p=2.0, q=1.0).sum()
    (grad_full,) = torch.autograd.grad(value_full, theta_full)

    assert torch.allclose(delta_fast[0], delta_full, atol=1e-5)
    assert value.item() == pytest.approx(value_full.item(), rel=1e-5)
    assert torch.allclose(grad_fast, grad_full, rtol=1e-4, atol=1e-6)
