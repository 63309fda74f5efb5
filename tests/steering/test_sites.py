"""Hook sites: names checked against the model, with errors naming what exists."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.steering import (
    AddVector,
    Site,
    apply,
    check_hook,
    check_layer,
    resid_hook,
)


def test_unknown_hook_name(tiny_model):
    with pytest.raises(ValueError, match="blocks.1.hook_resid_typo"):
        AddVector(torch.randn(64), "blocks.1.hook_resid_typo").hooks(tiny_model)
    with pytest.raises(ValueError, match="Unknown hook 'not_a_hook'"):
        check_hook(tiny_model, "not_a_hook")
    with pytest.raises(ValueError, match="non-empty"):
        check_hook(tiny_model, "")


def test_layer_out_of_range(tiny_model):
    with pytest.raises(ValueError, match=r"block 99.*4 blocks \(valid 0…3\)"):
        AddVector(torch.randn(64), "blocks.99.hook_resid_pre").hooks(tiny_model)
    with pytest.raises(ValueError, match="valid layers are 0…3"):
        check_layer(tiny_model, 4)
    with pytest.raises(ValueError, match="out of range"):
        check_layer(tiny_model, -1)
    assert check_layer(tiny_model, 4, allow_end=True) == 4


def test_resid_hook_names(tiny_model):
    assert resid_hook(3) == "blocks.3.hook_resid_pre"
    assert resid_hook(0, "post") == "blocks.0.hook_resid_post"
    for layer in range(4):
        for kind in ("pre", "mid", "post"):
            assert check_hook(tiny_model, resid_hook(layer, kind)) == resid_hook(layer, kind)
    with pytest.raises(ValueError, match="not one of"):
        resid_hook(0, "final")


def test_legacy_hook_name_resolves_to_canonical_hook_point(tiny_model):
    legacy = "blocks.1.hook_resid_pre"
    assert legacy in tiny_model.hook_dict
    seen: list[str] = []

    def record(acts, hook):
        seen.append(hook.name)
        return acts

    with torch.no_grad(), tiny_model.hooks(fwd_hooks=[(legacy, record)]):
        tiny_model(torch.tensor([[14, 2054, 377, 9001, 42, 7, 1500, 33]]))
    assert len(seen) == 1
    canonical = seen[0]
    # TL 4 calls the block input 'blocks.1.hook_in'; the legacy name is an alias of it.
    assert canonical.startswith("blocks.1.")
    assert tiny_model.hook_dict[canonical] is tiny_model.hook_dict[legacy]


def test_one_site_has_one_meaning_whatever_it_is_called():
    post7 = Site(7, "resid_post")
    assert post7 == Site(8) == Site.parse(8) == Site.parse("8") == Site.parse("resid_pre.8")
    assert post7 == Site.parse("blocks.7.hook_resid_post") == Site.parse("resid_post.7")
    assert len({post7, Site(8), Site(8, "resid_pre")}) == 1
    assert post7.hook == "blocks.7.hook_resid_post" and Site(8).hook == "blocks.8.hook_resid_pre"
    assert post7 != Site(7) and Site(7, "attn_out") != Site(7) and Site(7, "mlp_out").canonical() == Site(7, "mlp_out")
    assert Site(8).as_resid_post() == post7 and Site(8).as_resid_post().hook == "blocks.7.hook_resid_post"
    assert Site.parse("blocks.3.mlp.hook_post") == Site(3, "mlp.hook_post")
    assert Site.parse("blocks.3.mlp.hook_post").hook == "blocks.3.mlp.hook_post"
    assert sorted([Site(3, "mlp_out"), Site(2, "resid_post"), Site(3)], key=Site.sort_key) == [
        Site(3),
        Site(3),
        Site(3, "mlp_out"),
    ]
    assert [Site.parse(h).hook for h in ("resid_mid.2", "attn_out.2", "mlp_out.2")] == [
        "blocks.2.hook_resid_mid",
        "blocks.2.hook_attn_out",
        "blocks.2.hook_mlp_out",
    ]


@pytest.mark.parametrize("bad", ["", "blocks.x.hook_resid_pre", "resid.3", "blocks.2.hook_resid_typo", -1, 2.5, None])
def test_bad_sites_name_what_is_valid(bad):
    with pytest.raises(ValueError, match="resid_post.7|block index"):
        Site.parse(bad)


def test_sites_are_checked_against_the_model(tiny_model):
    assert Site(3, "resid_post").check(tiny_model) == Site(4)
    with pytest.raises(ValueError, match=r"names block 4, but this model has 4 blocks \(valid 0…3\)"):
        Site(4).check(tiny_model)


def test_a_vector_steers_the_same_whichever_name_its_site_has(tiny_model):
    tokens = torch.tensor([[14, 2054, 377, 9001, 42, 7]])
    v = torch.randn(64) * 3
    runs = []
    for site in (Site(1, "resid_post"), Site(2), "blocks.1.hook_resid_post", 2):
        steer = AddVector(v, site)
        assert steer.site == Site(2)
        with torch.no_grad(), apply(tiny_model, steer):
            runs.append(tiny_model(tokens))
    for other in runs[1:]:
        torch.testing.assert_close(other, runs[0])
    with torch.no_grad(), apply(tiny_model, AddVector(v, Site(1))):
        assert not torch.allclose(tiny_model(tokens), runs[0])
