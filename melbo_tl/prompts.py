"""Chat prompts, tokenization with left padding, and position specs.

Prompts are formatted with the model's own chat template and tokenized without any extra BOS
(the template already carries the special tokens). Batches are left-padded so the last prompt
token of every row sits in the last column; a :class:`TokenBatch` keeps, for each column, the
index of the token within its row's real sequence (-1 on padding), so position specs always
refer to real tokens.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch
from jaxtyping import Bool, Int
from torch import Tensor

from melbo_tl.models.loading import chat_tokenizer

Message = dict[str, str]
PromptLike = Union[str, Sequence[Message]]


def format_chat(
    tokenizer: Any,
    prompt: PromptLike,
    *,
    system: str | None = None,
    add_generation_prompt: bool = True,
) -> str:
    """Render a user message (or a message list) with the tokenizer's chat template."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise ValueError("Prompt is empty; give the text of a user message.")
        messages: list[Message] = [{"role": "user", "content": prompt}]
    else:
        messages = [dict(m) for m in prompt]
        if not messages:
            raise ValueError("Message list is empty; give at least one {'role', 'content'} message.")
    if system is not None:
        messages = [{"role": "system", "content": system}] + [m for m in messages if m["role"] != "system"]
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("This tokenizer has no chat template; pass raw text with chat=False.")
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)


@dataclass
class TokenBatch:
    """Left-padded token ids of several texts.

    Fields:
        input_ids: ``[batch, pos]`` token ids, padding on the left.
        attention_mask: ``[batch, pos]`` 1 on real tokens, 0 on padding.
        token_index: ``[batch, pos]`` index of each column within its row's real tokens, -1 on padding.
        lengths: ``[batch]`` number of real tokens per row.
    """

    input_ids: Int[Tensor, "batch pos"]
    attention_mask: Int[Tensor, "batch pos"]
    token_index: Int[Tensor, "batch pos"]
    lengths: Int[Tensor, " batch"]

    def to(self, device: torch.device | str) -> TokenBatch:
        return TokenBatch(
            *(t.to(device) for t in (self.input_ids, self.attention_mask, self.token_index, self.lengths))
        )


def left_pad(rows: Sequence[Sequence[int]], pad_id: int) -> TokenBatch:
    """Stack token-id lists into a left-padded :class:`TokenBatch`."""
    if not rows or any(len(r) == 0 for r in rows):
        raise ValueError("Cannot build a batch from an empty token sequence.")
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long, device="cpu")
    mask = torch.zeros((len(rows), width), dtype=torch.long, device="cpu")
    index = torch.full((len(rows), width), -1, dtype=torch.long, device="cpu")
    for i, row in enumerate(rows):
        n = len(row)
        ids[i, width - n :] = torch.tensor(list(row), dtype=torch.long, device="cpu")
        mask[i, width - n :] = 1
        index[i, width - n :] = torch.arange(n, device="cpu")
    return TokenBatch(ids, mask, index, torch.tensor([len(r) for r in rows], device="cpu"))


def tokenize(tokenizer: Any, texts: Sequence[str]) -> TokenBatch:
    """Tokenize already-formatted texts (no BOS added) into a left-padded batch."""
    if isinstance(texts, str):
        texts = [texts]
    for t in texts:
        if not t:
            raise ValueError("Cannot tokenize an empty text.")
    rows = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return left_pad(rows, int(pad))


_LAST = re.compile(r"^last:(\d+)$")
_SLICE = re.compile(r"^(-?\d*):(-?\d*)$")


@dataclass(frozen=True)
class Positions:
    """Which tokens an intervention or objective acts on.

    ``all``: every real token, prompt and generated; ``prompt``: prompt tokens only;
    ``last:k``: the last k prompt tokens (e.g. a chat template's assistant header);
    ``i,j,…``: explicit prompt indices (negative counts from the prompt's end);
    ``a:b``: a slice of prompt indices. Parse the string form with :meth:`parse`.
    """

    kind: str = "all"
    k: int = 0
    indices: tuple[int, ...] = ()
    start: int | None = None
    stop: int | None = None

    @classmethod
    def parse(cls, spec: str | Positions) -> Positions:
        if isinstance(spec, Positions):
            return spec
        s = str(spec).strip()
        if s in ("all", "prompt"):
            return cls(kind=s)
        if m := _LAST.match(s):
            k = int(m.group(1))
            if k <= 0:
                raise ValueError(f"Positions {s!r}: last:k needs k ≥ 1.")
            return cls(kind="last", k=k)
        if m := _SLICE.match(s):
            start = int(m.group(1)) if m.group(1) else None
            stop = int(m.group(2)) if m.group(2) else None
            return cls(kind="slice", start=start, stop=stop)
        try:
            idx = tuple(int(x) for x in s.split(","))
        except ValueError:
            raise ValueError(
                f"Unknown positions spec {s!r}; valid: 'all', 'prompt', 'last:K', 'i,j,…' or 'a:b'."
            ) from None
        return cls(kind="indices", indices=idx)

    def __str__(self) -> str:
        if self.kind == "last":
            return f"last:{self.k}"
        if self.kind == "indices":
            return ",".join(map(str, self.indices))
        if self.kind == "slice":
            return f"{'' if self.start is None else self.start}:{'' if self.stop is None else self.stop}"
        return self.kind

    def resolve(self, n_tokens: int) -> list[int]:
        """Indices of the chosen tokens in a prompt of ``n_tokens`` tokens (errors if none or out of range)."""
        if self.kind in ("all", "prompt"):
            chosen = list(range(n_tokens))
        elif self.kind == "last":
            if self.k > n_tokens:
                raise ValueError(f"Positions last:{self.k} exceed the prompt's {n_tokens} tokens.")
            chosen = list(range(n_tokens - self.k, n_tokens))
        elif self.kind == "slice":
            chosen = list(range(n_tokens))[slice(self.start, self.stop)]
        else:
            bad = [i for i in self.indices if not -n_tokens <= i < n_tokens]
            if bad:
                raise ValueError(
                    f"Positions {bad} are outside a prompt of {n_tokens} tokens (valid: {-n_tokens}…{n_tokens - 1})."
                )
            chosen = sorted({i % n_tokens for i in self.indices})
        if not chosen:
            raise ValueError(f"Positions {str(self)!r} select no token of a {n_tokens}-token prompt.")
        return chosen

    def mask(
        self, token_index: Int[Tensor, "batch pos"], prompt_length: Int[Tensor, " batch"]
    ) -> Bool[Tensor, "batch pos"]:
        """Where to act in a forward pass whose columns hold tokens ``token_index`` (-1 = padding)."""
        real = token_index >= 0
        if self.kind == "all":
            return real
        pl = prompt_length.to(token_index.device)[:, None]
        in_prompt = real & (token_index < pl)
        if self.kind == "prompt":
            return in_prompt
        if self.kind == "last":
            return in_prompt & (token_index >= pl - self.k)
        chosen = torch.zeros_like(real)
        for row in range(token_index.shape[0]):
            n = int(prompt_length[row])
            for i in self.resolve(n):
                chosen[row] |= token_index[row] == i
        return chosen & in_prompt


def prepare_prompts(
    model: Any, prompts: Sequence[PromptLike], *, chat: bool = True, system: str | None = None
) -> list[str]:
    """Format prompts with the chat template (``chat=True``) or check raw texts."""
    if isinstance(prompts, str):
        prompts = [prompts]
    if not prompts:
        raise ValueError("No prompts given.")
    tok = chat_tokenizer(model)
    if chat:
        return [format_chat(tok, p, system=system) for p in prompts]
    texts = [str(p) for p in prompts]
    if any(not t for t in texts):
        raise ValueError("Prompt is empty; give non-empty text.")
    return texts
