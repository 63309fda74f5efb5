"""Deep causal transcoding (DCT; Mack & Turner): hundreds of calibrated steering vectors at once.

DCT models the effect of adding θ at ``blocks.s.hook_resid_post`` on the mean residual at
``blocks.t.hook_resid_pre`` over the target positions (:class:`~melbo_tl.optimize.calibration.SliceResponse`)
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
   too unless ``orthogonal_result`` is False (the reference returns its last raw update);
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

import contextlib
import contextvars
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.config import Config, require
from melbo_tl.optimize.calibration import (
    Calibration,
    SliceResponse,
    calibrate_radius,
    random_directions,
    unit_rows,
)
from melbo_tl.optimize.dct_ranking import BEHAVIOURS, RANKINGS, is_ranking, rank_key, target_scores
from melbo_tl.optimize.dct_screen import Screen, screen_factors
from melbo_tl.optimize.dct_steps import (
    ORTHOGONALIZE,
    Movement,
    damp,
    importance_weights,
    orthogonalize,
    svd_start,
)
from melbo_tl.optimize.problem import LayerPair, MelboProblem
from melbo_tl.placement import master_copy, to_result
from melbo_tl.prompts import Positions, PromptLike
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.steering.sites import d_model

NAME = "dct"
STARTS = ("jacobian", "jacobian-svd", "random")
UPDATES = ("alternating", "simultaneous")
FINAL_U = ("response", "last-update")
# The choices a variant makes for every field left as None.
VARIANTS: dict[str, dict[str, Any]] = {
    "melbo_tl": dict(
        start="jacobian", update="alternating", beta=1.0, orthogonalize="polar", orthogonal_result=True,
        final_u="response", rank_by="importance",
    ),
    "reference": dict(
        start="jacobian-svd", update="simultaneous", beta=1.0, orthogonalize="qr", orthogonal_result=False,
        final_u="last-update", rank_by="alpha2",
    ),
}  # fmt: skip


@dataclass
class DCTConfig(LayerPair, Config):
    """Settings of a DCT run.

    ``n_factors`` F; ``source_layer``/``target_layer`` (None: 7 and n_layers − 8, as MELBO);
    ``positions`` the target positions averaged (default the last 3 prompt tokens); ``radius`` R
    or ``"auto"`` (calibrated with ``calibration_target`` ρ over ``calibration_directions``
    random directions); ``iterations`` at most, stopping early once every v_l moved less than
    ``tolerance`` (1 − cos); ``chunk_size`` rows per forward pass; ``seed``; ``chat`` formatting.

    ``variant`` ("melbo_tl" | "reference") fills every algorithm choice below left as None:
    ``start`` jacobian | jacobian-svd | random, with ``d_proj`` random outputs for jacobian-svd;
    ``update`` alternating | simultaneous (which u the v-update pulls back: the new or the
    previous); ``beta`` damping in (0, 1] (1: none); ``orthogonalize`` polar | qr | none
    (sign-keeping); ``orthogonal_result`` whether the returned V is orthogonalized after the last
    update; ``final_u`` response (u_l = Δ(R·v_l)/‖·‖ of the returned v_l) | last-update (the U of
    the last update, one step behind V, as the reference); ``rank_by`` importance | alpha |
    alpha2 | behaviours (coherent, distinct behaviours first: a ``screen_tokens`` greedy completion
    of each vector, :mod:`melbo_tl.optimize.dct_screen`) | "A:B" (logit of A's first token minus
    B's, read through the rest of the model)."""

    n_factors: int = 256
    source_layer: int | None = None
    target_layer: int | None = None
    positions: str = "last:3"
    radius: float | str = "auto"
    calibration_target: float = 0.5
    calibration_directions: int = 30
    iterations: int = 10
    tolerance: float = 1e-3
    chunk_size: int = 64
    seed: int = 0
    chat: bool = True
    variant: str = "melbo_tl"
    start: str | None = None
    d_proj: int = 32
    update: str | None = None
    beta: float | None = None
    orthogonalize: str | None = None
    orthogonal_result: bool | None = None
    final_u: str | None = None
    rank_by: str | None = None
    screen_tokens: int = 24

    def validate(self) -> None:
        require(self.variant in VARIANTS, f"variant {self.variant!r} is not one of {', '.join(VARIANTS)}.")
        for name, value in VARIANTS[self.variant].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        self.positions = str(Positions.parse(self.positions))
        require(self.n_factors >= 1, f"n_factors (F) must be ≥ 1, got {self.n_factors}.")
        if self.radius != "auto":
            try:
                self.radius = float(self.radius)
            except (TypeError, ValueError):
                raise ValueError(f"radius must be a number > 0 or 'auto', got {self.radius!r}.") from None
            require(self.radius > 0, f"radius must be > 0 or 'auto', got {self.radius}.")
        require(self.calibration_target > 0, f"calibration_target must be > 0, got {self.calibration_target}.")
        require(
            self.calibration_directions >= 1, f"calibration_directions must be ≥ 1, got {self.calibration_directions}."
        )
        require(self.iterations >= 0, f"iterations must be ≥ 0, got {self.iterations}.")
        require(self.tolerance >= 0, f"tolerance must be ≥ 0, got {self.tolerance}.")
        require(self.chunk_size >= 1, f"chunk_size must be ≥ 1, got {self.chunk_size}.")
        require(self.start in STARTS, f"start {self.start!r} is not one of {', '.join(STARTS)}.")
        require(self.screen_tokens >= 1, f"screen_tokens must be ≥ 1, got {self.screen_tokens}.")
        require(self.d_proj >= 1, f"d_proj must be ≥ 1, got {self.d_proj}.")
        require(self.update in UPDATES, f"update {self.update!r} is not one of {', '.join(UPDATES)}.")
        require(0 < float(self.beta) <= 1, f"beta must be in (0, 1] (1: no damping), got {self.beta}.")  # type: ignore[arg-type]
        self.beta = float(self.beta)  # type: ignore[arg-type]
        require(
            self.orthogonalize in ORTHOGONALIZE,
            f"orthogonalize {self.orthogonalize!r} is not one of {', '.join(ORTHOGONALIZE)}.",
        )
        require(
            isinstance(self.orthogonal_result, bool),
            f"orthogonal_result must be True or False, got {self.orthogonal_result!r}.",
        )
        require(self.final_u in FINAL_U, f"final_u {self.final_u!r} is not one of {', '.join(FINAL_U)}.")
        require(
            is_ranking(str(self.rank_by)),
            f"rank_by {self.rank_by!r}: use {', '.join(RANKINGS)}, or 'A:B' (e.g. \"Sure:I'm sorry\").",
        )

    def check_model(self, model: Any) -> None:
        super().check_model(model)
        require(
            self.orthogonalize == "none" or self.n_factors <= d_model(model),
            f"n_factors {self.n_factors} exceeds d_model {d_model(model)}: at most d_model vectors can be "
            f"orthogonal; lower n_factors or pass orthogonalize='none'.",
        )


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
class DCTResult:
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


# How fit_dct evaluates Δ: the local SliceResponse, or what a wrapper makes of it (e.g. the same
# response with its row chunks computed on Ray workers, melbo_tl.distributed.dct_on_workers).
_RESPONSE: contextvars.ContextVar[Callable[[SliceResponse], Any] | None] = contextvars.ContextVar(
    "dct_response", default=None
)


@contextlib.contextmanager
def response_wrapper(wrap: Callable[[SliceResponse], Any]) -> Iterator[None]:
    """Within the block, :func:`fit_dct` evaluates Δ through ``wrap(SliceResponse)``: an object
    with the same ``__call__``, ``jvp``, ``pullback``, ``problem`` and ``d_model``."""
    token = _RESPONSE.set(wrap)
    try:
        yield
    finally:
        _RESPONSE.reset(token)


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
    **settings: Any,
) -> DCTResult:
    """Fit a DCT on ``prompts`` (module docstring). ``state`` continues an interrupted fit (or
    starts from given ``U``/``V`` at iteration 0); ``on_checkpoint(state)`` is called after
    calibration, after the start and after every iteration."""
    cfg = DCTConfig.build(cfg, **settings).for_model(model)
    cfg.check_model(model)
    assert cfg.source_layer is not None and cfg.target_layer is not None
    problem = MelboProblem.build(
        model, prompts, source=cfg.source_layer, target=cfg.target_layer, p=2.0, q=1.0, positions=cfg.positions,
        chat=cfg.chat,
    )  # fmt: skip
    response = SliceResponse(problem, chunk=cfg.chunk_size)
    wrap = _RESPONSE.get()
    if wrap is not None:
        response = wrap(response)
    save = on_checkpoint or (lambda s: None)
    if state is None:
        started = time.perf_counter()
        if cfg.radius == "auto":
            cal = calibrate_radius(
                response, target=cfg.calibration_target, n_directions=cfg.calibration_directions, seed=cfg.seed,
                progress=progress,
            )  # fmt: skip
            state = DCTState(cal.radius, cal, seconds={"calibration": time.perf_counter() - started})
        else:
            state = DCTState(float(cfg.radius), seconds={"calibration": 0.0})
        save(state)
    radius = state.radius
    started = time.perf_counter()
    if state.V is None:
        state.U, state.V = (to_result(x) for x in start_factors(response, cfg, radius, model))
        save(state)
    _iterate(response, cfg, state, save, progress)
    state.seconds["fit"] = state.seconds.get("fit", 0.0) + time.perf_counter() - started
    return _ranked(model, prompts, problem, response, cfg, state)


def _iterate(response: Any, cfg: DCTConfig, state: DCTState, save: Callable[[DCTState], None], progress: bool) -> None:
    """The alternating updates, from ``state.iteration`` to ``cfg.iterations`` or convergence."""
    assert state.U is not None and state.V is not None
    model = response.problem.segment.model
    u, v = master_copy(state.U, model), master_copy(state.V, model)
    bar = tqdm(
        range(state.iteration, cfg.iterations), desc=f"DCT {cfg.n_factors} factors", disable=not progress,
        postfix="moved (1 − cos) median/p90/max, share still, median |Δ|",
    )  # fmt: skip
    for k in bar:
        outputs = unit_rows if cfg.update == "alternating" else u
        delta, grad = response.pullback(state.radius * v, outputs)
        last = k == cfg.iterations - 1
        new_v = damp(grad, v, cfg.beta)
        if cfg.orthogonal_result or not last:
            new_v = orthogonalize(new_v, cfg.orthogonalize)
        moved = Movement.between(new_v, v, cfg.tolerance, delta)
        u, v = damp(delta, u, cfg.beta), new_v
        state.U, state.V = to_result(u), to_result(v)
        state.iteration += 1
        state.movement.append(moved.to_dict())
        bar.set_postfix_str(f"moved {moved.short()}")
        save(state)
        if moved.max < cfg.tolerance:
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
        converged=last is not None and last["max"] < cfg.tolerance,
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
        progress=ckpt.progress,
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
        "source_layer": cfg.source_layer,
        "target_layer": cfg.target_layer,
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
