"""Refusal-direction candidates and a selection on the tiny model, shared by the module's tests."""

from __future__ import annotations

import math

import pytest

from melbo_tl.directions import diff_in_means, select_direction
from tests.helpers import HARMFUL, HARMLESS

LOOSE = dict(kl_threshold=math.inf, induce_threshold=-math.inf)


@pytest.fixture(scope="module")
def candidates(tiny_model):
    return diff_in_means(tiny_model, HARMFUL[:4], HARMLESS[:4], batch_size=3, progress=False)


@pytest.fixture(scope="module")
def selection(tiny_model, candidates):
    return select_direction(
        tiny_model,
        candidates,
        HARMFUL[4:],
        HARMLESS[4:],
        max_layer_frac=0.75,
        positions=[-2, -1],
        progress=False,
        **LOOSE,
    )
