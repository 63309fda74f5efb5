"""Results that steer themselves: what every method's result has in common.

Every result of a method that makes steering vectors (MELBO, DCT, one-shot, adapters, the
refusal direction, a loaded run folder) has ``vectors`` ``[n, d_model]``, the ``site`` they act
at (and its ``hook`` name), ``intervention(i, scale=1.0)`` giving the intervention that applies
entry i, and a ``_repr_html_`` summary for notebooks:

>>> result = train_vectors(model, prompts, radius=4)
>>> with apply(model, result.intervention(0, scale=1.5)):
...     logits = model(tokens)

:class:`VectorResult` is the mixin the result dataclasses share; :class:`SteeringResult` is the
protocol code that consumes any of them can type against.
"""

from __future__ import annotations

import html
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from melbo_tl.positions import Positions
from melbo_tl.steering.interventions import AddVector, Intervention
from melbo_tl.steering.sites import Site


@runtime_checkable
class SteeringResult(Protocol):
    """What every steering result offers (see the module docstring)."""

    @property
    def vectors(self) -> Tensor: ...

    @property
    def site(self) -> Site: ...

    @property
    def hook(self) -> str: ...

    def intervention(self, index: int = 0, scale: float = 1.0) -> Intervention: ...

    def _repr_html_(self) -> str: ...


def check_entry(index: int, n: int, what: str = "vector", *, holder: str = "this result") -> int:
    """``index`` if it names one of ``n`` entries, else a ValueError naming the valid range.
    Negative indices are refused: ``-1`` is far more often a slip than a wish for the last one."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
        plural = "" if n == 1 else "s"
        valid = f"valid 0…{n - 1}" if n else "none to choose"
        raise ValueError(f"{what} index {index!r} is out of range: {holder} has {n} {what}{plural} ({valid}).")
    return index


class VectorResult:
    """Mixin for result dataclasses with ``vectors`` ``[n, d_model]`` acting at ``hook`` (a field or
    property of the result). Override :meth:`summary` to add rows to the HTML summary, and
    :meth:`intervention` where an entry is not an added vector."""

    vectors: Tensor
    hook: str
    unit = "vector"

    @property
    def site(self) -> Site:
        """Where the vectors act."""
        return Site.parse(self.hook)

    @property
    def steer_positions(self) -> Positions:
        """Which tokens an applied vector acts on (every token unless the method says otherwise)."""
        return Positions()

    def __len__(self) -> int:
        return int(self.vectors.shape[0])

    def intervention(self, index: int = 0, scale: float = 1.0) -> Intervention:
        """Entry ``index`` as an :class:`~melbo_tl.steering.interventions.AddVector` (× ``scale``)."""
        check_entry(index, len(self), self.unit)
        return AddVector(self.vectors[index], self.hook, self.steer_positions, scale)

    def summary(self) -> dict[str, Any]:
        """Rows of the HTML summary beyond the vectors and site (method settings and metrics)."""
        return {}

    def _repr_html_(self) -> str:
        norms = self.vectors.float().norm(dim=-1).tolist() if len(self) else []
        shown = ", ".join(f"{x:.3g}" for x in norms[:8]) + (" …" if len(norms) > 8 else "")
        try:
            where = f"{self.site.hook} ({self.site!r})"
        except ValueError as exc:  # vectors at several sites (a merged run folder)
            where = str(exc)
        rows = {
            f"{self.unit}s": f"{len(self)} × {tuple(self.vectors.shape[1:])}",
            "site": where,
            "norms": shown or "—",
            **self.summary(),
        }
        body = "".join(
            f"<tr><th style='text-align:left'>{html.escape(str(k))}</th><td style='text-align:left'>{html.escape(_text(v))}</td></tr>"
            for k, v in rows.items()
        )
        return f"<div><b>{html.escape(type(self).__name__)}</b><table>{body}</table></div>"


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | tuple) and value and isinstance(value[0], float):
        return ", ".join(f"{v:.3g}" for v in value[:8]) + (" …" if len(value) > 8 else "")
    return str(value)
