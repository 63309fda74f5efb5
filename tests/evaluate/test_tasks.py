"""Task ranking: file validation, extraction and exact match, ranking order, resume on a tiny run."""

from __future__ import annotations

import json

import pytest

from melbo_tl.artifacts import read_jsonl
from melbo_tl.evaluate import tasks as tasks_module
from melbo_tl.evaluate.stats import rate_with_ci
from melbo_tl.evaluate.task_items import TaskItem, extract_answer, is_correct, load_task, parse_item
from melbo_tl.evaluate.tasks import UNSTEERED, TaskConfig, rank_by_task, score_rows, task_folder
from melbo_tl.optimize.melbo import MelboConfig
from melbo_tl.runs import generate_conditions, intervention_from_run
from melbo_tl.training import train_to_folder

NUMBER = r"-?\d+"


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


def test_load_task_reads_strings_numbers_and_message_lists(tmp_path):
    shots = [
        {"role": "user", "content": "2*3?"},
        {"role": "assistant", "content": "6"},
        {"role": "user", "content": "4*5?"},
    ]
    path = write_lines(
        tmp_path / "t.jsonl",
        [
            json.dumps({"prompt": "1+1?", "answer": 2}),
            "",
            json.dumps({"prompt": shots, "answer": "20", "extract": "(\\d+)"}),
        ],
    )
    items = load_task(path)
    assert items == [TaskItem("1+1?", "2"), TaskItem(shots, "20", "(\\d+)")]


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"prompt": "x"}', "line 2: missing field 'answer'"),
        ('{"answer": 3}', "line 2: missing field 'prompt'"),
        ('{"prompt": "x", "answer": 3', "line 2: not valid JSON"),
        ('{"prompt": "", "answer": 3}', "line 2: field 'prompt' is empty"),
        ('{"prompt": "x", "answer": [3]}', "line 2: field 'answer' must be a string or a number"),
        ('{"prompt": "x", "answer": 3, "extract": "("}', "line 2: extract is not a valid regular expression"),
        ('{"prompt": "x", "answer": 3, "hint": 1}', "line 2: unknown field(s) hint"),
        ('{"prompt": [{"role": "bot", "content": "x"}], "answer": 3}', "line 2: prompt message 0 must be"),
        ('{"prompt": [{"role": "assistant", "content": "x"}], "answer": 3}', "last prompt message must have role"),
        ("[1, 2]", "line 2: expected a JSON object"),
    ],
)
def test_bad_rows_name_the_line_and_field(tmp_path, line, message):
    path = write_lines(tmp_path / "bad.jsonl", ['{"prompt": "ok", "answer": 1}', line])
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        load_task(path)


def test_missing_or_empty_task_file_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_task(tmp_path / "nope.jsonl")
    with pytest.raises(ValueError, match="holds no items"):
        load_task(write_lines(tmp_path / "empty.jsonl", [""]))


def test_extraction_takes_the_last_match_and_group_one():
    text = "a=3+4=7, b=2+1=3, a*b=7*3=21. Answer: 21"
    assert extract_answer(text, NUMBER) == "21"
    assert extract_answer("Answer: 21 (check: 7*3)", r"Answer:\s*(-?\d+)") == "21"
    assert extract_answer("no digits", NUMBER) is None
    assert extract_answer("  hello \n", None) == "hello"


def test_exact_match_after_extraction():
    item = TaskItem("q", "1081")
    assert is_correct("1081", item)
    assert is_correct(" 1,081\n", item)  # thousands separators and whitespace do not count
    assert not is_correct("1081.", item)  # whole completion: exact
    assert is_correct("23*47 = 1081.", item, NUMBER)
    assert not is_correct("1081 is wrong, it is 1082", item, NUMBER)  # the last number counts
    own = TaskItem("q", "7", extract=r"x=(\d)")
    assert is_correct("x=7 y=9", own, NUMBER)  # the item's regex wins over the default
    assert not is_correct("x=7 y=9", TaskItem("q", "7"), NUMBER)


def test_score_rows_ranks_by_accuracy_with_wilson_intervals():
    items = [TaskItem(f"q{i}", str(i)) for i in range(4)]
    answers = {UNSTEERED: ["0", "x", "x", "x"], 0: ["x"] * 4, 1: ["0", "1", "2", "x"], 2: ["0", "x", "x", "x"]}
    rows = [
        {"vector": v, "item": i, "completion": text, "n_tokens": 2 + i, "finished": i < 2}
        for v, texts in answers.items()
        for i, text in enumerate(texts)
    ]
    scores = score_rows(rows, items, None)
    assert [s.vector for s in scores] == [1, UNSTEERED, 2, 0]  # ties: baseline before vectors, then index
    assert [s.rank for s in scores] == [1, 2, 3, 4]
    best = scores[0]
    ci = rate_with_ci(3, 4)
    assert (best.correct, best.n, best.accuracy, best.low, best.high) == (3, 4, 0.75, ci.low, ci.high)
    assert best.mean_tokens == 3.5 and best.finished == 0.5
    assert sum(r["correct"] for r in rows) == 3 + 1 + 1


def test_task_config_rejects_bad_settings():
    with pytest.raises(ValueError, match="max_new_tokens"):
        TaskConfig(max_new_tokens=0)
    with pytest.raises(ValueError, match="--extract: extract is not a valid regular expression"):
        TaskConfig(extract="(")
    with pytest.raises(ValueError, match="indices is empty"):
        TaskConfig(indices=[])


@pytest.fixture(scope="module")
def run_dir(tiny_model, tmp_path_factory):
    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=5, mode="independent")
    return train_to_folder(
        tiny_model, "melbo", ["Hello there"], cfg, tmp_path_factory.mktemp("runs") / "r", progress=False
    )


QUESTIONS = ["What is 2+2?", "Name a colour.", "Say hi.", "Count to three."]


def made_task(tiny_model, run_dir, tmp_path, *, target: int):
    """A task whose answers are, by construction, vector ``target``'s greedy completions."""
    from melbo_tl.artifacts import load_run

    steer = intervention_from_run(load_run(run_dir, tiny_model), target)
    texts = [c.text for c in generate_conditions(tiny_model, QUESTIONS, [steer], max_new_tokens=3)]
    assert all(t.strip() for t in texts), texts
    lines = [json.dumps({"prompt": q, "answer": t}) for q, t in zip(QUESTIONS, texts)]
    return write_lines(tmp_path / "made.jsonl", lines), texts


def test_rank_by_task_puts_the_constructed_vector_first_and_writes_files(tiny_model, run_dir, tmp_path):
    path, _ = made_task(tiny_model, run_dir, tmp_path, target=3)
    result = rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, vectors_per_chunk=2, progress=False)
    assert result.scores[0].vector == 3 and result.scores[0].accuracy == 1.0
    assert result.baseline.vector == UNSTEERED and result.baseline.n == len(QUESTIONS)
    assert sorted(s.vector for s in result.scores) == [UNSTEERED, 0, 1, 2, 3, 4]
    folder = task_folder(run_dir, "made")
    assert result.folder == folder
    saved = read_jsonl(folder / "ranking.jsonl")
    assert [r["vector"] for r in saved] == [s.vector for s in result.scores]
    assert (folder / "ranking.csv").read_text().splitlines()[0].startswith("vector,rank,correct,n,accuracy,low,high")
    table = (folder / "ranking.md").read_text()
    assert "| 1 | 3 | 4/4 | 1.000 |" in table and "unsteered" in table
    assert len(read_jsonl(folder / "completions.jsonl")) == 6 * len(QUESTIONS)


def test_interrupted_ranking_does_not_redo_finished_vectors(tiny_model, run_dir, tmp_path, monkeypatch):
    path, _ = made_task(tiny_model, run_dir, tmp_path, target=1)
    first = rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, vectors_per_chunk=2, progress=False)
    completions = task_folder(run_dir, "made") / "completions.jsonl"
    rows = read_jsonl(completions)
    kept = [r for r in rows if r["vector"] in (UNSTEERED, 0, 1)]  # as if stopped after two chunks
    completions.write_text("".join(json.dumps(r) + "\n" for r in kept))

    asked: list[int] = []
    real = tasks_module.generate_conditions

    def counting(model, prompts, conditions, **options):
        asked.append(len(conditions))
        return real(model, prompts, conditions, **options)

    monkeypatch.setattr(tasks_module, "generate_conditions", counting)
    again = rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, vectors_per_chunk=2, progress=False)
    assert asked == [2, 1]  # vectors 2, 3 then 4; nothing already finished
    assert [s.to_dict() for s in again.scores] == [s.to_dict() for s in first.scores]

    asked.clear()
    rescored = rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, extract=r"\S+", progress=False)
    assert asked == []  # a new extraction rule rescores the saved completions
    assert len(rescored.scores) == 6

    rank_by_task(tiny_model, run_dir, path, max_new_tokens=2, progress=False)  # other settings: start over
    assert asked == [4, 2]
    assert {r["n_tokens"] for r in read_jsonl(completions)} <= {0, 1, 2}


def test_rank_by_task_can_rank_chosen_vectors(tiny_model, run_dir, tmp_path):
    path, _ = made_task(tiny_model, run_dir, tmp_path, target=2)
    result = rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, indices=[2, 4], progress=False)
    assert sorted(s.vector for s in result.scores) == [UNSTEERED, 2, 4]
    for bad in (9, -1):  # a negative index is a slip, not "the last vector"
        with pytest.raises(ValueError, match="out of range"):
            rank_by_task(tiny_model, run_dir, path, max_new_tokens=3, indices=[bad], progress=False)


def test_parse_item_accepts_items_given_in_memory():
    assert parse_item({"prompt": "q", "answer": 1.5}) == TaskItem("q", "1.5")
