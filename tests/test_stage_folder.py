"""Results folders tied to their settings: same settings resume, other settings start afresh."""

from __future__ import annotations

import json

from melbo_tl.stage_folder import SETTINGS_FILE, StageFolder, csv_text


def test_same_settings_keep_finished_files_and_other_settings_remove_them(tmp_path):
    folder = StageFolder(tmp_path / "stage", {"n": 1, "layers": (1, 2)})
    folder.write_json("table.json", {"rows": [1]})
    folder.write_jsonl("rows.jsonl", [{"a": 1}, {"a": 2}])
    assert folder.fresh and folder.has("table.json")
    again = StageFolder(tmp_path / "stage", {"n": 1, "layers": [1, 2]})  # the same settings, as JSON reads them
    assert not again.fresh and again.has("table.json") and again.read_jsonl("rows.jsonl") == [{"a": 1}, {"a": 2}]
    other = StageFolder(tmp_path / "stage", {"n": 2, "layers": [1, 2]})
    assert other.fresh and not other.has("table.json") and not other.has("rows.jsonl")
    assert json.loads((tmp_path / "stage" / SETTINGS_FILE).read_text()) == {"n": 2, "layers": [1, 2]}


def test_only_the_stale_patterns_are_removed(tmp_path):
    folder = StageFolder(tmp_path, {"v": 1}, stale=("*.json", "figures/*.html"))
    (tmp_path / "figures").mkdir()
    folder.write_text("figures/plot.html", "<p>")
    folder.write_text("figures/plotly.min.js", "js")
    folder.write_json("a.json", {})
    StageFolder(tmp_path, {"v": 2}, stale=("*.json", "figures/*.html"))
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file()) == [
        "figures/plotly.min.js",
        SETTINGS_FILE,
    ]


def test_csv_has_a_header_and_the_chosen_columns():
    rows = [{"a": 1, "b": "x,y", "c": None}, {"a": 2, "b": "z", "c": 3}]
    assert csv_text(rows) == 'a,b,c\n1,"x,y",\n2,z,3\n'
    assert csv_text(rows, ["b", "a"]) == 'b,a\n"x,y",1\nz,2\n'
