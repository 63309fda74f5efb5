"""Devices and dtypes follow the model, everywhere.

Two proofs that run on a CPU:

* **No tensor is created on the wrong device.** After the model is loaded,
  ``torch.set_default_device("meta")`` makes every tensor created without ``device=`` a meta
  tensor, which fails loudly the moment it meets the model's real activations — the same class of
  bug CUDA shows as "Expected all tensors to be on the same device". Every entry point of the
  library runs under it.
* **Half precision works and is honest.** A bfloat16 model runs the same entry points; results
  come back as CPU float32; a bf16 MELBO run's vectors, re-scored on the float32 model, reach an
  objective within a stated tolerance of the float32 run's.
"""

from __future__ import annotations

import math

import pytest
import torch

from melbo_tl.artifacts import load_run
from melbo_tl.directions.method import RefusalDirectionConfig
from melbo_tl.evaluate.embeddings import embed_texts
from melbo_tl.evaluate.fluency import completion_nll
from melbo_tl.evaluate.harness import evaluate_interventions, evaluate_run
from melbo_tl.evaluate.refusal import refusal_log_odds
from melbo_tl.forward import next_token_logprobs, run_forward
from melbo_tl.generate import generate
from melbo_tl.models import load_model
from melbo_tl.optimize.adapters import train_adapters
from melbo_tl.optimize.dct import fit_dct
from melbo_tl.optimize.melbo import MelboConfig, train_vectors
from melbo_tl.optimize.oneshot import Example, completion_loss, optimize_vector
from melbo_tl.optimize.problem import MelboProblem
from melbo_tl.optimize.sweep import sweep_radius
from melbo_tl.placement import master_copy
from melbo_tl.prompts import Positions, prepare_prompts
from melbo_tl.runs import write_generations
from melbo_tl.steering import AblateDirection, AddVector, ClampVector
from melbo_tl.training import train_to_folder
from tests.helpers import HARMFUL, HARMLESS, vector_run

PROMPTS = ["Hi", "Tell me a short story about a cat."]
HOOK = "blocks.1.hook_resid_pre"
SMALL = dict(source_layer=0, target_layer=2, steps=2, radius=2.0)


def cpu_vector(seed: int = 0, scale: float = 4.0) -> torch.Tensor:
    return torch.randn(64, generator=torch.Generator(device="cpu").manual_seed(seed), device="cpu") * scale


def _analysis(model, texts):
    from melbo_tl.analysis import ablation, attribution, lens, similarity, token_views

    v = cpu_vector()
    steer = AddVector(v, HOOK)
    similarity.vector_similarity({"a": (v, HOOK), "b": (cpu_vector(1), HOOK)})
    similarity.delta_similarity(model, texts, {"a": steer}, at="blocks.3.hook_resid_pre", n_random=2, chat=False)
    similarity.subspace_overlap(torch.stack([v, cpu_vector(2)]), cpu_vector(3))
    lens.vector_readout(model, v)
    with torch.device("cpu"):  # TL 4.3's logit_lens makes its target ids with torch.tensor() on the default device
        lens.lens_trajectory(model, texts[0], steer, chat=False)
    attribution.steering_attribution(model, texts, steer, chat=False)
    ablation.mediation(
        model, texts, steer, cpu_vector(4), max_new_tokens=2, sweep_layers=[1, 2], scales=(0.0, 1.0), chat=False
    )
    token_views.delta_token_view(model, PROMPTS[0], steer, at="blocks.2.hook_resid_pre", max_new_tokens=2)
    token_views.attention_view(model, PROMPTS[0], steer, layer=1)


ENTRY_POINTS = {
    "run_forward": lambda m, t, p: run_forward(
        m, t, [AddVector(cpu_vector(), HOOK, Positions.parse("last:2"))], record=["blocks.2.hook_resid_post"]
    ),
    "run_forward stop_at": lambda m, t, p: run_forward(m, t, stop_at=2, keep_block_kwargs=True),
    "next_token_logprobs": lambda m, t, p: next_token_logprobs(m, t, [ClampVector(cpu_vector(), HOOK, 1.0)]),
    "generate per-row": lambda m, t, p: generate(
        m, PROMPTS, [AddVector(torch.stack([cpu_vector(0), cpu_vector(1)]), HOOK)], max_new_tokens=3
    ),
    "generate sampled": lambda m, t, p: generate(m, PROMPTS, max_new_tokens=3, temperature=1.0, top_p=0.9),
    "melbo orthogonal": lambda m, t, p: train_vectors(m, PROMPTS, n_vectors=2, progress=False, **SMALL),
    "melbo batched-orthogonal": lambda m, t, p: train_vectors(
        m, PROMPTS, n_vectors=3, mode="batched-orthogonal", progress=False, **SMALL
    ),
    "melbo independent": lambda m, t, p: train_vectors(
        m, PROMPTS, n_vectors=2, mode="independent", diversity_penalty=1.0, progress=False, **SMALL
    ),
    "adapters": lambda m, t, p: train_adapters(m, PROMPTS, rank=2, n_adapters=2, progress=False, **SMALL),
    "oneshot": lambda m, t, p: optimize_vector(
        m, PROMPTS[0], layer=1, promote=["Sure"], suppress=["No"], steps=2, max_norm=1.0, progress=False
    ),
    "dct": lambda m, t, p: fit_dct(
        m,
        PROMPTS,
        n_factors=2,
        source_layer=0,
        target_layer=2,
        iterations=1,
        radius=4.0,
        rank_by="importance",
        progress=False,
    ),
    "completion_loss": lambda m, t, p: completion_loss(m, [Example(PROMPTS[0], ("Sure",), ("No",))]),
    "refusal direction": lambda m, t, p: train_to_folder(
        m,
        "refusal-direction",
        {
            "harmful_train": HARMFUL[:2],
            "harmless_train": HARMLESS[:2],
            "harmful_val": HARMFUL[2:4],
            "harmless_val": HARMLESS[2:4],
        },
        RefusalDirectionConfig(layers=(1,), positions=(-1,), kl_threshold=math.inf, induce_threshold=-math.inf),
        p / "refusal",
        progress=False,
    ),
    "evaluate_run": lambda m, t, p: evaluate_run(m, vector_run(m, n=2), PROMPTS, max_new_tokens=2),
    "evaluate_interventions": lambda m, t, p: evaluate_interventions(
        m, {"ablate": [AblateDirection(cpu_vector())]}, PROMPTS, max_new_tokens=2
    ),
    "write_generations": lambda m, t, p: write_generations(m, vector_run(m, n=2), p, PROMPTS, max_new_tokens=2),
    "scorers": lambda m, t, p: (
        refusal_log_odds(m, t, [AddVector(cpu_vector(), HOOK)], chat=False),
        completion_nll(m, t, [[5, 6], []]),
        embed_texts(["a", "b"], model=m, embedder="model"),
    ),
    "sweep": lambda m, t, p: sweep_radius(
        m,
        PROMPTS[0],
        [1.0, 2.0],
        MelboConfig(n_vectors=2, **{**SMALL, "steps": 1}),
        max_new_tokens=2,
        embedder="model",
        progress=False,
    ),
    "analysis": lambda m, t, p: _analysis(m, t),
}


@pytest.fixture
def meta_default(tiny_model):
    torch.set_default_device("meta")
    try:
        yield tiny_model
    finally:
        torch.set_default_device("cpu")


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_no_entry_point_creates_a_tensor_without_a_device(meta_default, tmp_path, name):
    texts = prepare_prompts(meta_default, PROMPTS)
    ENTRY_POINTS[name](meta_default, texts, tmp_path)


def test_the_meta_trick_catches_a_tensor_made_without_a_device(meta_default):
    """The check above could fail: a vector made without device= is meta and breaks the forward."""
    texts = prepare_prompts(meta_default, PROMPTS)
    with pytest.raises((NotImplementedError, RuntimeError)):
        run_forward(meta_default, texts, [AddVector(torch.randn(64), HOOK)])


@pytest.fixture(scope="module")
def tiny_bf16(tiny_model_dir):
    from tests.conftest import DEVICE

    return load_model(str(tiny_model_dir), device=DEVICE, dtype=torch.bfloat16)


@pytest.mark.parametrize("name", list(ENTRY_POINTS))
def test_every_entry_point_runs_in_bfloat16(tiny_bf16, tmp_path, name):
    texts = prepare_prompts(tiny_bf16, PROMPTS)
    ENTRY_POINTS[name](tiny_bf16, texts, tmp_path)


def test_bf16_results_and_artifacts_are_cpu_float32(tiny_bf16, tmp_path):
    result = train_vectors(tiny_bf16, PROMPTS, n_vectors=2, progress=False, **SMALL)
    assert result.vectors.dtype == torch.float32 and result.vectors.device.type == "cpu"
    norms = result.vectors.norm(dim=-1)
    torch.testing.assert_close(norms, torch.full_like(norms, 2.0), atol=1e-5, rtol=0)  # norms kept in fp32
    assert next_token_logprobs(tiny_bf16, prepare_prompts(tiny_bf16, PROMPTS)).dtype == torch.float32
    cfg = MelboConfig(n_vectors=1, **SMALL)
    run = load_run(train_to_folder(tiny_bf16, "melbo", PROMPTS, cfg, tmp_path / "r", progress=False))
    assert run.vectors.dtype == torch.float32 and run.meta["model"]["dtype"] == "bfloat16"


BF16_TOLERANCE = 0.01  # relative; measured 0.0004 on the tiny model (printed by the test)


def test_bf16_vectors_rescored_in_fp32_reach_the_fp32_objective(tiny_model, tiny_bf16):
    """Same seeds, same settings: train in fp32 and in bf16, score both sets on the fp32 model."""
    cfg = MelboConfig(radius=8.0, source_layer=0, target_layer=3, steps=60, lr=0.2, n_vectors=2, positions="last:3")
    fp32 = train_vectors(tiny_model, PROMPTS, cfg, progress=False)
    bf16 = train_vectors(tiny_bf16, PROMPTS, cfg, progress=False)
    start = train_vectors(tiny_model, PROMPTS, cfg.replace(steps=0), progress=False)  # the random starts
    problem = MelboProblem.build(tiny_model, PROMPTS, source="resid_post.0", target=3, p=2, q=1, positions="last:3")

    def score(vectors: torch.Tensor) -> float:
        with torch.no_grad():
            return float(problem.objective(problem.add_vectors(master_copy(vectors, tiny_model)))[0].mean())

    a, b, r = score(fp32.vectors), score(bf16.vectors), score(start.vectors)
    relative = abs(b - a) / a
    print(
        f"objective: random starts {r:.2f}, fp32 {a:.2f}, bf16 re-scored in fp32 {b:.2f}; relative gap {relative:.4f}"
    )
    assert a > r  # training did something …
    assert abs(b - a) < 0.1 * (a - r)  # … and bf16 got (nearly) all of it
    assert relative < BF16_TOLERANCE
