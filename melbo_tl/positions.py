"""Position specs: which tokens an intervention or an objective acts on.

No torch at import time: configs and the command line parse specs without loading it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jaxtyping import Bool, Int
    from torch import Tensor

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
        chosen = real & False
        for row in range(token_index.shape[0]):
            n = int(prompt_length[row])
            for i in self.resolve(n):
                chosen[row] |= token_index[row] == i
        return chosen & in_prompt
