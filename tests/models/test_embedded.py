"""Embedded GGUF models: assembling verified parts, errors that name the fix."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest

from melbo_tl.models import (
    DEFAULT_MODEL,
    EMBEDDED,
    ModelFileError,
)
from melbo_tl.models.embedded import GGUFPart, assemble_gguf


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
