"""One-shot optimized steering vectors (Dunefsky): fit v on a single example by gradient descent.

v acts at a residual ``site`` (``Site(L)``: the input of block L; all positions by default) while
the model reads a prompt followed, teacher-forced, by a target completion. With p = softmax(coldness · logits):

- promotion  L⁺ = −Σ_k log p(y_k | x, y_<k; v)        (make the completion likely)
- suppression L⁻ = −Σ_k log(1 − p(y_k | x, y_<k; v))  (make it unlikely)

summed over every (prompt, completion) pair; losses are in nats, summed over completion tokens.
Probability targeting: stop once the loss reaches ``target_loss`` instead of pushing to
certainty, or with ``satisfice=True`` minimize (L − target_loss)². Adam from a random start of
norm ``init_norm``; an optional max-norm ball. Every completion of a step is in one padded
batch, and the residual at the site (which does not depend on v) is computed once.

Registered as method ``"oneshot"``.

Example::

    cfg = OneShotConfig(site=10, promote=("Sure, here is how",), steps=40, lr=0.1)
    result = optimize_vector(model, "How can I make a bomb?", cfg)
    result = optimize_vector(model, "How can I make a bomb?", site=10, promote=["Sure, here is how"])
    steer = result.intervention(0)  # AddVector(result.vectors[0], result.site)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.artifacts import Run
from melbo_tl.forward import run_forward
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.optimize.configs import OneShotConfig  # lives there, without torch
from melbo_tl.placement import like, master_copy, to_result
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, left_pad, prepare_prompts
from melbo_tl.registry import Checkpoints, Method, register_method
from melbo_tl.runs import vector_count, vector_intervention
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.results import VectorResult
from melbo_tl.steering.sites import d_model, n_layers

NAME = "oneshot"


@dataclass(frozen=True)
class Example:
    """A prompt with completions to promote and/or suppress."""

    prompt: PromptLike
    promote: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()


@dataclass
class OneShotResult(VectorResult):
    """Fields: ``vector`` [d_model] acting at ``hook`` (``vectors`` is it as ``[1, d_model]``);
    ``losses`` the objective (nats) before each step; ``final_loss`` after the last step;
    ``stopped_early`` True if ``target_loss`` was reached; ``texts`` the formatted prompts.
    ``intervention(0, scale)`` applies the vector on the config's positions."""

    vector: Float[Tensor, " d_model"]
    hook: str
    config: OneShotConfig
    losses: list[float]
    final_loss: float
    stopped_early: bool
    seconds: float
    texts: list[str] = field(default_factory=list)

    @property
    def vectors(self) -> Tensor:  # type: ignore[override]
        return self.vector[None]

    @property
    def steer_positions(self) -> Positions:
        return Positions.parse(self.config.positions)

    def summary(self) -> dict[str, Any]:
        first = self.losses[0] if self.losses else float("nan")
        return {
            "loss (nats)": f"{first:.3f} → {self.final_loss:.3f}" + (" (target reached)" if self.stopped_early else ""),
            "promote": list(self.config.promote),
            "suppress": list(self.config.suppress),
            "steps": len(self.losses),
        }


@dataclass
class TeacherForcing:
    """A padded batch of prompt+completion rows and where each completion token is predicted.

    ``rows``/``cols`` index the logits that predict ``targets``; ``signs`` is +1 for tokens of
    promoted completions and −1 for suppressed ones; ``prompt_lengths`` [rows] counts each row's
    prompt tokens (its completion tokens count as generated, as in steered generation)."""

    batch: TokenBatch
    prompt_lengths: Tensor
    rows: Tensor
    cols: Tensor
    targets: Tensor
    signs: Tensor


def _examples(
    prompts: PromptLike | Sequence[PromptLike] | Sequence[Example], promote: Sequence[str], suppress: Sequence[str]
) -> list[Example]:
    if isinstance(prompts, Example):
        return [prompts]
    if isinstance(prompts, str) or (isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], dict)):
        prompts = [prompts]  # one prompt (text or message list)
    out = []
    for p in prompts:
        out.append(p if isinstance(p, Example) else Example(p, tuple(promote), tuple(suppress)))
    if not out:
        raise ValueError("No examples given.")
    for ex in out:
        if not ex.promote and not ex.suppress:
            raise ValueError("Each example needs at least one completion to promote or suppress.")
        if any(not c for c in (*ex.promote, *ex.suppress)):
            raise ValueError("A completion to promote or suppress is empty; give its text.")
    return out


def teacher_forcing(model: Any, examples: Sequence[Example], *, chat: bool = True) -> tuple[TeacherForcing, list[str]]:
    """Tokenize every (prompt, completion) pair into one left-padded batch."""
    tok = chat_tokenizer(model)
    texts = prepare_prompts(model, [ex.prompt for ex in examples], chat=chat)
    seqs, prompt_lens, spans = [], [], []
    for ex, text in zip(examples, texts):
        prompt_ids = tok(text, add_special_tokens=False)["input_ids"]
        for sign, completions in ((1, ex.promote), (-1, ex.suppress)):
            for completion in completions:
                completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
                seqs.append(list(prompt_ids) + list(completion_ids))
                prompt_lens.append(len(prompt_ids))
                spans.append((sign, len(prompt_ids), len(completion_ids)))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    batch = left_pad(seqs, int(pad))
    width = batch.input_ids.shape[1]
    rows, cols, targets, signs = [], [], [], []
    for r, (sign, m, k) in enumerate(spans):
        offset = width - (m + k)
        for j in range(k):
            rows.append(r)
            cols.append(offset + m + j - 1)
            targets.append(int(batch.input_ids[r, offset + m + j]))
            signs.append(sign)
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long, device="cpu")  # noqa: E731
    return TeacherForcing(
        batch,
        as_long(prompt_lens),
        as_long(rows),
        as_long(cols),
        as_long(targets),
        torch.tensor(signs, dtype=torch.float32, device="cpu"),
    ), texts


def completion_loss_terms(logits: Tensor, tf: TeacherForcing, coldness: float) -> Tensor:
    """Per-token loss: −log p for promoted tokens, −log(1 − p) for suppressed ones (nats)."""
    logprobs = torch.log_softmax(coldness * logits[tf.rows, tf.cols].float(), dim=-1)
    lp = logprobs.gather(-1, tf.targets[:, None].to(logits.device))[:, 0]
    promote = -lp
    suppress = -torch.log1p(-lp.exp().clamp(max=1 - 1e-6))
    return torch.where(tf.signs.to(logits.device) > 0, promote, suppress)


class _Steered:
    """Logits as a function of v, running only blocks ``start``… from the cached residual."""

    def __init__(self, model: Any, tf: TeacherForcing, start: int, positions: Positions) -> None:
        self.model = model
        self.tf = tf
        self.segment = ResidualSegment.capture(
            model, tf.batch, start=start, stop=n_layers(model), prompt_lengths=tf.prompt_lengths
        )
        layout = self.segment.layout
        self.mask = positions.mask(layout.token_index, layout.prompt_length)[..., None].to(self.segment.residual.dtype)

    def loss(self, v: Tensor, coldness: float) -> Tensor:
        """The summed loss (float32) with v (float32, cast to the model's dtype) added."""
        resid = self.segment.residual + like(v, self.segment.residual) * self.mask
        final = self.segment.run(resid)
        logits = self.model.unembed(self.model.ln_final(final))
        return completion_loss_terms(logits, self.tf, coldness).sum()


@torch.no_grad()
def completion_loss(
    model: Any,
    examples: Sequence[Example],
    *,
    interventions: Sequence[Any] = (),
    coldness: float = 0.7,
    chat: bool = True,
) -> float:
    """The one-shot loss (nats) of ``examples`` under full forward passes with ``interventions``:
    e.g. a completion's loss in a reference condition, to use as ``target_loss``."""
    tf, _ = teacher_forcing(model, examples, chat=chat)
    fwd = run_forward(model, tf.batch, interventions, prompt_lengths=tf.prompt_lengths)
    assert fwd.logits is not None
    return float(completion_loss_terms(fwd.logits, tf, coldness).sum())


def optimize_vector(
    model: Any,
    examples: PromptLike | Sequence[PromptLike] | Sequence[Example],
    cfg: OneShotConfig | None = None,
    *,
    progress: bool = True,
    **settings: Any,
) -> OneShotResult:
    """Fit one steering vector at ``cfg.site`` on one or a few examples (see module doc).
    ``settings`` are :class:`OneShotConfig` fields applied on top of ``cfg``
    (``optimize_vector(model, prompt, site=10, promote=["Sure"])``)."""
    cfg = OneShotConfig.build(cfg, **settings)
    cfg.check_model(model)
    seed = cfg.seed
    positions = Positions.parse(cfg.positions)
    exs = _examples(examples, cfg.promote, cfg.suppress)
    tf, texts = teacher_forcing(model, exs, chat=cfg.chat)
    steered = _Steered(model, tf, cfg.start, positions)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    start = torch.randn(d_model(model), generator=gen, device="cpu")
    v = master_copy(cfg.init_norm * start / start.norm(), model).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=cfg.lr)
    losses: list[float] = []
    stopped = False
    started = time.perf_counter()
    bar = tqdm(range(cfg.steps), desc=f"one-shot at {cfg.hook}", disable=not progress)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        loss = steered.loss(v, cfg.coldness)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if cfg.target_loss is not None and not cfg.satisfice and losses[-1] <= cfg.target_loss:
            stopped = True
            break
        objective = (loss - cfg.target_loss) ** 2 if cfg.satisfice else loss
        objective.backward()
        opt.step()
        if cfg.max_norm is not None:
            with torch.no_grad():
                norm = v.norm()
                if norm > cfg.max_norm:
                    v.mul_(cfg.max_norm / norm)
    with torch.no_grad():
        final = float(steered.loss(v, cfg.coldness))
    return OneShotResult(
        vector=to_result(v),
        hook=cfg.hook,
        config=cfg,
        losses=losses,
        final_loss=final,
        stopped_early=stopped,
        seconds=time.perf_counter() - started,
        texts=texts,
    )


# --- the registered method --------------------------------------------------------------------


def _as_run(cfg: OneShotConfig, done: Sequence[tuple[Tensor, dict[str, Any]]], texts: Sequence[str], d: int) -> Run:
    vectors = torch.stack([v for v, _ in done]) if done else torch.zeros(0, d, device="cpu")
    meta = {
        "hooks": [cfg.hook] * len(done),
        "site": cfg.hook,
        "seed": cfg.seed,
        "steer_positions": cfg.positions,
        "texts": list(texts),
        "per_vector": [row for _, row in done],
    }
    return Run({"vectors": vectors}, meta)


def _train(model: Any, prompts: Sequence[PromptLike], cfg: OneShotConfig, ckpt: Checkpoints) -> Run:
    prev = ckpt.previous
    done = [(prev.vectors[i], row) for i, row in enumerate(prev.meta.get("per_vector", []))] if prev else []
    texts: list[str] = list(prev.meta.get("texts", [])) if prev else []
    d = d_model(model)
    for index in range(len(done), cfg.n_vectors):
        result = optimize_vector(model, list(prompts), cfg, seed=cfg.seed + index, progress=ckpt.progress)
        texts = result.texts
        row = {
            "index": index,
            "seed": cfg.seed + index,
            "losses": result.losses,
            "final_loss": result.final_loss,
            "stopped_early": result.stopped_early,
            "seconds": result.seconds,
            "norm": float(result.vector.norm()),
        }
        done.append((result.vector, row))
        ckpt.save(_as_run(cfg, done, texts, d))
    return _as_run(cfg, done, texts, d)


def legacy_config(meta: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the settings under "options", the seed and the vector count beside them."""
    return {**meta.get("options", {}), "seed": int(meta.get("seed", 0)), "n_vectors": int(meta.get("n_vectors", 1))}


METHOD = register_method(
    Method(
        name=NAME,
        config=OneShotConfig,
        train=_train,
        intervention=vector_intervention,
        count=vector_count,
        description="one-shot optimized steering vectors (Dunefsky): promote/suppress completions of one example",
        legacy_config=legacy_config,
    )
)
