"""How alike are steering vectors, and the changes they cause downstream?

Two comparisons, because they answer different questions. Vectors are compared directly only
when they act at the same residual site (a direction at layer 8 and one at layer 14 live in
different bases); the user may map sites explicitly to compare anyway. The activation changes
Δ they cause are compared at one later hook, where every vector's effect can be seen side by
side, including against the refusal direction read at that hook.

Each cosine comes with what chance looks like: two random directions in d_model dimensions
have cosine ≈ N(0, 1/d_model), and the Δ's of random vectors of matched norm (run through the
same model) give the empirical baseline for Δ cosines, which is not isotropic.

>>> sim = vector_similarity({"melbo 0": (v0, Site(7, "resid_post")), "r̂": (r, Site(8))})
>>> sim.cosine[0][1], sim.random_q95
>>> sim.figure()  # the heatmap
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import plotly.graph_objects as go
import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.placement import to_result
from melbo_tl.prompts import PromptLike, prepare_prompts
from melbo_tl.steering.interventions import AddVector, Intervention
from melbo_tl.steering.sites import Site, SiteLike, check_hook, hook_of


def canonical_site(site: SiteLike) -> Site:
    """The site in its canonical spelling: the output of block L is the input of block L + 1."""
    return Site.parse(site).canonical()


def _cosine_matrix(rows: Float[Tensor, "n d"], cols: Float[Tensor, "m d"]) -> Float[Tensor, "n m"]:
    a = rows.float() / rows.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    b = cols.float() / cols.float().norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return a @ b.T


@dataclass
class VectorSimilarity:
    """Cosines between vectors acting at one residual site.

    Fields:
        names: a label per vector.
        sites: the site each vector was given at (before mapping).
        site: the common (canonical) site they were compared at.
        cosine: ``[n, n]`` cosine similarities.
        norms: the vectors' L2 norms.
        d_model: the width, which sets the random baseline.
        random_std: std of the cosine of two random directions, 1/√d_model.
        random_q95: |cos| that two random directions exceed 5% of the time (1.96/√d_model).
    """

    names: list[str]
    sites: list[Site]
    site: Site
    cosine: list[list[float]]
    norms: list[float]
    d_model: int
    random_std: float
    random_q95: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sites": [s.hook for s in self.sites], "site": self.site.hook}

    def figure(self, *, title: str | None = None) -> go.Figure:
        """The cosine heatmap, with the random baseline in its title."""
        return cosine_heatmap(
            self.names, self.cosine, title=title or f"Vector cosines at {self.site}", baseline=self.random_q95
        )


def vector_similarity(
    vectors: Mapping[str, tuple[Float[Tensor, " d_model"], SiteLike] | Float[Tensor, " d_model"]],
    *,
    site: SiteLike | None = None,
    site_map: Mapping[SiteLike, SiteLike] | None = None,
) -> VectorSimilarity:
    """Cosine matrix of ``{name: (vector, site)}`` (or ``{name: vector}`` all at ``site``), all at
    one site (canonically equal sites count as one: the output of block 7 is the input of block 8).

    ``site_map`` maps a site to the site it should be read as (e.g. ``{Site(14): Site(8)}`` to
    compare a layer-14 refusal direction with layer-8 vectors); without it, vectors at different
    sites raise an error naming them.
    """
    if len(vectors) < 1:
        raise ValueError("vector_similarity needs at least one vector.")
    mapping = {Site.parse(k).canonical(): Site.parse(v) for k, v in (site_map or {}).items()}
    names, given, rows = [], [], []
    for name, entry in vectors.items():
        vector, where = entry if isinstance(entry, tuple) else (entry, site)
        if where is None:
            raise ValueError(f"Vector {name!r} has no site: give (vector, site) pairs or site=… for all of them.")
        if vector.ndim != 1:
            raise ValueError(f"Vector {name!r} has shape {tuple(vector.shape)}; expected [d_model].")
        names.append(name)
        given.append(Site.parse(where))
        rows.append(vector.detach().float().cpu())
    widths = {r.shape[0] for r in rows}
    if len(widths) != 1:
        raise ValueError(f"Vectors have different widths {sorted(widths)}; they come from different models.")
    sites = [mapping.get(g.canonical(), g).canonical() for g in given]
    if len(set(sites)) != 1:
        found = sorted({(n, s.hook) for n, s in zip(names, sites)}, key=lambda x: x[1])
        raise ValueError(
            f"Vectors act at different sites {found}; vectors at different layers live in different bases. "
            f"Compare them at one site, or pass site_map={{site: site}} to read one site as another."
        )
    d = rows[0].shape[0]
    stacked = torch.stack(rows)
    return VectorSimilarity(
        names=names,
        sites=given,
        site=sites[0],
        cosine=_cosine_matrix(stacked, stacked).tolist(),
        norms=stacked.norm(dim=-1).tolist(),
        d_model=d,
        random_std=1 / math.sqrt(d),
        random_q95=1.96 / math.sqrt(d),
    )


@dataclass
class DeltaSimilarity:
    """Cosines between the mean activation changes Δ that interventions cause at hook ``at``.

    Fields:
        names: a label per intervention.
        at: the hook where Δ = steered − unsteered activation is read.
        token_sets: the token sets Δ was averaged over ("all" prompt tokens, and "last:k").
        cosine: ``{token_set: [n, n]}`` cosines between the interventions' mean Δ's.
        against: labels of the reference directions (e.g. the refusal direction at ``at``).
        cosine_against: ``{token_set: [n, len(against)]}`` cosines of mean Δ with each reference.
        delta_norm: ``{token_set: [n]}`` the norm of each mean Δ.
        random_abs_cos: ``{token_set: mean |cos|}`` between the Δ's of ``n_random`` random vectors
            of matched norm (same hook and positions as the first vector) and every other Δ and
            reference: what an unrelated perturbation scores here.
        random_abs_cos_q95: ``{token_set: 95th percentile}`` of the same.
        n_prompts: how many prompts Δ was averaged over.
    """

    names: list[str]
    at: str
    token_sets: list[str]
    cosine: dict[str, list[list[float]]]
    against: list[str]
    cosine_against: dict[str, list[list[float]]]
    delta_norm: dict[str, list[float]]
    random_abs_cos: dict[str, float]
    random_abs_cos_q95: dict[str, float]
    n_prompts: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@torch.no_grad()
def _activations(
    model: Any, texts: Sequence[str], at: str, interventions: Sequence[Intervention]
) -> tuple[Tensor, Tensor]:
    """Activations at ``at`` [batch, pos, d] and the token mask [batch, pos] of real tokens."""
    fwd = run_forward(model, list(texts), interventions, record=[at], logits="none")
    return to_result(fwd.activations[at]), to_result(fwd.batch.token_index >= 0)


def _mean_deltas(
    model: Any,
    texts: Sequence[str],
    at: str,
    steers: Sequence[Intervention],
    last: int,
    unsteered: tuple[Tensor, Tensor],
) -> dict[str, Tensor]:
    base, mask = unsteered
    out: dict[str, list[Tensor]] = {"all": [], f"last:{last}": []}
    last_mask = torch.zeros_like(mask)
    last_mask[:, -last:] = True
    last_mask &= mask
    for steer in steers:
        delta = _activations(model, texts, at, [steer])[0] - base
        for key, m in (("all", mask), (f"last:{last}", last_mask)):
            out[key].append((delta * m[..., None]).sum((0, 1)) / m.sum())
    return {k: torch.stack(v) for k, v in out.items()}


def delta_similarity(
    model: Any,
    prompts: Sequence[PromptLike],
    steers: Mapping[str, Intervention],
    *,
    at: SiteLike,
    chat: bool = True,
    against: Mapping[str, Float[Tensor, " d_model"]] | None = None,
    last: int = 4,
    n_random: int = 8,
    seed: int = 0,
) -> DeltaSimilarity:
    """Cosines of the mean Δ each steer causes at site ``at`` over ``prompts`` (user messages;
    ``chat=False``: texts used as they are).

    Δ is averaged over all real tokens and over the last ``last`` tokens (the assistant-turn
    template, where refusal is decided). ``against`` adds reference directions (e.g. the refusal
    direction computed at ``at``). The random baseline runs ``n_random`` random vectors with the
    mean norm of the AddVector steers, at the first AddVector's hook and positions.
    """
    at = check_hook(model, hook_of(at))
    texts = prepare_prompts(model, prompts, chat=chat)
    if not steers:
        raise ValueError("delta_similarity needs at least one intervention.")
    if last < 1:
        raise ValueError(f"last must be ≥ 1, got {last}.")
    names = list(steers)
    refs = {k: v.detach().float().cpu() for k, v in (against or {}).items()}
    unsteered = _activations(model, texts, at, [])
    deltas = _mean_deltas(model, texts, at, list(steers.values()), last, unsteered)
    adds = [s for s in steers.values() if isinstance(s, AddVector) and s.vector.ndim == 1]
    randoms: dict[str, Tensor] = {}
    if adds and n_random > 0:
        gen = torch.Generator(device="cpu").manual_seed(seed)
        norm = float(torch.stack([a.vector.float().norm() * abs(a.scale) for a in adds]).mean())
        d = adds[0].vector.shape[-1]
        rand = torch.randn(n_random, d, generator=gen, device="cpu")
        rand = rand / rand.norm(dim=-1, keepdim=True) * norm
        rand_steers = [AddVector(r.to(adds[0].vector.dtype), adds[0].hook, adds[0].positions) for r in rand]
        randoms = _mean_deltas(model, texts, at, rand_steers, last, unsteered)
    ref_matrix = torch.stack(list(refs.values())) if refs else torch.zeros(0, deltas["all"].shape[-1], device="cpu")
    cosine, cos_against, norms, rand_mean, rand_q95 = {}, {}, {}, {}, {}
    for key, d_mat in deltas.items():
        cosine[key] = _cosine_matrix(d_mat, d_mat).tolist()
        cos_against[key] = _cosine_matrix(d_mat, ref_matrix).tolist() if refs else [[] for _ in names]
        norms[key] = d_mat.norm(dim=-1).tolist()
        if key in randoms:
            others = torch.cat([d_mat, ref_matrix])
            vals = _cosine_matrix(randoms[key], others).abs().flatten()
            rand_mean[key] = float(vals.mean())
            rand_q95[key] = float(vals.quantile(0.95))
    return DeltaSimilarity(
        names=names,
        at=at,
        token_sets=list(deltas),
        cosine=cosine,
        against=list(refs),
        cosine_against=cos_against,
        delta_norm=norms,
        random_abs_cos=rand_mean,
        random_abs_cos_q95=rand_q95,
        n_prompts=len(texts),
    )


def subspace_overlap(basis: Float[Tensor, "k d_model"], direction: Float[Tensor, " d_model"]) -> dict[str, float]:
    """The fraction of ``direction``'s squared norm inside the span of ``basis`` rows.

    Computed as TransformerLens' projection kernel between the k-plane and the line. Its random
    reference is exact for a random line against a fixed k-plane: Beta(k/2, (d−k)/2), mean k/d
    (TransformerLens' own moments are for two planes of equal rank, which this is not).
    """
    from transformer_lens.tools.analysis import projection_kernel
    from transformer_lens.tools.analysis.projection_kernel import orthonormal_subspace

    if basis.ndim != 2 or basis.shape[-1] != direction.shape[-1]:
        raise ValueError(
            f"basis {tuple(basis.shape)} and direction {tuple(direction.shape)} do not match: expected [k, d] and [d]."
        )
    span = orthonormal_subspace(basis.detach().float().T.cpu())
    line = orthonormal_subspace(direction.detach().float().cpu()[:, None])
    result = projection_kernel(span, line)
    k, d = int(result.rank_a), int(result.ambient_dim)
    return {
        "rank": k,
        "overlap": float(result.score),
        "random_mean": k / d,
        "random_std": math.sqrt(2 * k * (d - k) / (d * d * (d + 2))),
    }


def cosine_heatmap(
    names: Sequence[str],
    cosine: Sequence[Sequence[float]],
    *,
    title: str,
    cols: Sequence[str] | None = None,
    baseline: float | None = None,
) -> go.Figure:
    """A labelled cosine heatmap on a fixed [-1, 1] scale; ``baseline`` goes into the title."""
    note = f" (random: |cos| < {baseline:.3f} in 95% of draws)" if baseline is not None else ""
    fig = go.Figure(
        go.Heatmap(
            z=[list(r) for r in cosine],
            x=list(cols if cols is not None else names),
            y=list(names),
            zmin=-1,
            zmax=1,
            colorscale="RdBu",
            reversescale=True,
            text=[[f"{v:.2f}" for v in r] for r in cosine],
            texttemplate="%{text}",
        )
    )
    fig.update_layout(title=title + note, template="plotly_white", yaxis_autorange="reversed")
    return fig
