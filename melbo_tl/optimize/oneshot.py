"""One-shot optimized steering vectors (Dunefsky): fit v on a single example by gradient descent.

v acts at ``blocks.layer.hook_resid_pre`` (all positions by default) while the model reads a
prompt followed, teacher-forced, by a target completion. With p = softmax(coldness · logits):

- promotion  L⁺ = −Σ_k log p(y_k | x, y_<k; v)        (make the completion likely)
- suppression L⁻ = −Σ_k log(1 − p(y_k | x, y_<k; v))  (make it unlikely)

summed over every (prompt, completion) pair; losses are in nats, summed over completion tokens.
Probability targeting: stop once the loss reaches ``target_loss`` instead of pushing to
certainty, or with ``satisfice=True`` minimize (L − target_loss)². Adam from a random start of
norm ``init_norm``; an optional max-norm ball. Every completion of a step is in one padded
batch, and the residual entering ``layer`` (which does not depend on v) is computed once.

Example::

    result = optimize_vector(model, "How can I make a bomb?", layer=10,
                             promote=["Sure, here is how"], steps=40, lr=0.1)
    steer = AddVector(result.vector, result.hook)
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor
from tqdm.auto import tqdm

from melbo_tl.generate import prepare_prompts
from melbo_tl.models.loading import chat_tokenizer
from melbo_tl.prompts import Positions, PromptLike, TokenBatch, left_pad
from melbo_tl.segment import ResidualSegment
from melbo_tl.steering.layout import TokenLayout, token_layout
from melbo_tl.steering.sites import check_layer, d_model, n_layers, resid_hook


@dataclass(frozen=True)
class Example:
    """A prompt with completions to promote and/or suppress."""

    prompt: PromptLike
    promote: tuple[str, ...] = ()
    suppress: tuple[str, ...] = ()


@dataclass
class OneShotConfig:
    layer: int
    coldness: float = 0.7
    lr: float = 0.1
    steps: int = 50
    max_norm: float | None = None
    target_loss: float | None = None
    satisfice: bool = False
    positions: str = "all"
    seed: int = 0
    init_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class OneShotResult:
    """Fields: ``vector`` [d_model] acting at ``hook``; ``losses`` the objective (nats) before each
    step; ``final_loss`` after the last step; ``stopped_early`` True if ``target_loss`` was reached;
    ``texts`` the formatted prompts."""

    vector: Float[Tensor, " d_model"]
    hook: str
    config: OneShotConfig
    losses: list[float]
    final_loss: float
    stopped_early: bool
    seconds: float
    texts: list[str] = field(default_factory=list)


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
    as_long = lambda xs: torch.tensor(xs, dtype=torch.long)  # noqa: E731
    return TeacherForcing(
        batch,
        as_long(prompt_lens),
        as_long(rows),
        as_long(cols),
        as_long(targets),
        torch.tensor(signs, dtype=torch.float32),
    ), texts


def completion_loss_terms(logits: Tensor, tf: TeacherForcing, coldness: float) -> Tensor:
    """Per-token loss: −log p for promoted tokens, −log(1 − p) for suppressed ones (nats)."""
    logprobs = torch.log_softmax(coldness * logits[tf.rows, tf.cols].float(), dim=-1)
    lp = logprobs.gather(-1, tf.targets[:, None].to(logits.device))[:, 0]
    promote = -lp
    suppress = -torch.log1p(-lp.exp().clamp(max=1 - 1e-6))
    return torch.where(tf.signs.to(logits.device) > 0, promote, suppress)


class _Steered:
    """Logits as a function of v, running only blocks ``layer``… from the cached residual."""

    def __init__(self, model: Any, tf: TeacherForcing, layer: int, positions: Positions) -> None:
        self.model = model
        device = next(model.parameters()).device
        self.tf = tf
        self.batch = tf.batch.to(device)
        self.segment = ResidualSegment.capture(model, self.batch, start=layer, stop=n_layers(model))
        self.layout = TokenLayout(self.batch.token_index, tf.prompt_lengths.to(device))
        self.mask = positions.mask(self.layout.token_index, self.layout.prompt_length)[..., None].to(
            self.segment.residual.dtype
        )

    def loss(self, v: Tensor, coldness: float) -> Tensor:
        resid = self.segment.residual + v * self.mask
        with token_layout(self.layout):
            final = self.segment.run(resid)
        logits = self.model.unembed(self.model.ln_final(final))
        return completion_loss_terms(logits, self.tf, coldness).sum()


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
    from melbo_tl.steering.interventions import apply

    tf, _ = teacher_forcing(model, examples, chat=chat)
    device = next(model.parameters()).device
    b = tf.batch.to(device)
    with (
        torch.no_grad(),
        apply(model, *interventions),
        token_layout(TokenLayout(b.token_index, tf.prompt_lengths.to(device))),
    ):
        logits = model(b.input_ids, attention_mask=b.attention_mask)
    return float(completion_loss_terms(logits, tf, coldness).sum())


def optimize_vector(
    model: Any,
    examples: PromptLike | Sequence[PromptLike] | Sequence[Example],
    *,
    layer: int,
    promote: Sequence[str] = (),
    suppress: Sequence[str] = (),
    coldness: float = 0.7,
    lr: float = 0.1,
    steps: int = 50,
    max_norm: float | None = None,
    target_loss: float | None = None,
    satisfice: bool = False,
    positions: Positions | str = "all",
    seed: int = 0,
    init_norm: float = 1.0,
    chat: bool = True,
    progress: bool = True,
) -> OneShotResult:
    """Fit a steering vector at ``blocks.layer.hook_resid_pre`` on one or a few examples (see module doc)."""
    check_layer(model, layer)
    if steps < 0 or lr <= 0 or coldness <= 0:
        raise ValueError(f"Need steps ≥ 0, lr > 0 and coldness > 0 (got steps={steps}, lr={lr}, coldness={coldness}).")
    if max_norm is not None and max_norm <= 0:
        raise ValueError(f"max_norm must be > 0, got {max_norm}.")
    if satisfice and target_loss is None:
        raise ValueError("satisfice=True minimizes (L − target_loss)²: give target_loss.")
    positions = Positions.parse(positions)
    config = OneShotConfig(
        layer, coldness, lr, steps, max_norm, target_loss, satisfice, str(positions), seed, init_norm
    )
    exs = _examples(examples, promote, suppress)
    tf, texts = teacher_forcing(model, exs, chat=chat)
    steered = _Steered(model, tf, layer, positions)
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(d_model(model), generator=gen)
    v = (init_norm * start / start.norm()).to(steered.segment.residual.device).requires_grad_(True)
    opt = torch.optim.Adam([v], lr=lr)
    losses: list[float] = []
    stopped = False
    started = time.perf_counter()
    bar = tqdm(range(steps), desc=f"one-shot layer {layer}", disable=not progress)
    for _ in bar:
        opt.zero_grad(set_to_none=True)
        loss = steered.loss(v, coldness)
        losses.append(loss.item())
        bar.set_postfix(loss=f"{losses[-1]:.4g}")
        if target_loss is not None and not satisfice and losses[-1] <= target_loss:
            stopped = True
            break
        objective = (loss - target_loss) ** 2 if satisfice else loss
        objective.backward()
        opt.step()
        if max_norm is not None:
            with torch.no_grad():
                norm = v.norm()
                if norm > max_norm:
                    v.mul_(max_norm / norm)
    with torch.no_grad():
        final = float(steered.loss(v, coldness))
    return OneShotResult(
        vector=v.detach().cpu(),
        hook=resid_hook(layer, "pre"),
        config=config,
        losses=losses,
        final_loss=final,
        stopped_early=stopped,
        seconds=time.perf_counter() - started,
        texts=texts,
    )
