"""The steering field → per-row steering, and the per-row hooks, without a server."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.serve.rows import Addition, RowSteering, batch_interventions
from melbo_tl.serve.spec import Limits, RequestError, parse_steering
from melbo_tl.steering import apply
from tests.helpers import HOOK_A, vector_run


@pytest.fixture(scope="module")
def store(tiny_model, tmp_path_factory):
    from melbo_tl.artifacts import Run, save_run
    from melbo_tl.export.gguf_control_vector import ControlVector, write_control_vector
    from melbo_tl.serve import VectorStore

    root = tmp_path_factory.mktemp("spec_runs")
    store = VectorStore(tiny_model)
    store.add_run(save_run(root / "plain", vector_run(tiny_model, n=2)), "plain")
    last = vector_run(tiny_model, n=1)
    store.add_run(save_run(root / "last", Run(last.tensors, {**last.meta, "steer_positions": "last:2"})), "last")
    odd = vector_run(tiny_model, n=1)
    store.add_run(save_run(root / "odd", Run(odd.tensors, {**odd.meta, "steer_positions": "0,1"})), "odd")
    cv = ControlVector({1: torch.ones(64), 3: -torch.ones(64)}, n_layers=4)
    store.add_gguf("two-layers", write_control_vector(root / "cv.gguf", cv))
    return store


def parse(spec, store):
    return parse_steering(spec, store, Limits(max_scale=10))


def test_unsteered_forms(store):
    for spec in (None, False, {"vectors": []}, []):
        assert parse(spec, store).empty


def test_easysteer_apply_maps_to_positions(store):
    data = [0.5] * 64
    for apply_, where in (
        ({"prompt": "all", "generation": "all"}, "all"),
        ({"prompt": "none", "generation": "all"}, "generation"),
        ({"prompt": "all", "generation": "none"}, "prompt"),
    ):
        (add,) = parse({"vectors": [{"data": data, "site": HOOK_A, "apply": apply_}]}, store).additions
        assert add.where == where
    with pytest.raises(RequestError) as err:
        parse({"data": data, "site": HOOK_A, "apply": {"prompt": "none", "generation": "none"}}, store)
    assert err.value.param == "steering.apply"


def test_scale_normalize_and_layers(store):
    v = torch.arange(64, dtype=torch.float32)
    adds = parse({"data": v.tolist(), "layers": [0, 2], "scale": -3, "normalize": True}, store).additions
    assert [a.site for a in adds] == ["blocks.0.hook_resid_post", "blocks.2.hook_resid_post"]
    assert all(torch.allclose(a.vector, -3 * v / v.norm()) for a in adds)


def test_run_entries_keep_their_own_positions(store):
    (add,) = parse({"run": "last", "index": 0}, store).additions
    assert add.where == "last:2" and add.site == HOOK_A
    (add,) = parse({"run": "last", "index": 0, "positions": "generation"}, store).additions
    assert add.where == "generation"
    with pytest.raises(RequestError) as err:
        parse({"run": "odd"}, store)
    assert err.value.param == "steering.positions" and "'0,1'" in err.value.message


def test_a_control_vector_name_adds_every_direction(store):
    adds = parse({"name": "two-layers", "scale": 2}, store).additions
    assert [(a.site, float(a.vector[0])) for a in adds] == [
        ("blocks.1.hook_resid_post", 2.0),
        ("blocks.3.hook_resid_post", -2.0),
    ]


def test_ablation_is_unit_and_may_be_restricted_to_layers(store):
    steering = parse({"vectors": [{"run": "plain", "index": 1, "algorithm": "ablate", "layers": [1, 2]}]}, store)
    (ab,) = steering.ablations
    assert ab.layers == (1, 2) and float(ab.direction.norm()) == pytest.approx(1.0)


def test_too_many_vectors(store):
    spec = {"vectors": [{"run": "plain"}] * 17}
    with pytest.raises(RequestError) as err:
        parse_steering(spec, store, Limits(max_vectors=16))
    assert err.value.param == "steering.vectors" and "at most 16" in err.value.message


def test_zero_rows_leave_activations_bit_identical(tiny_model):
    """Row 0 steered, row 1 not: row 1's logits equal an unsteered forward's exactly."""
    tokens = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    v = torch.randn(64) * 10
    steer = batch_interventions([RowSteering((Addition(HOOK_A, v),)), RowSteering()], 64)
    with torch.no_grad():
        plain = tiny_model(tokens)
        with apply(tiny_model, *steer):
            steered = tiny_model(tokens)
    assert torch.equal(steered[1], plain[1])
    assert not torch.allclose(steered[0], plain[0])


def test_same_site_vectors_of_a_row_are_summed(tiny_model):
    v, w = torch.randn(64), torch.randn(64)
    (add,) = batch_interventions([RowSteering((Addition(HOOK_A, v), Addition(HOOK_A, w))), RowSteering()], 64)
    assert torch.allclose(add.vectors[0], v + w) and torch.equal(add.vectors[1], torch.zeros(64))
