"""Run entries → control vectors → run folders: what is exported, what is refused, and the round trip."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.artifacts import Run, load_run, run_meta, save_run
from melbo_tl.export.from_run import control_vector_from_run, model_hint
from melbo_tl.export.gguf_control_vector import read_control_vector, write_control_vector
from melbo_tl.export.method import import_control_vector
from melbo_tl.runs import intervention_from_run
from melbo_tl.steering.interventions import apply
from tests.helpers import vector_run

TOKENS = torch.tensor([[3, 17, 29, 4, 11, 8, 40]])


def _logits(model, *steers):
    with torch.no_grad(), apply(model, *steers):
        return model(TOKENS)


def test_export_places_each_site_at_its_llama_cpp_layer_and_applies_the_scale(tiny_qwen):
    run = vector_run(tiny_qwen, n=2, hooks=["blocks.2.hook_resid_post", "blocks.3.hook_resid_pre"])
    post = control_vector_from_run(run, 0, scale=2.5)
    pre = control_vector_from_run(run, 1)
    assert list(post.directions) == [2] and list(pre.directions) == [2]
    torch.testing.assert_close(post.directions[2], 2.5 * run.vectors[0])
    torch.testing.assert_close(pre.directions[2], run.vectors[1])
    assert post.model_hint == "qwen2" and post.n_layers == 4
    assert post.source["hook"] == "blocks.2.hook_resid_post" and post.source["scale"] == 2.5


def test_round_trip_steers_the_model_exactly_like_the_original_entry(tiny_qwen, tmp_path):
    """export → GGUF → import: the imported entry acts at blocks.N.hook_resid_post and gives the
    original entry's logits (a resid_pre vector lands one block earlier, on the same residual)."""
    run = vector_run(tiny_qwen, n=2, hooks=["blocks.3.hook_resid_pre", "blocks.1.hook_resid_post"], norm=8.0)
    for index, expected_hook in [(0, "blocks.2.hook_resid_post"), (1, "blocks.1.hook_resid_post")]:
        path = write_control_vector(tmp_path / f"v{index}.gguf", control_vector_from_run(run, index, scale=1.5))
        folder = import_control_vector(path, tmp_path / f"imported{index}", model=tiny_qwen)
        imported = load_run(folder, tiny_qwen)
        assert imported.meta["method"] == "control-vector" and imported.hooks == [expected_hook]
        original = _logits(tiny_qwen, intervention_from_run(run, index, scale=1.5))
        torch.testing.assert_close(_logits(tiny_qwen, intervention_from_run(imported, 0)), original)
        assert not torch.allclose(_logits(tiny_qwen), original, atol=1e-3)  # the vector does something


def test_import_without_a_model_keeps_width_layers_and_source(tiny_qwen, tmp_path):
    run = vector_run(tiny_qwen, n=1, hooks=["blocks.2.hook_resid_post"])
    path = write_control_vector(tmp_path / "v.gguf", control_vector_from_run(run, 0, run_path="runs/x"))
    imported = load_run(import_control_vector(path, tmp_path / "imported"), tiny_qwen)
    assert imported.meta["d_model"] == 64 and imported.meta["n_layers"] == 4
    assert imported.meta["control_vector"]["source"]["run"] == "runs/x"
    assert torch.equal(imported.vectors[0], run.vectors[0])


def test_import_checks_the_model(tiny_qwen, tmp_path):
    from melbo_tl.export.gguf_control_vector import ControlVector

    path = write_control_vector(tmp_path / "wide.gguf", ControlVector({1: torch.ones(32)}))
    with pytest.raises(ValueError, match="width 32"):
        import_control_vector(path, tmp_path / "out", model=tiny_qwen)


def test_imported_runs_cannot_be_trained(tiny_qwen, tmp_path):
    from melbo_tl.export.method import ControlVectorConfig
    from melbo_tl.training import train_to_folder

    with pytest.raises(ValueError, match="import-control-vector"):
        train_to_folder(tiny_qwen, "control-vector", ["hi"], ControlVectorConfig(), tmp_path / "x")


def test_sites_llama_cpp_does_not_steer_are_refused(tiny_qwen):
    run = vector_run(tiny_qwen, n=1, hooks=["blocks.1.hook_resid_pre"])
    with pytest.raises(ValueError, match="output of block 0"):
        control_vector_from_run(run, 0)


def test_position_restricted_vectors_are_refused(tiny_qwen):
    run = vector_run(tiny_qwen, n=1, hooks=["blocks.2.hook_resid_pre"])
    run.meta["steer_positions"] = "last:3"
    with pytest.raises(ValueError, match="positions 'last:3'"):
        control_vector_from_run(run, 0)


def test_adapters_are_refused(tiny_qwen):
    n, d_mlp, rank = 2, int(tiny_qwen.cfg.d_mlp), 2
    tensors = {"vectors": torch.zeros(n, 64), "A": torch.randn(n, d_mlp, rank), "B": torch.randn(n, 64, rank)}
    meta = run_meta(tiny_qwen, method="melbo-adapter", hooks=["blocks.1.hook_mlp_out"] * n, source_layer=1, radius=2.0)
    with pytest.raises(ValueError, match="not an added vector"):
        control_vector_from_run(Run(tensors, meta), 0)


def test_bad_index_names_the_range(tiny_qwen, tmp_path):
    folder = save_run(tmp_path / "r", vector_run(tiny_qwen, n=2, hooks=["blocks.2.hook_resid_post"] * 2))
    with pytest.raises(ValueError, match="valid 0…1"):
        control_vector_from_run(load_run(folder), 5)


def test_model_hint_uses_llama_cpp_names():
    assert model_hint("Qwen2ForCausalLM") == "qwen2" and model_hint("LlamaForCausalLM") == "llama"
    assert model_hint("FooBarForCausalLM") == "foobar" and model_hint(None) == ""


def test_read_back_file_matches_what_was_exported(tiny_qwen, tmp_path):
    run = vector_run(tiny_qwen, n=1, hooks=["blocks.3.hook_resid_post"])
    path = write_control_vector(tmp_path / "v.gguf", control_vector_from_run(run, 0, scale=-1.0))
    torch.testing.assert_close(read_control_vector(path).directions[3], -run.vectors[0])
