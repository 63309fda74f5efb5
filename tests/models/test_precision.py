"""dtype="auto": bfloat16 only where the hardware computes it natively; the override; bad names."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.models import precision
from melbo_tl.models.precision import parse_dtype, resolve_dtype

CPU = torch.device("cpu")


@pytest.fixture
def no_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(precision.DTYPE_ENV, raising=False)


def with_flags(monkeypatch: pytest.MonkeyPatch, flags: set[str]) -> None:
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset(flags))


def test_auto_is_bf16_on_a_cpu_with_native_bf16(monkeypatch: pytest.MonkeyPatch, no_override: None) -> None:
    with_flags(monkeypatch, {"avx2", "avx512f", "avx512_bf16"})
    assert resolve_dtype("auto", CPU) == torch.bfloat16
    with_flags(monkeypatch, {"amx_bf16"})
    assert resolve_dtype("auto", CPU) == torch.bfloat16


def test_auto_is_float32_without_native_bf16(monkeypatch: pytest.MonkeyPatch, no_override: None) -> None:
    with_flags(monkeypatch, {"avx2", "avx512f"})
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("auto", torch.device("meta")) == torch.float32


def test_env_overrides_auto_but_not_an_explicit_dtype(monkeypatch: pytest.MonkeyPatch) -> None:
    with_flags(monkeypatch, {"avx512_bf16"})
    monkeypatch.setenv(precision.DTYPE_ENV, "fp32")
    assert resolve_dtype("auto", CPU) == torch.float32
    assert resolve_dtype("bf16", CPU) == torch.bfloat16
    assert resolve_dtype(torch.float16, CPU) == torch.float16
    monkeypatch.setenv(precision.DTYPE_ENV, "auto")
    with pytest.raises(ValueError, match="MELBO_TL_DTYPE='auto' must name a dtype"):
        resolve_dtype("auto", CPU)


def test_bad_dtypes_are_named(no_override: None) -> None:
    with pytest.raises(ValueError, match="'float8' is not one of auto, float32, bfloat16, float16"):
        parse_dtype("float8")
    with pytest.raises(ValueError, match=r"torch\.int8 is not supported"):
        parse_dtype(torch.int8)


def test_the_suite_resolves_auto_to_float32(tiny_model) -> None:
    """conftest sets MELBO_TL_DTYPE=float32 unless the caller chose otherwise."""
    import os

    assert os.environ[precision.DTYPE_ENV] in ("float32", "bfloat16", "float16")
    assert str(next(tiny_model.parameters()).dtype) == f"torch.{os.environ[precision.DTYPE_ENV]}"
