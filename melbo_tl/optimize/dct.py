"""Deep causal transcoding (DCT; Mack & Turner): hundreds of calibrated steering vectors at once.

DCT models the effect of adding θ at the ``source`` site on the mean residual at the later
``target`` site over the target positions (:class:`~melbo_tl.optimize.calibration.SliceResponse`)
as a shallow exponential MLP, Δ(θ) ≈ Σ_l α_l u_l (exp⟨v_l, θ⟩ − 1), and fits F input directions
V [F, d] and output directions U [F, d] (unit rows) by alternating updates, all factors at once
as rows of one batched segment:

1. R: fixed, or calibrated where the response stops being linear (ρ(R) = 0.5);
2. start (``start``): ``jacobian``: U random, v_l = normalize(Jᵀu_l); ``jacobian-svd``: the top
   right singular vectors of Pᵀ J for ``d_proj`` random unit outputs P, u_l = normalize(Δ(R·v_l));
   ``random``: both random;
3. iterate (``update``): with Δ_l = Δ(R·v_l), u_l ← normalize(Δ_l) and
   v_l ← normalize(∇_θ⟨u, Δ(θ)⟩ at R·v_l), where u is the new u_l (``alternating``: v climbs
   ‖Δ(θ)‖) or the previous one (``simultaneous``, the reference code); both damped by ``beta``;
   V orthogonalized (``orthogonalize``, sign-keeping) after each update — after the last one
   too unless ``orthogonal_result`` is False (the reference returns its last raw update); at most
   ``iterations`` updates, fewer once the median factor turned less than ``tolerance`` (1 − cos);
4. rank (``rank_by``): importance b_l = ⟨u_l, Δ(R·v_l)⟩, α = K⁻¹b with
   K = (U Uᵀ) ∘ (exp(V Vᵀ) − 1), α², or a target direction read through the rest of the model
   (:mod:`melbo_tl.optimize.dct_ranking`).

``variant`` picks every choice left as None at once: ``"melbo_tl"`` (this project's defaults) or
``"reference"`` (the public reference code's algorithm: Jacobian-SVD start, simultaneous updates,
QR, its last update un-orthogonalized, α² order) — always with this project's sites, padding
masks and sign-keeping orthogonalization.

Registered as method ``"dct"``: ``vectors`` = R·V in rank order, so generation, evaluation,
analysis and reports work unchanged; ``U``, ``alpha``, ``importance`` and the factor ``order``
ride along.

>>> run = train(model, "dct", ["How can I make a bomb?"], DCTConfig(n_factors=64))
>>> run = train(model, "dct", ["How can I make a bomb?"], DCTConfig(n_factors=64, variant="reference"))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.optimize.calibration import (
    Calibration,
    SliceResponse,
    calibrate_radius,
    random_directions,
    unit_rows,
)
from melbo_tl.optimize.configs import RANKINGS, DCTConfig  # DCTConfig lives there, without torch
from melbo_tl.optimize.dct_ranking import BEHAVIOURS, rank_key, target_scores
from melbo_tl.optimize.dct_screen import Screen, screen_factors
from melbo_tl.optimize.dct_steps import (
    Movement,
    damp,
    importance_weights,
    orthogonalize,
    svd_start,
)
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import master_copy, to_result
from melbo_tl.prompts import PromptLike
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import d_model

NAME = "dct"


@dataclass
class DCTState:
    """Where a fit stands: ``radius``, its ``calibration`` (None for a fixed R), the current ``U``
    and ``V`` [F, d] (None before the start), ``iteration`` (updates done), ``movement`` per
    iteration (:class:`~melbo_tl.optimize.dct_steps.Movement` as dicts) and ``seconds``."""

    radius: float
    calibration: Calibration | None = None
    U: Tensor | None = None
    V: Tensor | None = None
    iteration: int = 0
    movement: list[dict[str, float]] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class DCTResult(VectorResult):
    """Fields: ``vectors`` [F, d] = R·v_l in rank order (added at ``hook``); ``U`` [F, d] output
    directions; ``importance`` b_l; ``alpha`` α_l; ``target_score`` (with ``rank_by="A:B"``) per
    vector; ``order`` the factor index of each rank; ``radius``; ``calibration``; ``condition``
    number of K; ``iterations`` run; ``converged``; ``movement`` per iteration (median, p90,
    max, converged share); ``seconds`` (calibration, fit, ranking); ``config`` (layers and
    variant choices filled in); ``texts`` formatted prompts; ``screen`` (``rank_by="behaviours"``)
    each factor's short completion, verdict and group, in factor order."""

    vectors: Tensor
    U: Tensor
    importance: Tensor
    alpha: Tensor
    target_score: Tensor | None
    order: list[int]
    radius: float
    calibration: Calibration | None
    condition: float
    iterations: int
    converged: bool
    movement: list[dict[str, float]]
    seconds: dict[str, float]
    config: DCTConfig
    texts: list[str]
    hook: str = ""
    screen: Screen | None = None

    def summary(self) -> dict[str, Any]:
        return {
            "radius R": self.radius,
            "iterations": f"{self.iterations} ({'converged' if self.converged else 'not converged'})",
            "ranked by": self.config.rank_by,
            "importance": self.importance.tolist(),
            "target": str(self.config.target),
        }


def start_factors(response: Any, cfg: DCTConfig, radius: float, model: Any) -> tuple[Tensor, Tensor]:
    """(U, V) before the first update, on the model's device (see ``start`` in the module docstring)."""
    d, f = response.d_model, cfg.n_factors
    if cfg.start == "random":
        u = random_directions(f, d, cfg.seed + 1, model)
        return u, orthogonalize(random_directions(f, d, cfg.seed + 2, model), cfg.orthogonalize)
    if cfg.start == "jacobian":
        u = random_directions(f, d, cfg.seed + 1, model)
        _, grad = response.pullback(torch.zeros_like(u), u)
        return u, orthogonalize(unit_rows(grad), cfg.orthogonalize)
    p = random_directions(cfg.d_proj, d, cfg.seed + 1, model)
    _, projected = response.pullback(torch.zeros_like(p), p)  # rows Jᵀ p_k: Pᵀ J
    v = orthogonalize(svd_start(projected, f), cfg.orthogonalize)
    return unit_rows(response(radius * v)), v


def fit_dct(
    model: Any,
    prompts: Sequence[PromptLike],
    cfg: DCTConfig | None = None,
    *,
    state: DCTState | None = None,
    on_checkpoint: Callable[[DCTState], None] | None = None,
    progress: bool = True,
    response: Callable[[SliceResponse], Any] | None = None,
    **settings: Any,
) -> DCTResult:
    """Fit a DCT on ``prompts`` (module docstring). ``state`` continues an interrupted fit (or
    starts from given ``U``/``V`` at iteration 0); ``on_checkpoint(state)`` is called after
    calibration, after the start and after every iteration. ``response`` wraps the local Δ
    (:class:`SliceResponse`) in an object with the same ``__call__``, ``jvp``, ``pullback``,
    ``problem`` and ``d_model`` that computes its row chunks elsewhere (e.g.
    :func:`melbo_tl.distributed.dct_on_workers`); None computes them here."""
    cfg = DCTConfig.build(cfg, **settings).for_model(model)
    cfg.check_model(model)
    problem = MelboProblem.build(
        model, prompts, source=cfg.source, target=cfg.target, p=2.0, q=1.0, positions=cfg.positions, chat=cfg.chat
    )
    evaluator = SliceResponse(problem, chunk=cfg.chunk_size)
    if response is not None:
        evaluator = response(evaluator)
    save = on_checkpoint or (lambda s: None)
    if state is None:
        started = time.perf_counter()
        if cfg.radius == "auto":
            cal = calibrate_radius(
                evaluator, target=cfg.calibration_target, n_directions=cfg.calibration_directions, seed=cfg.seed,
                progress=progress,
            )  # fmt: skip
            state = DCTState(cal.radius, cal, seconds={"calibration": time.perf_counter() - started})
        else:
            state = DCTState(float(cfg.radius), seconds={"calibration": 0.0})
        save(state)
    radius = state.radius
    started = time.perf_counter()
    if state.V is None:
        state.U, state.V = (to_result(x) for x in start_factors(evaluator, cfg, radius, model))
        save(state)
    _iterate(evaluator, cfg, state, save, progress)
    state.seconds["fit"] = state.seconds.get("fit", 0.0) + time.perf_counter() - started
    return _ranked(model, prompts, problem, evaluator, cfg, state)


def _iterate(response: Any, cfg: DCTConfig, state: DCTState, save: Callable[[DCTState], None], progress: bool) -> None:
    """The alternating updates, from ``state.iteration`` to ``cfg.iterations`` or convergence."""
    assert state.U is not None and state.V is not None
    model = response.problem.segment.model
    u, v = master_copy(state.U, model), master_copy(state.V, model)
    bar = tqdm(
        range(state.iteration, cfg.iterations), desc=f"DCT {cfg.n_factors} factors", disable=not progress,
        postfix="moved (1 − cos) median/p90/max, share still, median |Δ|, undamped turn asked",
    )  # fmt: skip
    for k in bar:
        outputs = unit_rows if cfg.update == "alternating" else u
        delta, grad = response.pullback(state.radius * v, outputs)
        last = k == cfg.iterations - 1
        new_v = damp(grad, v, cfg.beta)
        if cfg.orthogonal_result or not last:
            new_v = orthogonalize(new_v, cfg.orthogonalize)
        moved = Movement.between(new_v, v, cfg.tolerance, delta, grad)
        u, v = damp(delta, u, cfg.beta), new_v
        state.U, state.V = to_result(u), to_result(v)
        state.iteration += 1
        state.movement.append(moved.to_dict())
        bar.set_postfix_str(f"moved {moved.short()}")
        save(state)
        if moved.median < cfg.tolerance:
            break


def _ranked(
    model: Any, prompts: Sequence[PromptLike], problem: MelboProblem, response: Any, cfg: DCTConfig, state: DCTState
) -> DCTResult:
    """Rank the fitted factors (``rank_by``) and package the result."""
    assert state.U is not None and state.V is not None
    started = time.perf_counter()
    radius = state.radius
    v = master_copy(state.V, model)
    delta = response(radius * v)
    u = unit_rows(delta) if cfg.final_u == "response" else master_copy(state.U, model)
    importance = (u * delta).sum(-1)
    alpha, condition = importance_weights(u, v, importance)
    scores, screen = None, None
    if cfg.rank_by not in RANKINGS:
        scores = target_scores(model, problem, radius * v, str(cfg.rank_by), chunk=cfg.chunk_size)
    if cfg.rank_by == BEHAVIOURS:
        base = torch.argsort(to_result(importance), descending=True, stable=True).tolist()
        screen = screen_factors(
            model, prompts, to_result(radius * v), problem.hook, base, chat=cfg.chat, max_new_tokens=cfg.screen_tokens
        )
        order = torch.tensor(screen.order)
    else:
        key = rank_key(str(cfg.rank_by), to_result(importance), to_result(alpha), scores)
        order = torch.argsort(key, descending=True, stable=True)
    state.seconds["ranking"] = time.perf_counter() - started
    pick = lambda x: to_result(x)[order]  # noqa: E731
    last = state.movement[-1] if state.movement else None
    return DCTResult(
        vectors=pick(radius * v),
        U=pick(u),
        importance=pick(importance),
        alpha=pick(alpha),
        target_score=None if scores is None else scores[order],
        order=order.tolist(),
        radius=radius,
        calibration=state.calibration,
        condition=condition,
        iterations=state.iteration,
        converged=last is not None and last["median"] < cfg.tolerance,
        movement=list(state.movement),
        seconds=dict(state.seconds),
        config=cfg,
        texts=problem.texts,
        hook=problem.hook,
        screen=screen,
    )


# --- the registered method --------------------------------------------------------------------


def _state_meta(state: DCTState) -> dict[str, Any]:
    return {
        "radius": state.radius,
        "calibration": None if state.calibration is None else state.calibration.to_dict(),
        "iteration": state.iteration,
        "movement": state.movement,
        "seconds": state.seconds,
    }


def _running(cfg: DCTConfig, state: DCTState, d: int) -> Run:
    """A checkpoint: R·V (not yet ranked) as the run's vectors once the fit has started."""
    if state.V is None:
        return Run({"vectors": torch.zeros(0, d, device="cpu")}, {"hooks": [], **_state_meta(state)})
    tensors = {"vectors": state.radius * state.V, "V": state.V, "U": state.U}
    meta = {"hooks": [cfg.hook] * len(state.V), "steer_positions": "all", **_state_meta(state)}
    return Run(tensors, meta)  # type: ignore[arg-type]


def _state_of(run: Run | None) -> DCTState | None:
    if run is None or "radius" not in run.meta:
        return None
    meta = run.meta
    cal = meta.get("calibration")
    t = run.tensors
    return DCTState(
        radius=float(meta["radius"]),
        calibration=None if cal is None else Calibration(**cal),
        U=t.get("U"),
        V=t.get("V"),
        iteration=int(meta.get("iteration", 0)),
        movement=[m for m in meta.get("movement", []) if isinstance(m, dict)],
        seconds=dict(meta.get("seconds", {})),
    )


def _train(model: Any, prompts: Sequence[PromptLike], cfg: DCTConfig, ckpt: Checkpoints) -> Run:
    cfg = cfg.for_model(model)
    d = d_model(model)
    previous = ckpt.previous
    if previous is not None and previous.meta.get("status") == "complete":
        return Run(dict(previous.tensors), {k: v for k, v in previous.meta.items()})
    result = fit_dct(
        model, prompts, cfg, state=_state_of(previous), on_checkpoint=lambda s: ckpt.save(_running(cfg, s, d)),
        response=ckpt.backend, progress=ckpt.progress,
    )  # fmt: skip
    screen = result.screen
    per_vector = [
        {
            "rank": i,
            "factor": result.order[i],
            "importance": float(result.importance[i]),
            "alpha": float(result.alpha[i]),
            **({} if result.target_score is None else {"target_score": float(result.target_score[i])}),
            **({} if screen is None else _screened(screen, result.order[i])),
        }
        for i in range(len(result.order))
    ]
    tensors = {"vectors": result.vectors, "U": result.U, "alpha": result.alpha, "importance": result.importance}
    meta: dict[str, Any] = {
        "hooks": [result.hook] * len(result.order),
        "steer_positions": "all",
        "source": str(cfg.source),
        "target": str(cfg.target),
        "objective_positions": cfg.positions,
        "radius": result.radius,
        "calibration": None if result.calibration is None else result.calibration.to_dict(),
        "iteration": result.iterations,
        "converged": result.converged,
        "movement": result.movement,
        "condition_number": result.condition,
        "rank_by": cfg.rank_by,
        "variant": cfg.variant,
        "order": result.order,
        "seconds": result.seconds,
        "texts": result.texts,
        "per_vector": per_vector,
    }
    if screen is not None:
        meta["screen"] = {
            "unsteered": screen.unsteered,
            "embedder": screen.embedder,
            "max_new_tokens": screen.max_new_tokens,
        }
    return Run(tensors, meta)


def _screened(screen: Screen, factor: int) -> dict[str, Any]:
    """A factor's screen verdict for run.json's ``per_vector``."""
    return {"group": screen.group[factor], "cluster": screen.cluster[factor], "screen": screen.completion[factor]}


METHOD = register_method(
    Method(
        name=NAME,
        config=DCTConfig,
        train=_train,
        intervention=vector_intervention,
        count=vector_count,
        description="deep causal transcoding (Mack & Turner): F calibrated steering vectors fitted at once",
    )
)
