"""One resume path for every method: checkpoints, refusals to overwrite, settings checks, and an
interrupted run that resumes to exactly what an uninterrupted one gives."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from melbo_tl.artifacts import load_run
from melbo_tl.directions.method import RefusalDirectionConfig
from melbo_tl.optimize.adapters import AdapterConfig
from melbo_tl.optimize.dct import DCTConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.optimize.oneshot import OneShotConfig
from melbo_tl.registry import Checkpoints, get_method
from melbo_tl.training import config_of, is_complete, train, train_to_folder
from tests.helpers import HARMFUL, HARMLESS

PROMPTS = ["Hello there, how are you?"]
REFUSAL_PROMPTS = {
    "harmful_train": HARMFUL[:3],
    "harmless_train": HARMLESS[:3],
    "harmful_val": HARMFUL[3:5],
    "harmless_val": HARMLESS[3:5],
}

CASES = {
    "melbo": (MelboConfig(radius=2.0, source_layer=0, target_layer=2, steps=3, n_vectors=3), PROMPTS),
    "melbo batched-orthogonal": (
        MelboConfig(
            radius=2.0, source_layer=0, target_layer=2, steps=3, n_vectors=4, batch_size=2, mode="batched-orthogonal"
        ),
        PROMPTS,
    ),
    "melbo-adapter": (
        AdapterConfig(radius=0.5, rank=2, source_layer=0, target_layer=2, steps=3, n_adapters=3, batch_size=1),
        PROMPTS,
    ),
    "oneshot": (OneShotConfig(layer=1, promote=("Sure",), steps=3, n_vectors=3), PROMPTS),
    "dct": (
        DCTConfig(
            source_layer=0,
            target_layer=3,
            n_factors=6,
            iterations=3,
            calibration_target=0.02,
            calibration_directions=4,
            tolerance=0.0,
        ),
        PROMPTS,
    ),
    "refusal-direction": (
        RefusalDirectionConfig(
            layers=(1, 2), positions=(-2, -1), kl_threshold=float("inf"), induce_threshold=-float("inf"), batch_size=2
        ),
        REFUSAL_PROMPTS,
    ),
}


class Interrupt(Exception):
    pass


def interrupted_after(n_saves: int):
    """Patch a method's train so that its ``n_saves``-th checkpoint is followed by a crash."""
    saves = {"n": 0}

    def wrap(train_fn):
        def run(model, prompts, cfg, ckpt):
            def save(r):
                ckpt.save(r)
                saves["n"] += 1
                if saves["n"] == n_saves:
                    raise Interrupt

            return train_fn(model, prompts, cfg, Checkpoints(ckpt.previous, save, ckpt.folder, False))

        return run

    return wrap


@pytest.mark.parametrize("name", list(CASES))
def test_interrupted_run_resumes_to_the_uninterrupted_result(tiny_model, tmp_path, name):
    cfg, prompts = CASES[name]
    name = name.split()[0]
    whole = train_to_folder(tiny_model, name, prompts, cfg, tmp_path / "whole", progress=False)
    method = get_method(name)
    crashing = dataclasses.replace(method, train=interrupted_after(2)(method.train))
    with pytest.raises(Interrupt):
        train_to_folder(tiny_model, crashing, prompts, cfg, tmp_path / "cut", progress=False)
    assert not is_complete(tmp_path / "cut")
    resumed = train_to_folder(tiny_model, name, prompts, cfg, tmp_path / "cut", resume=True, progress=False)
    a, b = load_run(whole), load_run(resumed)
    assert set(a.tensors) == set(b.tensors)
    for key in a.tensors:
        torch.testing.assert_close(a.tensors[key], b.tensors[key], atol=1e-5, rtol=1e-5)
    assert b.meta["status"] == "complete" and b.meta["method"] == name
    assert config_of(b) == cfg.for_model(tiny_model)


def test_existing_run_is_never_overwritten_and_other_settings_are_refused(tiny_model, tmp_path):
    cfg, prompts = CASES["melbo"]
    out = train_to_folder(tiny_model, "melbo", prompts, cfg, tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="already holds a run"):
        train_to_folder(tiny_model, "melbo", prompts, cfg, out, progress=False)
    with pytest.raises(ValueError, match=r"radius: saved 2.0 vs now 3.0"):
        train_to_folder(tiny_model, "melbo", prompts, cfg.replace(radius=3.0), out, resume=True, progress=False)
    with pytest.raises(ValueError, match="other prompts"):
        train_to_folder(tiny_model, "melbo", ["Something else"], cfg, out, resume=True, progress=False)
    with pytest.raises(ValueError, match="holds a 'melbo' run, not 'oneshot'"):
        train_to_folder(tiny_model, "oneshot", prompts, CASES["oneshot"][0], out, resume=True, progress=False)
    with pytest.raises(ValueError, match="takes a MelboConfig"):
        train_to_folder(tiny_model, "melbo", prompts, CASES["oneshot"][0], tmp_path / "x", progress=False)


def test_resumable_settings_may_change_and_continue_the_run(tiny_model, tmp_path):
    cfg, prompts = CASES["melbo"]
    out = train_to_folder(tiny_model, "melbo", prompts, cfg.replace(n_vectors=1), tmp_path / "r", progress=False)
    first = load_run(out).vectors.clone()
    more = train_to_folder(tiny_model, "melbo", prompts, cfg, out, resume=True, progress=False)
    run = load_run(more)
    assert run.vectors.shape[0] == 3
    torch.testing.assert_close(run.vectors[:1], first)
    whole = train(tiny_model, "melbo", prompts, cfg, progress=False)
    torch.testing.assert_close(run.vectors, whole.vectors, atol=1e-5, rtol=1e-5)


def test_in_memory_training_stamps_the_same_head(tiny_model):
    cfg, prompts = CASES["oneshot"]
    run = train(tiny_model, "oneshot", prompts, cfg.replace(n_vectors=1), progress=False)
    assert run.meta["method"] == "oneshot" and run.meta["config"]["site"] == "blocks.1.hook_resid_pre"
    assert run.meta["prompts"] == prompts and run.meta["status"] == "complete"
    assert run.hooks == ["blocks.1.hook_resid_pre"]


def test_model_dependent_defaults_are_filled_in_before_saving(tiny_model, tmp_path):
    cfg = MelboConfig(radius=1.0, steps=1, n_vectors=1)  # layers left to the model
    with pytest.raises(ValueError, match="reference default sites"):  # the default, on a 4-layer model
        train_to_folder(tiny_model, "melbo", PROMPTS, cfg, tmp_path / "r", progress=False)
    out = train_to_folder(tiny_model, "melbo", PROMPTS, cfg.replace(source_layer=0, target_layer=2), tmp_path / "ok")
    assert load_run(out).meta["config"]["target"] == "blocks.2.hook_resid_pre"
