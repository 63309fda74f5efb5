"""Model loading, embedded-model file checks and the model cache."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import pytest
import torch

from melbo_tl.models import (
    DEFAULT_MODEL,
    EMBEDDED,
    ModelFileError,
    ModelInfo,
    cache,
    chat_tokenizer,
    describe_cache,
    load_model,
    model_info,
)
from melbo_tl.models.embedded import GGUFPart, assemble_gguf

# --- loading -------------------------------------------------------------------------------


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


# --- embedded model files ------------------------------------------------------------------


@pytest.fixture
def fake_parts(tmp_path, monkeypatch):
    """Two small part files; GGUFPart.locate returns them instead of wheel files."""
    contents = {"p1": b"a" * 1000, "p2": b"b" * 500}
    files = {}
    for name, data in contents.items():
        files[name] = tmp_path / f"{name}.bin"
        files[name].write_bytes(data)
    monkeypatch.setattr(GGUFPart, "locate", lambda self, model: files[self.path])
    data = contents["p1"] + contents["p2"]
    base = dataclasses.replace(
        EMBEDDED["smollm2-135m-instruct"],
        parts=(GGUFPart("fake-dist", "p1"), GGUFPart("fake-dist", "p2")),
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    return base, data


def test_assemble_gguf_concatenates_verified_parts(fake_parts, tmp_path):
    model, data = fake_parts
    dest = assemble_gguf(model, tmp_path / "out.gguf")
    assert dest.read_bytes() == data


def test_assemble_gguf_wrong_size(fake_parts, tmp_path):
    model, _ = fake_parts
    wrong = dataclasses.replace(model, size=2000)
    with pytest.raises(ModelFileError) as err:
        assemble_gguf(wrong, tmp_path / "out.gguf")
    message = str(err.value)
    assert "1,500" in message and "2,000" in message
    assert "pip install" in message
    assert "sha256" not in message


def test_assemble_gguf_wrong_sha(fake_parts, tmp_path):
    model, data = fake_parts
    wrong = dataclasses.replace(model, sha256="0" * 64)
    with pytest.raises(ModelFileError) as err:
        assemble_gguf(wrong, tmp_path / "out.gguf")
    message = str(err.value)
    assert "sha256" in message
    assert hashlib.sha256(data).hexdigest() in message
    assert "pip install" in message


def test_missing_distribution_names_package_and_fix():
    part = GGUFPart("melbo-tl-no-such-distribution", "x/part.bin")
    with pytest.raises(ModelFileError) as err:
        part.locate(DEFAULT_MODEL)
    message = str(err.value)
    assert "melbo-tl-no-such-distribution" in message
    assert "pip install" in message
    assert EMBEDDED[DEFAULT_MODEL].pip_args in message


def test_missing_file_in_installed_distribution():
    part = GGUFPart("pytest", "pytest_no_such_dir/part.bin")
    with pytest.raises(ModelFileError, match="missing") as err:
        part.locate(DEFAULT_MODEL)
    assert "pip install --force-reinstall" in str(err.value)


def test_embedded_parts_are_installed():
    # The wheels are installed in the dev environment; every declared part must resolve.
    for model in EMBEDDED.values():
        for part in model.parts:
            assert part.locate(model.name).is_file()


# --- cache ---------------------------------------------------------------------------------


def test_cache_root_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MELBO_TL_CACHE", str(tmp_path))
    assert cache.cache_root() == tmp_path
    assert cache.model_cache_dir("m") == tmp_path / "models" / "m"
    monkeypatch.delenv("MELBO_TL_CACHE")
    assert cache.cache_root() != tmp_path


def test_staging_dir_is_never_complete_until_published(tmp_path):
    final = tmp_path / "models" / "m"
    staging = cache.staging_dir(final)
    assert staging.is_dir() and staging.parent == final.parent and staging != final
    (staging / "config.json").write_text("{}")
    assert not cache.is_complete(staging)
    assert not cache.is_complete(final)

    published = cache.publish(staging, final, {"name": "m", "x": 1})
    assert published == final
    assert cache.is_complete(final)
    assert cache.read_marker(final) == {"name": "m", "x": 1}
    assert (final / "config.json").read_text() == "{}"
    assert not staging.exists()


def test_publish_replaces_stale_entry(tmp_path):
    final = tmp_path / "m"
    final.mkdir()
    (final / "stale.bin").write_bytes(b"old")
    staging = cache.staging_dir(final)
    (staging / "new.bin").write_bytes(b"new")
    cache.publish(staging, final, {"v": 2})
    assert not (final / "stale.bin").exists()
    assert (final / "new.bin").read_bytes() == b"new"


def test_staging_dir_starts_empty(tmp_path):
    final = tmp_path / "m"
    first = cache.staging_dir(final)
    (first / "leftover").write_text("half-written")
    second = cache.staging_dir(final)
    assert second == first
    assert list(second.iterdir()) == []


def test_half_written_embedded_cache_is_not_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("MELBO_TL_CACHE", str(tmp_path))
    model = EMBEDDED[DEFAULT_MODEL]
    model.cache_dir.mkdir(parents=True)
    (model.cache_dir / "config.json").write_text("{}")
    assert not model.is_cached()
    (model.cache_dir / cache.MARKER).write_text(json.dumps({"gguf_sha256": model.sha256}))
    assert model.is_cached()


def test_describe_cache_lists_every_embedded_model(tmp_path, monkeypatch):
    monkeypatch.setenv("MELBO_TL_CACHE", str(tmp_path))
    rows = describe_cache()
    assert [r["name"] for r in rows] == list(EMBEDDED)
    assert {DEFAULT_MODEL, "smollm2-135m-instruct"} <= {r["name"] for r in rows}
    assert not any(r["cached"] for r in rows)
    for row in rows:
        assert row["cache_dir"] == str(tmp_path / "models" / row["name"])
        assert row["description"] == EMBEDDED[row["name"]].description
        assert row["dequantize_seconds"] is None

    # A published entry shows up as cached, with its marker's timing.
    final = EMBEDDED[DEFAULT_MODEL].cache_dir
    cache.publish(cache.staging_dir(final), final, {"dequantize_seconds": 12.5})
    rows = {r["name"]: r for r in describe_cache()}
    assert rows[DEFAULT_MODEL]["cached"] is True
    assert rows[DEFAULT_MODEL]["dequantize_seconds"] == 12.5
    assert rows["smollm2-135m-instruct"]["cached"] is False
