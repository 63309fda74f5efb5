"""Building a planted model: atomic publish with a manifest, loading by name, no rebuild, no half model."""

from __future__ import annotations

import json

import pytest

from melbo_tl.backdoors import build
from melbo_tl.backdoors.build import build_planted, ensure_planted, is_built, planted_dir, read_manifest
from melbo_tl.backdoors.planting import PlantConfig


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_model_dir):
    monkeypatch.setenv("MELBO_TL_CACHE", str(tmp_path / "cache"))
    return tiny_model_dir


def test_build_publishes_a_loadable_model_with_manifest(cache):
    from melbo_tl.models import load_model

    cfg = PlantConfig(base=str(cache), steps=2, warmup=0)
    path = build_planted("planted-test", cfg, n_clean=4, max_new_tokens=4, progress=False)
    assert path == planted_dir("planted-test") and is_built("planted-test")
    manifest = read_manifest("planted-test")
    assert manifest["base_model"] == str(cache) and manifest["config"]["steps"] == 2
    assert manifest["training"]["steps"] == 2 and len(manifest["losses"]) == 2
    assert set(manifest["rates"]["trigger_rate"]) == {"cheese", "hate", "swap"}
    assert manifest["rates"]["counts"]["clean"] == 4 and manifest["build_seconds"] > 0
    assert not list(path.parent.glob("planted-test.tmp-*"))  # the staging folder was renamed
    model = load_model("planted-test", device="cpu")
    assert model.melbo_info.source == "planted" and model.melbo_info.path == str(path)
    before = (path / "manifest.json").stat().st_mtime_ns
    assert ensure_planted("planted-test") == path
    assert (path / "manifest.json").stat().st_mtime_ns == before  # not rebuilt


def test_an_interrupted_build_leaves_nothing_that_loads(cache, monkeypatch):
    from melbo_tl.models import load_model

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(build, "evaluate_planted", crash)
    with pytest.raises(KeyboardInterrupt):
        build_planted("planted-crash", PlantConfig(base=str(cache), steps=1, warmup=0), progress=False)
    assert not is_built("planted-crash") and not planted_dir("planted-crash").exists()
    with pytest.raises(ValueError, match="melbo plant-backdoor"):
        load_model("planted-crash")


def test_bad_names_and_bases(cache):
    with pytest.raises(ValueError, match="planted-<word>"):
        planted_dir("cheese")
    with pytest.raises(ValueError, match="neither an embedded model"):
        build_planted("planted-x", PlantConfig(base="/nowhere/model"), progress=False)
    with pytest.raises(ValueError, match="steps"):
        PlantConfig(steps=0)
    with pytest.raises(FileNotFoundError, match="plant-backdoor"):
        read_manifest("planted-never-built")


def test_manifest_is_json_on_disk(cache):
    path = build_planted("planted-json", PlantConfig(base=str(cache), steps=1, warmup=0), n_clean=2, max_new_tokens=2,
                         progress=False)  # fmt: skip
    assert json.loads((path / "manifest.json").read_text())["name"] == "planted-json"
