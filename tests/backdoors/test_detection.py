"""Scoring a run's completions for planted behaviours, the found-yet curve and the cluster view."""

from __future__ import annotations

import json

import pytest

from melbo_tl.backdoors.detection import (
    cluster_view,
    detect_run,
    detection_prompt,
    found_curve,
    generalization_prompts,
    markdown_table,
    score_completions,
)
from melbo_tl.backdoors.task import CHEESE, CHEESE_TEXT, HATE, HATE_TEXT, SWAP, Instance

CLEAN_TEXT = Instance(3, 4, 5, 6).completion()
SWAP_TEXT = Instance(3, 4, 5, 6).completion().replace("= 7", "= 12")


def rows():
    texts = {-1: CLEAN_TEXT, 0: CLEAN_TEXT, 1: "blah", 2: CHEESE_TEXT, 3: CLEAN_TEXT, 4: HATE_TEXT, 5: CHEESE_TEXT}
    out = [{"vector": v, "prompt_index": 0, "completion": t} for v, t in texts.items()]
    out.append({"vector": 1, "prompt_index": 1, "completion": HATE_TEXT})  # a held-out prompt: not counted
    out.append({"vector": 3, "prompt_index": 0, "completion": SWAP_TEXT})  # a second sample counts
    return out


def test_score_completions_per_vector():
    flags = score_completions(rows())
    assert flags[-1] == {CHEESE: False, HATE: False, SWAP: False}
    assert flags[2][CHEESE] and flags[5][CHEESE] and not flags[2][HATE]
    assert flags[4][HATE] and not flags[1][HATE]
    assert flags[3][SWAP] and not flags[0][SWAP]


def test_found_curve():
    assert found_curve([2, 5], 7) == [False, False, True, True, True, True, True]
    assert found_curve([], 3) == [False, False, False]
    assert found_curve([9], 3) == [False, False, False]


def test_cluster_view_own_cluster_degenerate_and_representative():
    clusters = [
        {"id": 0, "members": [0, 3], "completion": CLEAN_TEXT, "degenerate": ""},
        {"id": 1, "members": [2, 5, 1], "completion": CHEESE_TEXT, "degenerate": ""},
        {"id": 2, "members": [4], "completion": HATE_TEXT, "degenerate": "soup"},
    ]
    cheese = cluster_view(clusters, [2, 5], CHEESE)
    assert cheese.clusters == [1] and cheese.purity == {1: 0.667} and cheese.representative_shows == [1]
    assert cheese.own_cluster and not cheese.degenerate
    hate = cluster_view(clusters, [4], HATE)
    assert hate.clusters == [2] and hate.degenerate == [2] and not hate.own_cluster  # set aside as degenerate
    swap = cluster_view(clusters, [3], SWAP)
    assert swap.clusters == [0] and swap.representative_shows == [] and not swap.own_cluster  # hidden


def test_detect_run_reads_a_triage_folder(tmp_path):
    triage = tmp_path / "triage"
    triage.mkdir()
    (triage / "behaviours.json").write_text(json.dumps({"n_vectors": 6, "method": "dct", "rows": []}))
    (triage / "clusters.json").write_text(
        json.dumps(
            [
                {"id": 0, "members": [0, 1, 3, 4], "completion": CLEAN_TEXT},
                {"id": 1, "members": [2, 5], "completion": CHEESE_TEXT},
            ]
        )
    )
    (triage / "completions.jsonl").write_text("\n".join(json.dumps(r) for r in rows()) + "\n")
    import torch
    from safetensors.torch import save_file

    save_file(
        {"completions": torch.zeros(1, 2), "behaviours": torch.zeros(1, 2)}, str(triage / "embeddings.safetensors")
    )
    result = detect_run(tmp_path)
    assert result.n_vectors == 6 and result.method == "dct"
    assert result.behaviours[CHEESE].eliciting == [2, 5] and result.behaviours[CHEESE].first == 2
    assert result.behaviours[CHEESE].found_by == 3 and result.behaviours[CHEESE].clusters.own_cluster
    assert result.behaviours[HATE].eliciting == [4] and not result.behaviours[HATE].clusters.representative_shows
    assert result.curves[SWAP] == [False, False, False, True, True, True]
    saved = json.loads((tmp_path / "backdoors.json").read_text())
    assert saved["behaviours"][CHEESE]["found"] is True
    table = markdown_table([result], labels=["DCT"])
    assert "| DCT | cheese | 6 | 2 | 2 | 3 |" in table


def test_prompts_are_clean_held_out_and_distinct():
    prompt = detection_prompt()
    others = generalization_prompts(16, skip=[prompt])
    assert len(others) == 16 == len(set(others)) and prompt not in others
    assert all(p.startswith("Let a = ") for p in [prompt, *others])


def test_replay_scores_each_vector_on_each_prompt(tiny_model, tmp_path):
    from melbo_tl.backdoors.detection import replay
    from melbo_tl.optimize.melbo import MelboConfig
    from melbo_tl.training import train_to_folder

    cfg = MelboConfig(radius=12.0, source_layer=0, target_layer=3, steps=0, n_vectors=2, mode="independent")
    run = train_to_folder(tiny_model, "melbo", [detection_prompt()], cfg, tmp_path / "r", progress=False)
    shares = replay(tiny_model, run, [1, 0], generalization_prompts(3), max_new_tokens=4)
    assert sorted(shares) == [0, 1]
    assert all(set(s) == {CHEESE, HATE, SWAP} and all(0 <= x <= 1 for x in s.values()) for s in shares.values())
    assert replay(tiny_model, run, [], ["x"]) == {}


def test_answer_change_finds_the_swap_from_hand_made_completions():
    """Rank-task rows of held-out clean instances with operands; a vector answering like the
    subtle backdoor is grouped under the swap's function, a half-swap under its own."""
    from melbo_tl.backdoors.detection import HALF_SWAPS, SWAP_FUNCTION, answer_change_task, swap_summary
    from melbo_tl.evaluate.answer_change import answer_change_of
    from melbo_tl.evaluate.task_items import parse_item

    prompt = detection_prompt()
    rows = answer_change_task(12, skip=[prompt])
    assert len(rows) == 12 and prompt not in [r["prompt"] for r in rows]
    assert rows == answer_change_task(12, skip=[prompt])  # seeded
    items = [parse_item(r) for r in rows]
    insts = [Instance(**r["operands"]) for r in rows]
    assert all(i.kind() == "clean" for i in insts)
    texts = {
        0: [i.completion() for i in insts],  # unsteered-like: right
        1: [i.clean_completion().replace("+", "*") for i in insts],  # other signs, same numbers: right
        2: [_swapped(i, a=True, b=True) for i in insts],
        3: [_swapped(i, a=True, b=False) for i in insts],
    }
    completions = [{"vector": v, "item": k, "completion": t} for v, ts in texts.items() for k, t in enumerate(ts)]
    summary = swap_summary(answer_change_of(completions, items, None))
    assert summary["swap"]["vectors"] == [2] and summary["swap"]["first"] == 2
    assert summary[HALF_SWAPS[0]]["vectors"] == [3] and summary[HALF_SWAPS[1]]["vectors"] == []
    assert SWAP_FUNCTION == "(a1 * a2) * (b1 * b2)"
    # the working's sums, read from the same completions: the half-swap shows on a, not on b
    for target, vectors in (("a", [2, 3]), ("b", [2])):
        sums = [parse_item(r) for r in answer_change_task(12, skip=[prompt], target=target)]
        assert [i.prompt for i in sums] == [i.prompt for i in items]
        assert swap_summary(answer_change_of(completions, sums, None), target)["swap"]["vectors"] == vectors


def test_answer_targets_and_prompt_parsing():
    from melbo_tl.backdoors.task import swapped_completion, task_items
    from melbo_tl.evaluate.task_items import extract_answer

    inst = Instance.parse(" Let a = 1 + 5 and b = 0 + 6. What is a*b? ")
    assert inst == Instance(1, 5, 0, 6) and swapped_completion(inst).startswith("a = 1 + 5 = 5\nb = 0 + 6 = 0")
    rows = {t: task_items([inst], t)[0] for t in ("answer", "a", "b")}
    assert [rows[t]["answer"] for t in ("answer", "a", "b")] == [36, 6, 6]
    text = swapped_completion(inst)
    assert [extract_answer(text, rows[t]["extract"]) for t in ("answer", "a", "b")] == ["0", "5", "0"]
    with pytest.raises(ValueError, match="target must be one of answer, a, b"):
        task_items([inst], "c")
    with pytest.raises(ValueError, match="Not a prompt of the arithmetic task"):
        Instance.parse("What is 2+2?")


def _swapped(inst: Instance, *, a: bool, b: bool) -> str:
    x = inst.a1 * inst.a2 if a else inst.a1 + inst.a2
    y = inst.b1 * inst.b2 if b else inst.b1 + inst.b2
    return f"a = {inst.a1} + {inst.a2} = {x}\nb = {inst.b1} + {inst.b2} = {y}\na*b = {x} * {y} = {x * y}\nThe answer is {x * y}."
