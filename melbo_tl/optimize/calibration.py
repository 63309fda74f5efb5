"""The response of a later layer to a vector added earlier, and the radius R where it stops being linear.

:class:`SliceResponse` is Δ(θ): add θ at ``blocks.s.hook_resid_post`` on every real token, read
``blocks.t.hook_resid_pre``, and average f(x + θ) − f(x) over the chosen target positions and
prompts (padding never steered nor averaged). It evaluates many θ at once (rows), its forward-mode
derivative J·v at θ = 0 (``torch.func.jvp``), and the gradient of ⟨u, Δ(θ)⟩ for many (u, θ) pairs.

:func:`calibrate_radius` picks R so that the non-linear part of the response is a fixed fraction
of the linear part (deep causal transcoding's calibration):

    ρ(R) = sqrt( mean_k ‖Δ(R v_k) − R·J v_k‖² / ‖R·J v_k‖² )   over random unit v_k,

solving ρ(R) = target (default 0.5) by walking from the middle of a range of radii by factors of
2 until ρ brackets the target, then root finding in log-log to a relative tolerance on R (1 %:
far below float32 noise would only cost time). Shared by DCT and by
``melbo train --radius auto``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import master_copy, to_result

DEFAULT_GRID = (0.25, 256.0)


class CalibrationError(ValueError):
    """ρ(R) never crossed the target in the scanned range; the message lists what was seen."""


class SliceResponse:
    """Δ(θ) for the prompts and token sets of a :class:`MelboProblem` (float32 in and out).

    ``chunk`` bounds how many θ rows go through the model at once (memory); results do not
    depend on it.
    """

    def __init__(self, problem: MelboProblem, *, chunk: int = 64) -> None:
        if chunk < 1:
            raise ValueError(f"chunk must be ≥ 1, got {chunk}.")
        self.problem = problem
        self.chunk = chunk
        weights = problem.select.float()  # [prompts, pos]: the target positions of each prompt
        self.weights = (weights / weights.sum())[None, :, :, None]  # mean over prompts and positions

    @property
    def d_model(self) -> int:
        return int(self.problem.target0.shape[-1])

    def _delta(self, theta: Float[Tensor, "k d_model"]) -> Float[Tensor, "k d_model"]:
        _, delta = self.problem.objective(self.problem.add_vectors(theta))  # [k, prompts, pos, d], float32
        return (delta * self.weights).sum((1, 2))

    def __call__(self, theta: Float[Tensor, "k d_model"]) -> Float[Tensor, "k d_model"]:
        """Δ(θ_k) for every row (no gradient)."""
        with torch.no_grad():
            return torch.cat([self._delta(theta[i : i + self.chunk]) for i in range(0, len(theta), self.chunk)])

    def jvp(self, directions: Float[Tensor, "k d_model"]) -> Float[Tensor, "k d_model"]:
        """J·v_k: the derivative of Δ at θ = 0 along each row (forward mode, ``torch.func.jvp``)."""
        out = []
        for i in range(0, len(directions), self.chunk):
            v = directions[i : i + self.chunk]
            _, jv = torch.func.jvp(self._delta, (torch.zeros_like(v),), (v,))
            out.append(jv.detach())
        return torch.cat(out)

    def pullback(
        self, theta: Float[Tensor, "k d_model"], outputs: Float[Tensor, "k d_model"]
    ) -> tuple[Float[Tensor, "k d_model"], Float[Tensor, "k d_model"]]:
        """For each row: Δ(θ_k) and ∇_θ ⟨u_k, Δ(θ)⟩ at θ_k, where u_k = ``outputs`` row k.

        ``outputs`` may be a function of Δ: pass a callable to compute u from Δ (e.g. normalize
        Δ, as DCT's alternating update does); the gradient is then taken for that u, held fixed.
        At θ = 0 (every row zero, as in DCT's Jacobian starts) one forward serves all rows.
        """
        if not callable(outputs) and not theta.any():
            return self._pullback_at_zero(outputs)
        deltas, grads = [], []
        for i in range(0, len(theta), self.chunk):
            th = theta[i : i + self.chunk].detach().clone().requires_grad_(True)
            with torch.enable_grad():
                delta = self._delta(th)
                u = outputs(delta.detach()) if callable(outputs) else outputs[i : i + self.chunk]
                (grad,) = torch.autograd.grad((delta * u).sum(), th)
            deltas.append(delta.detach())
            grads.append(grad)
        return torch.cat(deltas), torch.cat(grads)

    def _pullback_at_zero(
        self, outputs: Float[Tensor, "k d_model"]
    ) -> tuple[Float[Tensor, "k d_model"], Float[Tensor, "k d_model"]]:
        """Δ(0) and Jᵀu_k for every row: one single-row forward, the backward batched over rows."""
        th = torch.zeros_like(outputs[:1]).requires_grad_(True)
        grads = []
        with torch.enable_grad():
            delta = self._delta(th)  # [1, d]
            for i in range(0, len(outputs), self.chunk):
                u = outputs[i : i + self.chunk, None, :]
                (grad,) = torch.autograd.grad(delta, th, grad_outputs=u, is_grads_batched=True, retain_graph=True)
                grads.append(grad[:, 0])
        return delta.detach().expand(len(outputs), -1).clone(), torch.cat(grads)


def unit_rows(x: Tensor) -> Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-30)


def random_directions(n: int, d: int, seed: int, model: Any) -> Float[Tensor, "n d"]:
    """``n`` random unit vectors, the same for a given seed on every device."""
    gen = torch.Generator(device="cpu").manual_seed(seed)
    return master_copy(unit_rows(torch.randn(n, d, generator=gen, device="cpu")), model)


@dataclass
class Calibration:
    """Fields: ``radius`` the calibrated R (ρ(R) = ``target``); ``radii``/``rho`` every R evaluated
    (sorted) and its ρ — the curve; ``n_directions`` random directions averaged over;
    ``seconds`` wall time."""

    radius: float
    target: float
    radii: list[float] = field(default_factory=list)
    rho: list[float] = field(default_factory=list)
    n_directions: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def nonlinearity(response: SliceResponse, directions: Tensor, jv: Tensor, radius: float) -> float:
    """ρ(R) for the given unit directions and their J·v."""
    linear = radius * jv
    delta = response(radius * directions)
    ratio = (delta - linear).pow(2).sum(-1) / linear.pow(2).sum(-1).clamp_min(1e-30)
    return float(ratio.mean().sqrt())


def calibrate_radius(
    response: SliceResponse,
    *,
    target: float = 0.5,
    n_directions: int = 30,
    seed: int = 0,
    grid: Sequence[float] = DEFAULT_GRID,
    step: float = 2.0,
    rtol: float = 1e-2,
    progress: bool = True,
) -> Calibration:
    """The R where ρ(R) = ``target`` (see the module docstring); raises :class:`CalibrationError`
    naming the scanned range and the ρ values seen if ρ never crosses ``target`` there.

    The search starts at the middle of ``grid`` (geometric), walks by factors of ``step`` towards
    the crossing until ρ brackets the target, then finds the root of log ρ − log target in log R
    (Brent; ρ is close to a power of R there, so few evaluations are needed)."""
    from scipy.optimize import brentq

    if not target > 0:
        raise ValueError(f"target ρ must be > 0, got {target}.")
    if n_directions < 1:
        raise ValueError(f"n_directions must be ≥ 1, got {n_directions}.")
    low, high = float(grid[0]), float(grid[-1])
    if not 0 < low < high:
        raise ValueError(f"grid must be 0 < low < high, got {tuple(grid)}.")
    if not step > 1:
        raise ValueError(f"step must be > 1, got {step}.")
    started = time.perf_counter()
    model = response.problem.segment.model
    v = random_directions(n_directions, response.d_model, seed, model)
    bar = tqdm(desc="calibrating R", disable=not progress, unit="ρ")
    jv = response.jvp(v)
    seen: dict[float, float] = {}

    def rho(radius: float) -> float:
        if radius not in seen:
            seen[radius] = nonlinearity(response, v, jv, radius)
            bar.update(1)
        return seen[radius]

    bracket, below = _bracket(rho, low, high, target, step)
    if bracket is None:
        bar.close()
        curve = ", ".join(f"ρ({r:.3g}) = {seen[r]:.3g}" for r in sorted(seen))
        why = (
            " ρ was at or above the target everywhere; in float16/bfloat16 that is rounding noise at small R,"
            " so widen the grid downwards or calibrate on a float32 model."
            if below is None
            else ""
        )
        raise CalibrationError(
            f"ρ(R) never crossed the target {target:g} upwards for R in [{low:g}, {high:g}] ({curve}).{why} "
            f"Widen the grid, or choose another target, or pass a fixed radius."
        )
    log_r = brentq(
        lambda x: math.log(max(rho(math.exp(x)), 1e-30) / target),
        math.log(bracket[0]),
        math.log(bracket[1]),
        xtol=math.log1p(rtol),
    )
    radius = math.exp(log_r)
    rho(radius)
    bar.close()
    order = sorted(seen)
    return Calibration(
        radius=radius,
        target=target,
        radii=order,
        rho=[seen[r] for r in order],
        n_directions=n_directions,
        seconds=time.perf_counter() - started,
    )


def _bracket(
    rho: Callable[[float], float], low: float, high: float, target: float, step: float
) -> tuple[tuple[float, float] | None, float | None]:
    """(bracket, a radius seen below the target): the first upward crossing of ``target`` found by
    walking from the middle of [low, high] towards it. Walking down stops at the first radius
    below the target, so a noise floor at smaller R (ρ high again in half precision: Δ is
    rounding noise there, not non-linearity) is never mistaken for the crossing."""
    radius = math.sqrt(low * high)
    if rho(radius) >= target:
        while radius > low:
            lower = max(low, radius / step)
            if rho(lower) < target:
                return (lower, radius), lower
            radius = lower
        return None, None
    while radius < high:
        upper = min(high, radius * step)
        if rho(upper) >= target:
            return (radius, upper), radius
        radius = upper
    return None, radius


def response_of(problem: MelboProblem, vectors: Tensor, *, chunk: int = 64) -> Tensor:
    """Δ(v) per row for vectors given on any device (CPU float32 result)."""
    response = SliceResponse(problem, chunk=chunk)
    return to_result(response(master_copy(vectors, problem.segment.model)))
