"""The model cache: atomic publishing, stale staging folders, describe_cache."""

from __future__ import annotations

import json

from melbo_tl.models import (
    DEFAULT_MODEL,
    EMBEDDED,
    cache,
    describe_cache,
)


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
