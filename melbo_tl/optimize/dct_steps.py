"""The pieces of a DCT fit that are plain linear algebra: starts, orthogonalization, damping,
how far the factors moved, and the weights α.

Kept apart from :mod:`melbo_tl.optimize.dct` (which runs the model) so that each piece can be
checked on its own and the variants of the fit are visibly built from the same parts.

- :func:`orthogonalize`: unit rows made orthonormal without flipping any row. The exponential
  is not odd, so −v steers another behaviour than v: a QR that flips signs (as a plain
  Householder QR does for about half of the columns) moves the factor to the opposite side.
- :func:`svd_start`: the right singular vectors of a projected Jacobian Pᵀ J (rows of Vᴴ, not
  its columns), completed to F rows by an orthonormal basis of the rest when F > the projection.
- :func:`damp`: β·new + (1 − β)·old on unit rows, renormalized (β = 1: no damping).
- :class:`Movement`: per-factor 1 − cos between successive v_l (and to the undamped update), summarized.
- :func:`importance_weights`: α solving K α = b with K = (U Uᵀ) ∘ (exp(V Vᵀ) − 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.optimize.calibration import unit_rows
from melbo_tl.optimize.configs import ORTHOGONALIZE


def orthogonalize(v: Float[Tensor, "f d"], how: str) -> Float[Tensor, "f d"]:
    """Unit rows made orthonormal, keeping ⟨q_l, v_l⟩ > 0 for every row.

    ``polar``: the nearest orthonormal frame (V Vᵀ)^(−1/2) V, no row privileged by its index;
    ``qr``: Gram–Schmidt in index order with the signs fixed (⟨q_l, v_l⟩ = |R_ll|);
    ``none``: only normalizes."""
    if how == "none":
        return unit_rows(v)
    if how == "polar":
        u, _, vh = torch.linalg.svd(v.double(), full_matrices=False)
        return (u @ vh).to(v.dtype)
    if how == "qr":
        q, r = torch.linalg.qr(v.double().T)
        signs = torch.sign(torch.diagonal(r))
        signs[signs == 0] = 1
        return (q * signs).T.to(v.dtype)
    raise ValueError(f"orthogonalize {how!r} is not one of {', '.join(ORTHOGONALIZE)}.")


def svd_start(projected: Float[Tensor, "p d"], n: int) -> Float[Tensor, "n d"]:
    """The first ``n`` right singular vectors of ``projected`` = Pᵀ J (rows: Jᵀ p_k for random
    unit p_k), strongest first. Beyond the projection's rank the rows are an orthonormal basis
    of the remaining directions (LAPACK's completion: arbitrary, not Jacobian-informed)."""
    if n > projected.shape[1]:
        raise ValueError(f"{n} start vectors asked for, but d_model is {projected.shape[1]}.")
    _, _, vh = torch.linalg.svd(projected.double(), full_matrices=True)
    return vh[:n].to(projected.dtype)


def damp(new: Float[Tensor, "f d"], old: Float[Tensor, "f d"], beta: float) -> Float[Tensor, "f d"]:
    """normalize(β·normalize(new) + (1 − β)·old) for unit ``old`` rows; β = 1 returns normalize(new)."""
    if beta == 1.0:
        return unit_rows(new)
    return unit_rows(beta * unit_rows(new) + (1.0 - beta) * old)


@dataclass(frozen=True)
class Movement:
    """How far the factors moved in one iteration: per factor m_l = 1 − cos(v_l new, v_l old)
    (0: still; 1: turned a right angle; 2: flipped to the opposite side), summarized as
    ``median``, ``p90``, ``max`` and ``converged`` (the share with m_l < tolerance); and
    ``response`` the median ‖Δ(R·v_l)‖ where the update was taken (rising: the factors climb
    towards larger, more explosive effects); ``proposed`` the median 1 − cos between v_l and its
    undamped update (damping slows the factors; only ``proposed`` → 0 means a fixed point)."""

    median: float
    p90: float
    max: float
    converged: float
    response: float = float("nan")
    proposed: float = float("nan")

    @classmethod
    def between(
        cls,
        new: Float[Tensor, "f d"],
        old: Float[Tensor, "f d"],
        tolerance: float,
        delta: Tensor | None = None,
        proposal: Tensor | None = None,
    ) -> Movement:
        m = (1 - (unit_rows(new) * unit_rows(old)).sum(-1)).double().cpu()
        q = torch.quantile(m, torch.tensor([0.5, 0.9], dtype=m.dtype, device=m.device))
        response = float("nan") if delta is None else float(delta.norm(dim=-1).median())
        asked = (
            float("nan") if proposal is None else float((1 - (unit_rows(proposal) * unit_rows(old)).sum(-1)).median())
        )
        return cls(float(q[0]), float(q[1]), float(m.max()), float((m < tolerance).double().mean()), response, asked)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)

    def short(self) -> str:
        """For a progress bar: ``median/p90/max``, the converged share and the median ‖Δ‖."""
        return (
            f"{self.median:.1e}/{self.p90:.1e}/{self.max:.1e} {self.converged:.0%} |Δ| {self.response:.3g} "
            f"asked {self.proposed:.1e}"
        )


def importance_weights(
    u: Float[Tensor, "f d"], v: Float[Tensor, "f d"], b: Float[Tensor, " f"]
) -> tuple[Float[Tensor, " f"], float]:
    """α solving K α = b with K = (U Uᵀ) ∘ (exp(V Vᵀ) − 1), and K's condition number (in float64;
    a singular K, e.g. two identical factors, gives a least-squares α and an infinite condition)."""
    u64, v64, b64 = u.double(), v.double(), b.double()
    k = (u64 @ u64.T) * torch.expm1(v64 @ v64.T)
    condition = float(torch.linalg.cond(k))
    try:
        alpha = torch.linalg.solve(k, b64)
    except RuntimeError:  # singular
        alpha = torch.linalg.lstsq(k, b64[:, None]).solution[:, 0]
    return alpha.float(), condition
