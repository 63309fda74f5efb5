"""The OpenAI request bodies the server accepts (pydantic), and the response objects it returns.

Requests follow OpenAI's ``/v1/chat/completions`` and ``/v1/completions``; fields the server
cannot honour (log-probabilities, tools, penalties, …) are refused with an error naming them
rather than silently ignored. Unknown fields are accepted, as OpenAI clients add their own.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# Fields OpenAI defines that this server does not implement: refused when set to anything but
# their neutral value (value → what counts as neutral).
UNSUPPORTED: dict[str, Any] = {
    "logprobs": (None, False, 0),
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "response_format": (None, {"type": "text"}),
    "frequency_penalty": (None, 0, 0.0),
    "presence_penalty": (None, 0, 0.0),
    "logit_bias": (None, {}),
    "echo": (None, False),
    "suffix": (None, ""),
    "best_of": (None, 1),
}


class _Request(BaseModel):
    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    n: int = Field(1, ge=1)
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    steering: Any = None
    extra_body: dict[str, Any] | None = None

    def unsupported(self) -> str | None:
        """The first OpenAI field set that the server does not implement."""
        extra = self.model_extra or {}
        for name, neutral in UNSUPPORTED.items():
            if name in extra and extra[name] not in neutral:
                return name
        return None

    def steering_field(self) -> tuple[Any, str]:
        """The steering spec and the name of the field it came in (top level or ``extra_body``)."""
        if self.steering is not None:
            return self.steering, "steering"
        inner = (self.extra_body or {}).get("steering")
        return inner, "extra_body.steering"

    def stop_strings(self) -> tuple[str, ...]:
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop or [])
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class Message(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str | list[TextPart]

    def as_dict(self) -> dict[str, str]:
        text = self.content if isinstance(self.content, str) else "".join(p.text for p in self.content)
        return {"role": self.role, "content": text}


class ChatRequest(_Request):
    messages: list[Message] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)


class CompletionRequest(_Request):
    prompt: str | list[str]


class RegisterRequest(BaseModel):
    """``POST /v1/steering/vectors``: a name and one source (a run folder, a GGUF file, or data)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    name: str = Field(min_length=1)
    run_dir: str | None = None
    index: int | None = None
    gguf: str | None = None
    data: list[float] | None = None
    site: str | None = None
    layers: list[int] | None = None


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def error_body(message: str, param: str | None, kind: str = "invalid_request_error", code: str | None = None) -> dict:
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}
