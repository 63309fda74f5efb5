"""The GGUF control-vector format: exact round trip, the keys llama.cpp's tools write, other tools' files."""

from __future__ import annotations

import gguf
import numpy as np
import pytest
import torch

from melbo_tl.export.gguf_control_vector import ControlVector, read_control_vector, write_control_vector


def test_round_trip_is_exact_and_keeps_hint_block_count_and_source(tmp_path):
    directions = {7: torch.randn(896), 3: torch.randn(896)}
    cv = ControlVector(directions, model_hint="qwen2", n_layers=24, source={"run": "runs/x", "vector": 5})
    back = read_control_vector(write_control_vector(tmp_path / "cv.gguf", cv))
    assert sorted(back.directions) == [3, 7]
    for layer, v in directions.items():
        assert torch.equal(back.directions[layer], v)
    assert (back.model_hint, back.n_layers, back.source) == ("qwen2", 24, {"run": "runs/x", "vector": 5})


def test_file_has_the_layout_llama_cpp_reads(tmp_path):
    """Read with the gguf package's own reader: architecture, hint, count, F32 1-D direction.N tensors."""
    path = write_control_vector(tmp_path / "cv.gguf", ControlVector({5: torch.arange(64.0)}, model_hint="llama"))
    reader = gguf.GGUFReader(path)

    def value(key):
        field = reader.fields[key]
        return field.parts[field.data[0]]

    assert bytes(value("general.architecture")).decode() == "controlvector"
    assert bytes(value("controlvector.model_hint")).decode() == "llama"
    assert int(value("controlvector.layer_count")[0]) == 1
    [tensor] = reader.tensors
    assert tensor.name == "direction.5" and tensor.tensor_type == gguf.GGMLQuantizationType.F32
    assert list(tensor.shape) == [64]
    np.testing.assert_array_equal(np.asarray(tensor.data), np.arange(64, dtype=np.float32))


def _foreign(path, tensors, arch="controlvector", dtype=np.float32):
    """A file written the way other tools (repeng, cvector-generator) do: no melbo_tl keys."""
    w = gguf.GGUFWriter(path, arch=arch)
    w.add_string(f"{arch}.model_hint", "mistral")
    w.add_uint32(f"{arch}.layer_count", len(tensors))
    for name, data in tensors.items():
        w.add_tensor(name, data.astype(dtype))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_other_tools_files_are_read(tmp_path):
    rng = np.random.default_rng(0)
    data = {f"direction.{n}": rng.standard_normal(32) for n in (1, 2, 31)}
    cv = read_control_vector(_foreign(tmp_path / "repeng.gguf", data))
    assert sorted(cv.directions) == [1, 2, 31] and cv.n_layers is None and cv.model_hint == "mistral"
    np.testing.assert_allclose(cv.directions[31].numpy(), data["direction.31"].astype(np.float32))


@pytest.mark.parametrize(
    ("tensors", "arch", "dtype", "says"),
    [
        ({"direction.0": np.ones(8)}, "controlvector", np.float32, "layer 0"),
        ({"direction.x": np.ones(8)}, "controlvector", np.float32, "not a direction tensor"),
        ({"direction.1": np.ones(8)}, "controlvector", np.float16, "F32"),
        ({"direction.1": np.ones((2, 8))}, "controlvector", np.float32, "1-D"),
        ({"direction.1": np.ones(8)}, "llama", np.float32, "not a control vector"),
        ({"direction.1": np.ones(8), "direction.2": np.ones(9)}, "controlvector", np.float32, "one width"),
    ],
)
def test_files_llama_cpp_would_reject_are_refused(tmp_path, tensors, arch, dtype, says):
    with pytest.raises(ValueError, match=says):
        read_control_vector(_foreign(tmp_path / "bad.gguf", tensors, arch=arch, dtype=dtype))


def test_missing_and_non_gguf_files_are_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_control_vector(tmp_path / "none.gguf")
    (tmp_path / "text.gguf").write_text("not a gguf file")
    with pytest.raises(ValueError, match="not a readable GGUF"):
        read_control_vector(tmp_path / "text.gguf")


def test_direction_layers_start_at_one():
    with pytest.raises(ValueError, match="from 1"):
        ControlVector({0: torch.ones(4)})
