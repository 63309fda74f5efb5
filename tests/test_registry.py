"""The methods registry: built-ins found by name, unknown names named, and a new method that
works everywhere (training, resume, generation, evaluation) without editing anything else."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from melbo_tl.artifacts import Run, load_run
from melbo_tl.config import Config, require
from melbo_tl.evaluate.harness import evaluate_run
from melbo_tl.registry import BUILTIN, Method, get_method, method_names, register_method
from melbo_tl.runs import intervention_from_run, n_interventions, vector_count, vector_intervention, write_generations
from melbo_tl.steering import AddVector
from melbo_tl.training import train_to_folder


def test_every_builtin_name_resolves_to_a_method_with_its_config():
    for name in BUILTIN:
        method = get_method(name)
        assert isinstance(method, Method)
        assert issubclass(method.config, Config)
        assert name in method_names()


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(ValueError, match=r"Unknown method 'nope'; known methods: .*melbo.*oneshot"):
        get_method("nope")


def test_old_random_baseline_name_reads_as_melbo():
    assert get_method("melbo-random") is get_method("melbo")


@dataclass
class ScaledMeanConfig(Config):
    """A toy method: the mean residual at a layer, times ``factor``."""

    layer: int
    factor: float = 1.0

    def validate(self) -> None:
        require(self.factor != 0, f"factor must be non-zero, got {self.factor}.")


def _train(model, prompts, cfg, ckpt) -> Run:
    from melbo_tl.forward import run_forward
    from melbo_tl.prompts import prepare_prompts
    from melbo_tl.steering.sites import resid_hook

    hook = resid_hook(cfg.layer)
    with torch.no_grad():
        fwd = run_forward(model, prepare_prompts(model, prompts), record=[hook], logits="none")
    mean = fwd.activations[hook].float().mean((0, 1)).cpu() * cfg.factor
    return Run({"vectors": mean[None]}, {"hooks": [hook], "steer_positions": "all"})


def test_a_new_method_needs_no_edits_elsewhere(tiny_model, tmp_path):
    register_method(Method("scaled-mean", ScaledMeanConfig, _train, vector_intervention, vector_count, "test method"))
    cfg = ScaledMeanConfig(layer=1, factor=0.5)
    out = train_to_folder(tiny_model, "scaled-mean", ["Hi there"], cfg, tmp_path / "m", progress=False)
    run = load_run(out, tiny_model)
    assert run.meta["method"] == "scaled-mean" and run.meta["config"] == {"layer": 1, "factor": 0.5}
    steer = intervention_from_run(run, 0, scale=2.0)
    assert isinstance(steer, AddVector) and steer.hook == "blocks.1.hook_resid_pre" and steer.scale == 2.0
    assert n_interventions(run) == 1
    rows = write_generations(tiny_model, run, out, ["Hi there"], max_new_tokens=3)
    assert [r["vector"] for r in rows] == [None, 0]
    result = evaluate_run(tiny_model, run, ["Hi there"], max_new_tokens=3)
    assert [r.label for r in result.rows] == ["unsteered", "vector 0"]
    with pytest.raises(ValueError, match="factor must be non-zero, got 0"):
        ScaledMeanConfig(layer=1, factor=0)


def test_a_second_method_under_a_taken_name_is_refused():
    first = get_method("oneshot")
    with pytest.raises(ValueError, match="already registered"):
        register_method(Method("x", first.config, first.train, first.intervention, first.count), aliases=("oneshot",))
