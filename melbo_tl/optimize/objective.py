"""The MELBO objective and the geometry of optimizing on a sphere (one vector) or on the Stiefel
manifold (k mutually orthogonal vectors of norm R, trained together).

Objective (Mack & Turner), for one prompt with selected token set I:

    f(θ) = ( Σ_{t∈I} ‖Z_t(θ) − Z_t(0)‖₂^p )^(1/q)

with the norm over d_model for each token, and prompts' f summed. The reference code takes
the norm over the token axis instead; the two agree only for p = 2. This is the paper's form.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def melbo_objective(
    delta: Float[Tensor, "rows pos d_model"],
    select: Bool[Tensor, "rows pos"],
    *,
    p: float,
    q: float,
) -> Float[Tensor, " rows"]:
    """(Σ_{selected t} ‖Δ_t‖₂^p)^(1/q) per row."""
    sq = delta.pow(2).sum(-1)
    # ‖Δ‖^p = (‖Δ‖²)^(p/2); clamping keeps the gradient finite where Δ is exactly zero.
    per_token = sq if p == 2 else sq.clamp_min(1e-30).pow(p / 2)
    total = (per_token * select.to(per_token.dtype)).sum(-1)
    return total if q == 1 else total.clamp_min(1e-30).pow(1 / q)


def project_off(x: Tensor, basis: Tensor | None) -> Tensor:
    """Remove from each row of ``x`` its component in the span of ``basis`` (orthonormal rows)."""
    if basis is None or basis.shape[0] == 0:
        return x
    return x - (x @ basis.T) @ basis


def tangent(grad: Tensor, theta: Tensor) -> Tensor:
    """Project each row of ``grad`` onto the tangent space of the sphere at ``theta`` (row-wise)."""
    unit = theta / theta.norm(dim=-1, keepdim=True)
    return grad - (grad * unit).sum(-1, keepdim=True) * unit


def retract(theta: Tensor, radius: float) -> Tensor:
    """Scale each row back onto the sphere of ``radius``."""
    return radius * theta / theta.norm(dim=-1, keepdim=True)


def orthonormal_basis(vectors: Tensor) -> Tensor:
    """Orthonormal rows spanning ``vectors``' rows (QR), for projecting off finished vectors."""
    if vectors.shape[0] == 0:
        return vectors
    q, _ = torch.linalg.qr(vectors.T.double())
    return q.T.to(vectors.dtype)


def column_tangent(grad: Tensor, unit_columns: Tensor) -> Tensor:
    """Tangent projection for matrices whose columns live on unit spheres ([…, n, r])."""
    return grad - (grad * unit_columns).sum(-2, keepdim=True) * unit_columns


def normalize_columns(x: Tensor) -> Tensor:
    return x / x.norm(dim=-2, keepdim=True)


def delta_cosines(delta: Float[Tensor, "k rows pos d_model"], select: Bool[Tensor, "rows pos"]) -> Float[Tensor, "k k"]:
    """Cosine similarity between the caused changes Δ of k vectors, over selected tokens."""
    flat = (delta * select[None, :, :, None].to(delta.dtype)).flatten(1)
    unit = flat / flat.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return unit @ unit.T


def stiefel_tangent(grad: Float[Tensor, "k d"], theta: Float[Tensor, "k d"]) -> Float[Tensor, "k d"]:
    """Project ``grad`` onto the tangent space at ``theta`` of the set {rows orthogonal, equal norms}.

    With Q = θ/‖θ_row‖ (orthonormal rows) the tangent space is {Z : Q Zᵀ + Z Qᵀ = 0}, and the
    projection (embedded metric) is G − sym(G Qᵀ) Q. For one row it is the sphere's :func:`tangent`.
    """
    q = theta / theta.norm(dim=-1, keepdim=True)
    a = grad @ q.T
    return grad - 0.5 * (a + a.T) @ q


def stiefel_retract(theta: Float[Tensor, "k d"], radius: float) -> Float[Tensor, "k d"]:
    """The nearest set of mutually orthogonal rows of norm ``radius`` (polar retraction, R·U·Vᵀ of
    the SVD θ = U S Vᵀ). It treats every row alike (unlike QR, whose result depends on the row
    order) and keeps each row on its own side: for one row it is :func:`retract`."""
    u, _, vh = torch.linalg.svd(theta.double(), full_matrices=False)
    return (radius * u @ vh).to(theta.dtype)
