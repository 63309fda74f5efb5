"""Loading models: local directories, model info, frozen eval mode, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from melbo_tl.models import (
    ModelFileError,
    ModelInfo,
    chat_tokenizer,
    load_model,
    model_info,
)


def test_local_directory_loads_with_model_info(tiny_model, tiny_model_dir):
    info = model_info(tiny_model)
    assert isinstance(info, ModelInfo)
    assert info.source == "local"
    assert info.d_model == 64
    assert info.n_layers == 4
    assert info.spec == str(tiny_model_dir)
    assert info.path == str(Path(tiny_model_dir).resolve())
    assert info.architecture == "LlamaForCausalLM"
    assert len(info.revision) == 16 and int(info.revision, 16) >= 0
    assert info.to_dict()["d_model"] == 64


def test_loaded_model_is_frozen_eval_and_runs(tiny_model):
    assert not tiny_model.training
    assert not any(p.requires_grad for p in tiny_model.parameters())
    logits = tiny_model(torch.tensor([[1, 2, 3]]))
    assert logits.shape == (1, 3, len(chat_tokenizer(tiny_model)))


def test_chat_tokenizer_has_template_and_pad(tiny_model):
    tok = chat_tokenizer(tiny_model)
    assert tok.chat_template
    assert tok.pad_token_id is not None


def test_qwen2_architecture_loads(tiny_qwen):
    info = model_info(tiny_qwen)
    assert info.architecture == "Qwen2ForCausalLM"
    assert (info.d_model, info.n_layers, info.source) == (64, 4, "local")


def test_revision_fingerprint_is_stable_and_content_dependent(tiny_model, tiny_qwen, tiny_model_dir):
    from melbo_tl.models.loading import _weights_fingerprint

    assert _weights_fingerprint(Path(tiny_model_dir)) == model_info(tiny_model).revision
    assert model_info(tiny_qwen).revision != model_info(tiny_model).revision


def test_directory_without_config_is_rejected(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(tmp_path))


def test_file_path_is_rejected(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"x")
    with pytest.raises(ValueError, match="config.json"):
        load_model(str(path))


@pytest.mark.parametrize("spec", ["./nope/model", "/definitely/not/here", "a/b/c"])
def test_nonexistent_path_is_rejected(spec):
    with pytest.raises(ValueError, match="does not exist"):
        load_model(spec)


@pytest.mark.parametrize("spec", ["", "   "])
def test_empty_spec_is_rejected(spec):
    with pytest.raises(ValueError, match="empty"):
        load_model(spec)


def test_unloadable_local_directory_raises_model_file_error(tmp_path):
    (tmp_path / "config.json").write_text("{ this is not json")
    with pytest.raises(ModelFileError, match="Could not load model directory"):
        load_model(str(tmp_path))
