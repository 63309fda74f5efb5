"""One entry point for every model: embedded name, local directory or Hugging Face hub id.

All three end in ``TransformerBridge.boot_transformers`` on a model directory or hub id, so the
embedded model exercises the same code path a user's own model does. The returned bridge is in
eval mode with frozen weights (steering optimizes vectors, never the model), and carries a
:class:`ModelInfo` plus the unmodified Hugging Face tokenizer used for chat formatting.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from melbo_tl.models import cache
from melbo_tl.models.embedded import DEFAULT_MODEL, EMBEDDED, ModelFileError, ensure_cached
from melbo_tl.models.precision import parse_dtype, resolve_dtype

if TYPE_CHECKING:  # imported inside load_model: it takes seconds, and `melbo models` needs none of it
    from transformer_lens.model_bridge import TransformerBridge


@dataclass(frozen=True)
class ModelInfo:
    """Identity of a loaded model, recorded in every run folder."""

    spec: str  # what the user asked for
    source: str  # "embedded" | "planted" | "local" | "hub"
    path: str  # directory or hub id actually loaded
    revision: str  # sha256 of the weights file (embedded/local) or the hub revision asked for
    d_model: int
    n_layers: int
    architecture: str
    device: str = "cpu"  # where it was loaded
    dtype: str = "float32"  # what it computes in

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _weights_fingerprint(directory: Path) -> str:
    """A cheap, stable fingerprint of a model directory: sha256 over config and weight headers."""
    digest = hashlib.sha256()
    for path in sorted(directory.glob("*.safetensors")) + [directory / "config.json"]:
        if path.is_file():
            digest.update(path.name.encode())
            digest.update(str(path.stat().st_size).encode())
            with open(path, "rb") as fh:
                digest.update(fh.read(1 << 20))
    return digest.hexdigest()[:16]


PLANTED_PREFIX = "planted-"  # models with planted backdoors, built by melbo_tl.backdoors into the cache


def _resolve(spec: str) -> tuple[str, str]:
    """Map a user spec to (source, directory-or-hub-id)."""
    if spec in EMBEDDED:
        return "embedded", str(ensure_cached(spec))
    if spec.startswith(PLANTED_PREFIX) and "/" not in spec:
        directory = cache.model_cache_dir(spec)
        if not cache.is_complete(directory):
            raise ValueError(
                f"Planted model {spec!r} is not built yet (no complete folder at {directory}). Build it with "
                f"`melbo plant-backdoor --name {spec}` (melbo_tl.backdoors.build.build_planted)."
            )
        return "planted", str(directory)
    path = Path(spec).expanduser()
    if path.exists():
        if not path.is_dir() or not (path / "config.json").is_file():
            raise ValueError(
                f"Model path {str(path)!r} is not a Hugging Face model directory (no config.json). "
                f"Pass a directory written by save_pretrained, a hub id, or one of the embedded "
                f"models: {', '.join(EMBEDDED)}."
            )
        return "local", str(path.resolve())
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise ValueError(f"Model directory {spec!r} does not exist. Embedded models: {', '.join(EMBEDDED)}.")
    return "hub", spec


DEVICE_MAPS = ("auto", "balanced", "balanced_low_0", "sequential")


def default_device() -> str:
    """``"cuda"`` when a GPU is available, else ``"cpu"``: where :func:`load_model` puts a model."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    device: str | torch.device | None = None,
    dtype: torch.dtype | str = "auto",
    revision: str | None = None,
    device_map: str | dict[str, str | int] | None = None,
    offload_folder: str | Path | None = None,
) -> TransformerBridge:
    """Load a model as a frozen, eval-mode ``TransformerBridge``.

    ``device`` defaults to :func:`default_device` (CUDA when available, else the CPU); ``dtype``
    ``"auto"`` is bfloat16 where the device computes it natively, else float32 (see
    :mod:`melbo_tl.models.precision`; ``MELBO_TL_DTYPE`` overrides it). A torch dtype or its name
    fixes it. Either way melbo_tl's optimizers keep float32 master copies of what they train and
    accumulate objectives in float32.

    ``device_map`` spreads a model too big for one device over several (accelerate's dispatch,
    through ``boot_transformers``): ``"auto"`` fills the GPUs in order, then the CPU, then
    ``offload_folder`` on disk; or an explicit ``{module name: device}`` map. It replaces
    ``device``; inputs then go to the first block's device and the segment runner carries the
    residual from block to block (:func:`melbo_tl.placement.module_device`).

    >>> model = load_model()                       # embedded Qwen2.5-Coder-0.5B-Instruct
    >>> model = load_model("path/to/model_dir")    # any save_pretrained directory
    >>> model = load_model("planted-arithmetic-v2")   # a planted-backdoor model (melbo plant-backdoor)
    >>> model = load_model("Qwen/Qwen2.5-0.5B-Instruct", device="cuda")  # hub id (needs network)
    """
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    if not spec or not spec.strip():
        raise ValueError(f"Model spec is empty. Embedded models: {', '.join(EMBEDDED)}.")
    parse_dtype(dtype)  # a bad dtype fails before anything is read
    if device_map is not None and device is not None:
        raise ValueError(f"Give a device ({device}) or a device_map ({device_map}), not both.")
    if isinstance(device_map, str) and device_map not in DEVICE_MAPS:
        raise ValueError(
            f"device_map {device_map!r} is not one of {', '.join(DEVICE_MAPS)} (or a dict of module → device)."
        )
    if device_map is None:
        device = torch.device(device) if device is not None else torch.device(default_device())
    # With a device map, "auto" follows the device the map fills first (CUDA when there is one).
    dtype = resolve_dtype(dtype, device if device is not None else torch.device(default_device()))
    placed: dict[str, Any] = {"device": device}
    if device_map is not None:
        placed = {"device_map": device_map, "offload_folder": None if offload_folder is None else str(offload_folder)}
    source, where = _resolve(spec)
    logging.getLogger("transformer_lens").setLevel(logging.ERROR)
    try:
        chat_tokenizer = AutoTokenizer.from_pretrained(where, revision=revision)
        bridge = TransformerBridge.boot_transformers(where, dtype=dtype, revision=revision, **placed)
    except (OSError, ValueError, RuntimeError) as exc:
        raise _load_failed(spec, source, where, exc) from exc
    bridge.eval()
    bridge.requires_grad_(False)
    if chat_tokenizer.pad_token_id is None:
        chat_tokenizer.pad_token = chat_tokenizer.eos_token
    revision_id = revision or "main"
    if source != "hub":
        revision_id = _weights_fingerprint(Path(where))
    info = ModelInfo(
        spec=spec,
        source=source,
        path=where,
        revision=revision_id,
        d_model=int(bridge.cfg.d_model),
        n_layers=int(bridge.cfg.n_layers),
        architecture=str(bridge.cfg.architecture),
        device=_where(bridge),
        dtype=str(next(bridge.parameters()).dtype).replace("torch.", ""),
    )
    object.__setattr__(bridge, "melbo_info", info)
    object.__setattr__(bridge, "chat_tokenizer", chat_tokenizer)
    return bridge


def _load_failed(spec: str, source: str, where: str, exc: Exception) -> ModelFileError:
    """The error that says what to do when a resolved model could not be loaded."""
    if source == "embedded":
        return ModelFileError(
            f"The cached copy of {spec!r} at {where} could not be loaded ({exc}). Delete that "
            f"folder to rebuild it from the GGUF wheels."
        )
    if source in ("local", "planted"):
        return ModelFileError(f"Could not load model directory {where!r}: {exc}")
    return ModelFileError(
        f"{spec!r} is not an embedded model ({', '.join(EMBEDDED)}), not an existing "
        f"directory, and loading it from the Hugging Face hub failed: {exc}"
    )


def _where(bridge: TransformerBridge) -> str:
    """The device the model is on, or for a dispatched model its devices in block order ("cuda:0,cuda:1")."""
    hf_map = getattr(getattr(bridge, "original_model", None), "hf_device_map", None)
    if not hf_map:
        return str(next(bridge.parameters()).device)
    seen = dict.fromkeys(str(torch.device(d)) if isinstance(d, int) else str(d) for d in hf_map.values())
    return ",".join(seen)


def model_info(model: TransformerBridge) -> ModelInfo:
    info = getattr(model, "melbo_info", None)
    if info is None:
        cfg = model.cfg
        name = str(getattr(cfg, "model_name", "unknown"))
        info = ModelInfo(name, "external", name, "unknown", int(cfg.d_model), int(cfg.n_layers), str(cfg.architecture))
    return info


def chat_tokenizer(model: TransformerBridge) -> Any:
    """The model's own Hugging Face tokenizer (the bridge's copy is rewritten for BOS handling)."""
    return getattr(model, "chat_tokenizer", None) or model.tokenizer
