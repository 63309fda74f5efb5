"""Prompt sets: the shipped data, user files, Hugging Face datasets, splits and clear errors."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path

import pytest
import tomllib

from melbo_tl.evaluate.datasets import (
    BUILTIN_SETS,
    load_coding_task,
    load_items,
    load_prompts,
    train_test_split,
)

ROOT = Path(__file__).resolve().parents[2]


# --- shipped data ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, at_least, at_most", [("harmful", 100, 10_000), ("harmless", 100, 10_000), ("open_ended", 8, 16)]
)
def test_builtin_sets_are_well_formed(name, at_least, at_most):
    items = load_items(name)
    assert at_least <= len(items) <= at_most
    for item in items:
        assert set(item) == {"id", "category", "prompt"}
        assert item["prompt"].strip() == item["prompt"] and item["prompt"]
        assert "\n" not in item["prompt"]
    assert len({i["id"] for i in items}) == len(items)
    assert len({i["prompt"].lower() for i in items}) == len(items)
    assert load_prompts(name) == [i["prompt"] for i in items]


def test_builtin_sets_cover_the_categories():
    harmful = {i["category"] for i in load_items("harmful")}
    assert {"weapons", "cyber", "fraud", "drugs", "harassment", "self-harm", "misinformation", "privacy"} <= harmful
    harmless = {i["category"] for i in load_items("harmless")}
    assert {"coding", "cooking", "writing", "science", "travel"} <= harmless
    open_ended = load_items("open_ended")
    assert all(i["prompt"].endswith(" Be brief.") for i in open_ended)
    cats = {i["category"] for i in open_ended}
    assert {"wish", "boredom", "philosophy", "quick_money", "ruler", "dinner", "gender_roles", "relationship"} <= cats
    assert not set(load_prompts("harmful")) & set(load_prompts("harmless"))


def test_coding_task_differs_by_one_malicious_line():
    task = load_coding_task()
    assert {"id", "category", "prompt", "benign", "malicious", "malicious_line"} <= set(task)
    assert "http.server" in task["prompt"]
    benign, malicious = task["benign"].splitlines(), task["malicious"].splitlines()
    diff = [d for d in difflib.ndiff(benign, malicious) if d[:1] in "+-?"]
    assert diff == ["+ " + " " * 8 + task["malicious_line"]]
    assert "subprocess" in task["malicious_line"] and "cmd" in task["malicious_line"]
    for text in (task["benign"], task["malicious"]):
        code = re.fullmatch(r"```python\n(.*)```", text, re.S).group(1)
        compile(code, "<completion>", "exec")  # both are valid Python


def test_pyproject_ships_the_data_files():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    globs = project["tool"]["setuptools"]["package-data"]["melbo_tl"]
    shipped = {p.relative_to(ROOT / "melbo_tl").as_posix() for g in globs for p in (ROOT / "melbo_tl").glob(g)}
    assert {f"evaluate/data/{n}.json" for n in (*BUILTIN_SETS, "coding_task")} <= shipped
    assert any(d.startswith("datasets") for d in project["project"]["optional-dependencies"]["hf"])


# --- splits and limits ---------------------------------------------------------------------------


def test_train_test_split_is_deterministic_and_disjoint():
    items = [f"p{i}" for i in range(20)]
    train, test = train_test_split(items, 15, seed=3)
    assert (train, test) == train_test_split(items, 15, seed=3)
    assert len(train) == 15 and len(test) == 5 and sorted(train + test) == sorted(items)
    assert train == [p for p in items if p in train]  # original order kept
    assert train_test_split(items, 15, seed=4)[1] != test
    assert train_test_split(items, 0, seed=0) == ([], items)
    for bad in (-1, 21, 2.5, True):
        with pytest.raises(ValueError, match="n_train"):
            train_test_split(items, bad, seed=0)


def test_builtin_split_and_limit():
    full = load_prompts("harmful")
    train, test = load_prompts("harmful", split="train"), load_prompts("harmful", split="test")
    assert len(train) == int(len(full) * 0.75) and len(train) + len(test) == len(full)
    assert not set(train) & set(test)
    assert load_prompts("harmful", split="train") == train
    assert load_prompts("harmless", limit=5) == load_prompts("harmless")[:5]
    assert load_prompts("harmful", split="test", limit=2) == test[:2]
    with pytest.raises(ValueError, match="split must be one of train, test"):
        load_prompts("harmful", split="validation")
    for bad in (0, -3, 1.5):
        with pytest.raises(ValueError, match="limit must be a positive integer"):
            load_prompts("harmful", limit=bad)


# --- user files ----------------------------------------------------------------------------------


def write(path: Path, text: str) -> str:
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_json_files(tmp_path):
    assert load_prompts(write(tmp_path / "a.json", '["one", "two"]')) == ["one", "two"]
    objects = [{"prompt": "p"}, {"instruction": "i"}, {"goal": "g", "target": "x"}, {"text": "t"}]
    assert load_prompts(write(tmp_path / "b.json", json.dumps(objects))) == ["p", "i", "g", "t"]
    assert load_prompts(write(tmp_path / "c.json", '{"prompts": ["x", "y"]}')) == ["x", "y"]


def test_jsonl_csv_txt_files(tmp_path):
    assert load_prompts(write(tmp_path / "a.jsonl", '{"goal": "g1"}\n\n"s2"\n')) == ["g1", "s2"]
    csv_named = 'id,instruction,notes\n1,"Do a, then b",x\n2,Second,y\n'
    assert load_prompts(write(tmp_path / "b.csv", csv_named)) == ["Do a, then b", "Second"]
    csv_first = "question,answer\nWhat is 2+2?,4\nName a colour,red\n"
    assert load_prompts(write(tmp_path / "c.csv", csv_first)) == ["What is 2+2?", "Name a colour"]
    assert load_prompts(write(tmp_path / "d.txt", "first\n\n second line \n")) == ["first", " second line "]
    many = write(tmp_path / "e.json", json.dumps([f"q{i}" for i in range(8)]))
    train, test = load_prompts(many, split="train"), load_prompts(many, split="test")
    assert len(train) == 6 and len(test) == 2 and sorted(train + test) == sorted(f"q{i}" for i in range(8))


@pytest.mark.parametrize(
    "filename, content, message",
    [
        ("bad.json", '["a", ', r"bad\.json is not valid JSON"),
        ("bad.json", '{"a": 1}', r"bad\.json holds a JSON object"),
        ("bad.json", '"just a string"', r"bad\.json holds a JSON str"),
        (
            "bad.json",
            '[{"question": "q"}]',
            r"bad\.json item 0 has no field prompt/instruction/goal/text \(keys: question\)",
        ),
        ("bad.json", '["ok", 3]', r"bad\.json item 1 is int"),
        ("bad.json", '[{"prompt": 5}]', r"bad\.json item 0: field 'prompt' is int"),
        ("bad.json", '["ok", "  "]', r"bad\.json item 1 is an empty prompt"),
        ("bad.jsonl", '{"prompt": "a"}\n{oops\n', r"bad\.jsonl line 2 is not valid JSON"),
        ("bad.csv", "prompt,x\nfine,1\n,2\n", r"bad\.csv row 3 has no text in column 'prompt'"),
        ("bad.yaml", "- a\n", r"unsupported file type '\.yaml'"),
    ],
)
def test_malformed_files_name_the_file_and_the_problem(tmp_path, filename, content, message):
    with pytest.raises(ValueError, match=message):
        load_prompts(write(tmp_path / filename, content))


@pytest.mark.parametrize(
    "filename, content", [("e.json", "[]"), ("e.jsonl", "\n\n"), ("e.csv", "prompt\n"), ("e.txt", ""), ("e.csv", "")]
)
def test_empty_files_are_rejected(tmp_path, filename, content):
    with pytest.raises(ValueError, match=r"e\.(json|jsonl|csv|txt) contains no prompts"):
        load_prompts(write(tmp_path / filename, content))


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin\.txt is not UTF-8"):
        load_prompts(str(path))


def test_unknown_set_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="Unknown prompt set 'harmfull'. Built-in sets: harmful, harmless, open_ended"):
        load_prompts("harmfull")
    with pytest.raises(ValueError, match="Unknown prompt set"):
        load_items("nope")
    with pytest.raises(ValueError, match=r"Prompt file '.*missing\.json' does not exist"):
        load_prompts(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="is a directory"):
        load_prompts(str(tmp_path) + "/")


# --- Hugging Face datasets (a local dataset folder: the real load_dataset path, offline) ------------


@pytest.fixture
def hf_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf_cache"))
    folder = tmp_path / "toy_dataset"
    folder.mkdir()
    rows = [{"id": i, "goal": f"goal {i}", "behavior": f"behaviour {i}"} for i in range(5)]
    (folder / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "test.jsonl").write_text(json.dumps({"id": 9, "goal": "test goal", "behavior": "b"}) + "\n")
    return folder


def test_hf_dataset(hf_folder):
    assert load_prompts(f"hf:{hf_folder}") == [f"goal {i}" for i in range(5)]  # split train, column goal
    assert load_prompts(f"hf:{hf_folder}:train:behavior", limit=2) == ["behaviour 0", "behaviour 1"]
    assert load_prompts(f"hf:{hf_folder}:test") == ["test goal"]
    assert load_prompts(f"hf:{hf_folder}", split="test") == ["test goal"]


def test_hf_dataset_errors(hf_folder):
    with pytest.raises(ValueError, match="has no column 'prompt'; columns: id, goal, behavior"):
        load_prompts(f"hf:{hf_folder}:train:prompt")
    with pytest.raises(ValueError, match=r"Could not load Hugging Face dataset .* \(split 'validation'\)"):
        load_prompts(f"hf:{hf_folder}:validation")
    with pytest.raises(ValueError, match=r"hf:<dataset>\[:<split>\]\[:<column>\]"):
        load_prompts("hf:")
    with pytest.raises(ValueError, match=r"hf:<dataset>\[:<split>\]\[:<column>\]"):
        load_prompts("hf:a:b:c:d")
