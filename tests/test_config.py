"""Configs: validated on construction, exact dict round trips (through JSON), errors that name
the bad value and what is valid."""

from __future__ import annotations

import json

import pytest

from melbo_tl.directions.method import RefusalDirectionConfig
from melbo_tl.optimize.adapters import AdapterConfig
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.optimize.oneshot import OneShotConfig
from melbo_tl.steering.sites import Site

CONFIGS = [
    MelboConfig(
        radius=4, source_layer=7, target_layer=16, positions="last:2", mode="independent", diversity_penalty=0.5
    ),
    AdapterConfig(radius=0.35, rank=16, n_adapters=2),
    OneShotConfig(layer=10, promote=("Sure",), suppress=("Sorry",), target_loss=2.0, satisfice=True),
    RefusalDirectionConfig(layers=(6, 8), positions=(-5, -1), kl_threshold=0.3),
]


@pytest.mark.parametrize("cfg", CONFIGS, ids=lambda c: type(c).__name__)
def test_dict_round_trip_through_json(cfg):
    data = json.loads(json.dumps(cfg.to_dict()))
    again = type(cfg).from_dict(data)
    assert again == cfg
    assert again.to_dict() == cfg.to_dict()


def test_values_are_normalized():
    cfg = MelboConfig(radius=4, positions=" last:2 ")
    assert cfg.radius == 4.0 and isinstance(cfg.radius, float) and cfg.positions == "last:2"
    assert OneShotConfig(layer=1, promote=["a", "b"]).promote == ("a", "b")


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: MelboConfig(radius=0), "radius R must be > 0, got 0.0"),
        (lambda: MelboConfig(radius=1, n_vectors=0), "n_vectors must be ≥ 1, got 0"),
        (lambda: MelboConfig(radius=1, positions="last:x"), "Unknown positions spec 'last:x'"),
        (lambda: MelboConfig(radius=1, diversity_penalty=1.0), "use mode=.independent."),
        (lambda: AdapterConfig(radius=1, rank=0), "rank must be ≥ 1, got 0"),
        (lambda: OneShotConfig(layer=1, satisfice=True), "give target_loss"),
        (lambda: OneShotConfig(layer=1, promote=("",)), "is empty"),
        (lambda: RefusalDirectionConfig(positions=(1,)), "must be negative offsets"),
        (lambda: RefusalDirectionConfig(split="dev"), "split must be train, test or all, got 'dev'"),
    ],
)
def test_bad_values_name_what_is_valid(build, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build()


def test_unknown_settings_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"MelboConfig has no setting\(s\) \['raduis'\]; valid: \[.*'radius'"):
        MelboConfig.from_dict({"raduis": 4})
    with pytest.raises(ValueError, match=r"no setting\(s\) \['step'\]"):
        MelboConfig(radius=1).replace(step=3)
    with pytest.raises(ValueError, match=r"no setting\(s\) \['rank'\]"):
        MelboConfig.build(None, radius=1, rank=4)


def test_model_dependent_defaults_and_checks(tiny_model):
    with pytest.raises(ValueError, match="has 4 blocks: the reference default sites"):
        MelboConfig(radius=1).for_model(tiny_model)  # the output of block 7 and the input of block n − 8
    with pytest.raises(ValueError, match="has 4 blocks"):
        MelboConfig(radius=1, target=3).check_model(tiny_model)
    with pytest.raises(ValueError, match="source blocks.3.hook_resid_post is after the last block"):
        MelboConfig(radius=1, source="resid_post.3", target=5).check_model(tiny_model)
    assert MelboConfig(radius=1, source=0, target=3).for_model(tiny_model).source == Site(0)
    assert RefusalDirectionConfig().for_model(tiny_model).layers == (0, 1, 2, 3)  # ℓ < 0.8 · 4
    with pytest.raises(ValueError, match="rank must be in 1…128"):
        AdapterConfig(radius=1, rank=500, source_layer=0, target_layer=2).check_model(tiny_model)


def test_differences_ignore_resumable_fields():
    a, b = MelboConfig(radius=1, n_vectors=2), MelboConfig(radius=1, n_vectors=5, seed=1)
    assert a.differences(b, ignore=MelboConfig.RESUMABLE) == {"seed": (0, 1)}


def test_sites_round_trip_as_hook_names_and_old_names_keep_their_meaning():
    cfg = MelboConfig(radius=4, source=Site(7, "resid_post"), target=16)
    assert (
        cfg.to_dict()["source"] == "blocks.7.hook_resid_post" and cfg.to_dict()["target"] == "blocks.16.hook_resid_pre"
    )
    assert MelboConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    old = MelboConfig(radius=4, source_layer=7, target_layer=16)  # the output of block 7, the input of block 16
    assert old == cfg and old.source == Site(8) and old.source.hook == "blocks.7.hook_resid_post"
    assert MelboConfig.from_dict({"radius": 4, "source_layer": 7, "target_layer": 16}) == cfg
    assert MelboConfig(radius=4).replace(source_layer=7).source == Site(7, "resid_post")
    assert OneShotConfig(layer=10, promote=("Sure",)) == OneShotConfig(
        site="blocks.10.hook_resid_pre", promote=("Sure",)
    )
    assert OneShotConfig(site=Site(9, "resid_post"), promote=("a",)).hook == "blocks.9.hook_resid_post"
    with pytest.raises(ValueError, match="not both"):
        MelboConfig(radius=4, source=3, source_layer=7)
    with pytest.raises(ValueError, match="target blocks.2.hook_resid_pre must come after source"):
        MelboConfig(radius=4, source=Site(2, "resid_post"), target=2)
    with pytest.raises(ValueError, match="not a residual stream site"):
        OneShotConfig(site="attn_out.3", promote=("a",))
    assert RefusalDirectionConfig(layers=(6, "resid_post.7")).layers == (6, 8)


def test_two_spellings_of_one_site_are_no_difference():
    a = MelboConfig(radius=4, source="resid_post.7", target=16)
    b = MelboConfig(radius=4, source=8, target="blocks.15.hook_resid_post")
    assert a.differences(b) == {} and a == b
    assert MelboConfig(radius=4, source=7, target=16).differences(a) == {
        "source": ("blocks.7.hook_resid_pre", "blocks.7.hook_resid_post")
    }
