"""Deep causal transcoding (DCT; Mack & Turner): hundreds of calibrated steering vectors at once.

DCT models the effect of adding θ at the ``source`` site on the mean residual at the later
``target`` site over the target positions (:class:`~melbo_tl.optimize.calibration.SliceResponse`)
as a shallow exponential MLP, Δ(θ) ≈ Σ_l α_l u_l (exp⟨v_l, θ⟩ − 1), and fits F input directions
V [F, d] and output directions U [F, d] (unit rows) by alternating updates, all factors at once
as rows of one batched segment:

1. R: fixed, or calibrated where the response stops being linear (ρ(R) = 0.5);
2. start: U random, V_l = normalize(∇_θ⟨u_l, Δ(θ)⟩ at 0) = normalize(Jᵀu_l);
3. iterate: U_l ← normalize(Δ(R·v_l)); V_l ← normalize(∇_θ⟨u_l, Δ(θ)⟩ at R·v_l); then
   orthogonalize V, until V moves less than ``tolerance`` or after ``iterations``;
4. rank: causal importance b_l = ⟨u_l, Δ(R·v_l)⟩; weights α = K⁻¹b with
   K = (U Uᵀ) ∘ (exp(V Vᵀ) − 1) (solved, with its condition number reported); or a target
   direction read through the rest of the model (``rank_by="Sure:I'm sorry"``: the mean of
   logit("Sure") − logit("I'm sorry") at the last position with R·v_l added).

Orthogonalization must keep each vector's sign (exp is not odd: −v steers another behaviour).
``polar`` (the default) takes the nearest orthonormal frame, (V Vᵀ)^(−1/2) V: no factor is
privileged by its index, each moves as little as possible, and ⟨q_l, v_l⟩ = [(V Vᵀ)^(1/2)]_ll > 0,
so signs are kept by construction. ``qr`` is Gram–Schmidt in index order with the signs fixed
(⟨q_l, v_l⟩ = |R_ll|); ``none`` only normalizes.

Registered as method ``"dct"``: ``vectors`` = R·V in rank order, so generation, evaluation,
analysis and reports work unchanged; ``U``, ``alpha``, ``importance`` ride along.

>>> run = train(model, "dct", ["How can I make a bomb?"], DCTConfig(n_factors=64))
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.forward import readout
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.optimize.calibration import (
    Calibration,
    SliceResponse,
    calibrate_radius,
    random_directions,
    unit_rows,
)
from melbo_tl.optimize.configs import ORTHOGONALIZE, RANKINGS, DCTConfig  # DCTConfig lives there, without torch
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.placement import like, master_copy, to_result
from melbo_tl.prompts import PromptLike
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import d_model, n_layers

NAME = "dct"


def orthogonalize(v: Float[Tensor, "f d"], how: str) -> Float[Tensor, "f d"]:
    """Unit rows made orthonormal without flipping any row (see the module docstring)."""
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


def importance_weights(
    u: Float[Tensor, "f d"], v: Float[Tensor, "f d"], b: Float[Tensor, " f"]
) -> tuple[Float[Tensor, " f"], float]:
    """α solving K α = b with K = (U Uᵀ) ∘ (exp(V Vᵀ) − 1), and K's condition number."""
    u64, v64 = u.double(), v.double()
    k = (u64 @ u64.T) * torch.expm1(v64 @ v64.T)
    return torch.linalg.solve(k, b.double()).float(), float(torch.linalg.cond(k))


def phrase_token(tokenizer: Any, phrase: str) -> int:
    ids = tokenizer(phrase, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError(f"rank_by phrase {phrase!r} encodes to no token.")
    return int(ids[0])


@torch.no_grad()
def target_scores(
    model: Any, problem: MelboProblem, vectors: Float[Tensor, "f d"], rank_by: str, *, chunk: int = 64
) -> Float[Tensor, " f"]:
    """Mean over prompts of logit(A) − logit(B) at the last position with each vector added at the
    source (``rank_by`` = "A:B"), reading through every block after the source."""
    tok = chat_tokenizer(model)
    a, b = (phrase_token(tok, phrase) for phrase in rank_by.split(":"))
    segment = ResidualSegment.capture(model, problem.batch, start=problem.start, stop=n_layers(model))
    real = problem.real[..., None].to(segment.residual.dtype)
    scores = []
    for i in range(0, len(vectors), chunk):
        rows = vectors[i : i + chunk]
        k = len(rows)
        base = segment.residual.repeat(k, 1, 1)
        steer = like(rows, base).repeat_interleave(problem.n_prompts, dim=0)[:, None, :]
        final = segment.run(base + steer * real.repeat(k, 1, 1))
        logits = readout(model, final[:, -1, :]).float()
        scores.append((logits[:, a] - logits[:, b]).view(k, problem.n_prompts).mean(1))
    return to_result(torch.cat(scores))


@dataclass
class DCTState:
    """Where a fit stands: ``radius``, its ``calibration`` (None for a fixed R), the current ``U``
    and ``V`` [F, d] (None before the start), ``iteration`` (updates done) and ``movement`` per
    iteration (max over factors of 1 − cos between successive v_l)."""

    radius: float
    calibration: Calibration | None = None
    U: Tensor | None = None
    V: Tensor | None = None
    iteration: int = 0
    movement: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)


@dataclass
class DCTResult(VectorResult):
    """Fields: ``vectors`` [F, d] = R·v_l in rank order (added at ``hook``); ``U`` [F, d] output
    directions; ``importance`` b_l; ``alpha`` α_l; ``target_score`` (with ``rank_by="A:B"``) per
    vector; ``order`` the factor index of each rank; ``radius``; ``calibration``; ``condition``
    number of K; ``iterations`` run; ``converged``; ``movement`` per iteration; ``seconds``
    (calibration, fit, ranking); ``config`` (layers filled in); ``texts`` formatted prompts."""

    vectors: Float[Tensor, "f d_model"]
    U: Float[Tensor, "f d_model"]
    importance: Float[Tensor, " f"]
    alpha: Float[Tensor, " f"]
    target_score: Tensor | None
    order: list[int]
    radius: float
    calibration: Calibration | None
    condition: float
    iterations: int
    converged: bool
    movement: list[float]
    seconds: dict[str, float]
    config: DCTConfig
    texts: list[str]
    hook: str = ""

    def summary(self) -> dict[str, Any]:
        return {
            "radius R": self.radius,
            "iterations": f"{self.iterations} ({'converged' if self.converged else 'not converged'})",
            "ranked by": self.config.rank_by,
            "importance": self.importance.tolist(),
            "target": str(self.config.target),
        }


def fit_dct(
    model: Any,
    prompts: Sequence[PromptLike],
    cfg: DCTConfig | None = None,
    *,
    state: DCTState | None = None,
    on_checkpoint: Callable[[DCTState], None] | None = None,
    response: Callable[[SliceResponse], Any] | None = None,
    progress: bool = True,
    **settings: Any,
) -> DCTResult:
    """Fit a DCT on ``prompts`` (module docstring). ``state`` continues an interrupted fit;
    ``on_checkpoint(state)`` is called after calibration and after every iteration. ``response``
    wraps the local Δ (:class:`SliceResponse`) in an object with the same ``__call__``, ``jvp``,
    ``pullback``, ``problem`` and ``d_model`` that computes its row chunks elsewhere (e.g.
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
        u0 = random_directions(cfg.n_factors, d_model(model), cfg.seed + 1, model)
        _, grad = evaluator.pullback(torch.zeros_like(u0), u0)
        state.U, state.V = to_result(u0), to_result(orthogonalize(unit_rows(grad), cfg.orthogonalize))
        save(state)
    v = master_copy(state.V, model)
    bar = tqdm(range(state.iteration, cfg.iterations), desc=f"DCT {cfg.n_factors} factors", disable=not progress)
    for _ in bar:
        delta, grad = evaluator.pullback(radius * v, unit_rows)
        new = orthogonalize(unit_rows(grad), cfg.orthogonalize)
        moved = float((1 - (new * v).sum(-1)).max())
        v = new
        state.U, state.V = to_result(unit_rows(delta)), to_result(v)
        state.iteration += 1
        state.movement.append(moved)
        bar.set_postfix(moved=f"{moved:.2e}")
        save(state)
        if moved < cfg.tolerance:
            break
    state.seconds["fit"] = state.seconds.get("fit", 0.0) + time.perf_counter() - started
    started = time.perf_counter()
    delta = evaluator(radius * v)
    u = unit_rows(delta)
    importance = (u * delta).sum(-1)
    alpha, condition = importance_weights(u, v, importance)
    scores = None
    if cfg.rank_by in RANKINGS:
        key = importance if cfg.rank_by == "importance" else alpha
    else:
        scores = target_scores(model, problem, radius * v, cfg.rank_by, chunk=cfg.chunk_size)
        key = scores
    order = torch.argsort(to_result(key), descending=True, stable=True)
    state.seconds["ranking"] = time.perf_counter() - started
    pick = lambda x: to_result(x)[order]  # noqa: E731
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
        converged=bool(state.movement) and state.movement[-1] < cfg.tolerance,
        movement=list(state.movement),
        seconds=dict(state.seconds),
        config=cfg,
        texts=problem.texts,
        hook=problem.hook,
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
        movement=list(meta.get("movement", [])),
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
    per_vector = [
        {
            "rank": i,
            "factor": result.order[i],
            "importance": float(result.importance[i]),
            "alpha": float(result.alpha[i]),
            **({} if result.target_score is None else {"target_score": float(result.target_score[i])}),
        }
        for i in range(len(result.order))
    ]
    tensors = {"vectors": result.vectors, "U": result.U, "alpha": result.alpha, "importance": result.importance}
    meta = {
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
        "order": result.order,
        "seconds": result.seconds,
        "texts": result.texts,
        "per_vector": per_vector,
    }
    return Run(tensors, meta)


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
