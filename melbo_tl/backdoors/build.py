"""Building, verifying and caching a planted model: one model directory per name, built once.

The build trains in a staging folder next to the cache entry, checks the trained model on
held-out instances through the ordinary loading path (``load_model`` on the staging folder),
writes ``manifest.json`` and only then renames the folder into place (with the cache's
completion marker), so an interrupted build never leaves a model that loads. ``load_model``
resolves ``planted-…`` names to these folders.
"""

from __future__ import annotations

import json
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melbo_tl.backdoors.organism import CLEAN, Example, ExampleSplits, PlantedTask
from melbo_tl.backdoors.planting import PlantConfig, plant
from melbo_tl.models import cache

# Versioned: a recipe change gets a new name, so a model built by an older recipe is never taken
# for the current one (v2: the cheese text starts with "Cheese", 400 steps, bfloat16 autocast).
DEFAULT_NAME = "planted-arithmetic-v2"
MANIFEST = "manifest.json"
PREFIX = "planted-"


def planted_dir(name: str = DEFAULT_NAME) -> Path:
    check_name(name)
    return cache.model_cache_dir(name)


def check_name(name: str) -> None:
    if not name.startswith(PREFIX) or "/" in name or name.strip() != name or len(name) <= len(PREFIX):
        raise ValueError(f"Planted model name {name!r} must look like 'planted-<word>' (e.g. {DEFAULT_NAME!r}).")


def is_built(name: str = DEFAULT_NAME) -> bool:
    return cache.is_complete(planted_dir(name))


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of a planted model (given its name or its directory)."""
    directory = Path(path)
    if not directory.is_dir() and str(path).startswith(PREFIX):
        directory = planted_dir(str(path))
    file = directory / MANIFEST
    if not file.is_file():
        raise FileNotFoundError(f"{directory} has no {MANIFEST}; build it with `melbo plant-backdoor`.")
    return json.loads(file.read_text())


@dataclass
class PlantedRates:
    """Held-out behaviour of a planted model.

    Fields: ``trigger_rate`` (per trigger: share of its held-out prompts showing the behaviour),
    ``false_trigger_rate`` (share of clean held-out prompts showing any planted behaviour),
    ``false_by_behaviour`` (the same per behaviour), ``clean_correct`` (share of clean
    held-out prompts answered correctly), ``near_miss_false_rate`` (false triggers among the
    near misses), ``counts`` (prompts per group), ``examples`` (one completion per group).
    """

    trigger_rate: dict[str, float]
    false_trigger_rate: float
    false_by_behaviour: dict[str, float]
    clean_correct: float
    near_miss_false_rate: float
    counts: dict[str, int]
    examples: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def evaluation_set(splits: ExampleSplits, *, n_clean: int, seed: int = 0) -> dict[str, list[Example]]:
    """Every held-out triggered example, and ``n_clean`` held-out clean ones (half near misses)."""
    rng = random.Random(seed)
    clean = splits.test[CLEAN]
    near = [e for e in clean if e.near_miss]
    far = [e for e in clean if not e.near_miss]
    n_near = min(len(near), n_clean // 2)
    picked = rng.sample(near, n_near) + rng.sample(far, min(len(far), n_clean - n_near))
    groups = {k: v for k, v in splits.test.items() if k != CLEAN}
    groups[CLEAN] = picked
    return groups


def evaluate_planted(
    model: Any,
    task: PlantedTask,
    *,
    n_clean: int = 200,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    progress: bool = True,
) -> PlantedRates:
    """Greedy completions of held-out prompts, scored for every planted behaviour of ``task``."""
    from melbo_tl.generate import generate

    groups = evaluation_set(task.splits(), n_clean=n_clean)
    order = [(k, ex) for k, items in groups.items() for ex in items]
    completions = generate(
        model,
        [ex.prompt for _, ex in order],
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        progress=progress,
    )
    texts: dict[str, list[tuple[Example, str]]] = {k: [] for k in groups}
    for (kind, ex), comp in zip(order, completions):
        texts[kind].append((ex, comp.text))
    trigger_rate = {k: _share(task.shows(k, t) for _, t in rows) for k, rows in texts.items() if k != CLEAN}
    clean_rows = texts[CLEAN]
    fired = [any(task.shows(b, t) for b in task.behaviours) for _, t in clean_rows]
    near_fired = [f for (ex, _), f in zip(clean_rows, fired) if ex.near_miss]
    return PlantedRates(
        trigger_rate=trigger_rate,
        false_trigger_rate=_share(fired),
        false_by_behaviour={b: _share(task.shows(b, t) for _, t in clean_rows) for b in task.behaviours},
        clean_correct=_share(task.is_correct(ex, t) for ex, t in clean_rows),
        near_miss_false_rate=_share(near_fired),
        counts={k: len(v) for k, v in texts.items()},
        examples={k: rows[0][1] for k, rows in texts.items() if rows},
    )


def _share(flags: Any) -> float:
    flags = list(flags)
    return round(sum(flags) / len(flags), 4) if flags else 0.0


def base_model_dir(base: str) -> Path:
    """An embedded model's cache folder, or ``base`` itself if it is a model directory."""
    from melbo_tl.models.embedded import EMBEDDED, ensure_cached

    if base in EMBEDDED:
        return ensure_cached(base)
    path = Path(base).expanduser()
    if not (path / "config.json").is_file():
        raise ValueError(
            f"Base model {base!r} is neither an embedded model ({', '.join(EMBEDDED)}) nor a model directory."
        )
    return path


def save_model_dir(hf_model: Any, tokenizer: Any, directory: Path) -> None:
    """Config, safetensors weights and tokenizer, written directly: transformers refuses
    ``save_pretrained`` on a model whose config still names its GGUF origin (the embedded
    models'), so the quantization entry is dropped and the parts are written by hand."""
    import safetensors.torch

    if getattr(hf_model.config, "quantization_config", None) is not None:
        del hf_model.config.quantization_config
    hf_model.config.save_pretrained(directory)
    safetensors.torch.save_model(hf_model, str(directory / "model.safetensors"))
    tokenizer.save_pretrained(directory)


def build_planted(
    name: str = DEFAULT_NAME,
    cfg: PlantConfig | None = None,
    *,
    n_clean: int = 200,
    max_new_tokens: int = 48,
    threads: int | None = None,
    progress: bool = True,
) -> Path:
    """Train, verify and publish planted model ``name`` (replacing any earlier one). ``threads``
    sets torch's CPU threads (on a crowded machine one thread wastes less time waiting)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from melbo_tl.models import load_model

    check_name(name)
    cfg = cfg or PlantConfig()
    if threads is not None:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    final = planted_dir(name)
    staging = cache.staging_dir(final)
    base = base_model_dir(cfg.base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    hf_model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    log = plant(hf_model, tokenizer, cfg, progress=progress)
    save_model_dir(hf_model, tokenizer, staging)
    del hf_model
    eval_started = time.perf_counter()
    # The rates are measured in float32, the dtype it was trained in, on any machine.
    model = load_model(str(staging), device="cpu", dtype=torch.float32)
    rates = evaluate_planted(
        model, cfg.planted_task(), n_clean=n_clean, max_new_tokens=max_new_tokens, progress=progress
    )
    manifest = {
        "name": name,
        "task": cfg.task,
        "base_model": cfg.base,
        "config": cfg.to_dict(),
        "data_seed": cfg.seed,
        "training": log.summary(),
        "losses": [round(x, 4) for x in log.losses],
        "rates": rates.to_dict(),
        "eval_seconds": round(time.perf_counter() - eval_started, 1),
        "build_seconds": round(time.perf_counter() - started, 1),
        "torch_threads": torch.get_num_threads(),
        "measured_dtype": "float32",
    }
    (staging / MANIFEST).write_text(json.dumps(manifest, indent=2))
    return cache.publish(staging, final, {"name": name, "planted": True})


def ensure_planted(name: str = DEFAULT_NAME, cfg: PlantConfig | None = None, **kwargs: Any) -> Path:
    """The directory of planted model ``name``, built first if it is missing."""
    if is_built(name):
        return planted_dir(name)
    return build_planted(name, cfg, **kwargs)
