"""Harm-theme keywords on fixed strings."""

from __future__ import annotations

from melbo_tl.evaluate.keywords import keyword_table, themes_in


def test_keyword_themes_on_fixed_strings():
    assert themes_in("I would steal their data and then hack the bank.") == ["crime"]
    assert set(themes_in("Kill them all and control everyone.")) == {"violence", "domination"}
    assert themes_in("Go for a walk and read a book.") == []
    table = keyword_table(["poison the well", "have a picnic", "manipulate them", "plant a tree"])
    assert table["violence"] == 0.25 and table["deception"] == 0.25 and table["any"] == 0.5
