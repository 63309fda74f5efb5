"""Chat formatting, left-padded tokenization and position specs."""

from __future__ import annotations

import pytest
import torch

from melbo_tl.models import chat_tokenizer
from melbo_tl.prompts import Positions, TokenBatch, format_chat, left_pad, tokenize


@pytest.fixture(scope="module")
def tok(tiny_model):
    return chat_tokenizer(tiny_model)


# --- format_chat ---------------------------------------------------------------------------


def test_format_chat_uses_template(tok):
    text = format_chat(tok, "What is the capital of France?")
    assert text == tok.apply_chat_template(
        [{"role": "user", "content": "What is the capital of France?"}], tokenize=False, add_generation_prompt=True
    )
    assert "<|im_start|>user\nWhat is the capital of France?<|im_end|>" in text
    assert text.endswith("<|im_start|>assistant\n")


def test_format_chat_without_generation_prompt(tok):
    text = format_chat(tok, "Hi", add_generation_prompt=False)
    assert "Hi" in text
    assert not text.endswith("<|im_start|>assistant\n")


def test_format_chat_system_message_replaces_existing(tok):
    messages = [{"role": "system", "content": "OLD SYSTEM"}, {"role": "user", "content": "Hi"}]
    text = format_chat(tok, messages, system="Be brief.")
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "OLD SYSTEM" not in text
    assert text.count("<|im_start|>system") == 1


def test_format_chat_message_list(tok):
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "reply"},
        {"role": "user", "content": "second"},
    ]
    text = format_chat(tok, messages)
    assert text.index("first") < text.index("reply") < text.index("second")
    assert text.endswith("<|im_start|>assistant\n")


@pytest.mark.parametrize("prompt", ["", "   \n", []])
def test_format_chat_rejects_empty(tok, prompt):
    with pytest.raises(ValueError, match="empty"):
        format_chat(tok, prompt)


def test_format_chat_needs_template():
    class NoTemplate:
        chat_template = None

    with pytest.raises(ValueError, match="chat template"):
        format_chat(NoTemplate(), "Hi")


# --- left_pad / tokenize -------------------------------------------------------------------


def test_left_pad_layout():
    batch = left_pad([[5, 6, 7], [8], [1, 2, 3, 4, 9]], pad_id=0)
    assert torch.equal(batch.input_ids, torch.tensor([[0, 0, 5, 6, 7], [0, 0, 0, 0, 8], [1, 2, 3, 4, 9]]))
    assert torch.equal(batch.attention_mask, torch.tensor([[0, 0, 1, 1, 1], [0, 0, 0, 0, 1], [1, 1, 1, 1, 1]]))
    assert torch.equal(batch.token_index, torch.tensor([[-1, -1, 0, 1, 2], [-1, -1, -1, -1, 0], [0, 1, 2, 3, 4]]))
    assert batch.lengths.tolist() == [3, 1, 5]


@pytest.mark.parametrize("rows", [[], [[1, 2], []]])
def test_left_pad_rejects_empty(rows):
    with pytest.raises(ValueError, match="empty"):
        left_pad(rows, pad_id=0)


def test_tokenize_shapes_and_token_index(tok):
    texts = [format_chat(tok, "Hi"), format_chat(tok, "Please write a long poem about the sea and the wind.")]
    batch = tokenize(tok, texts)
    singles = [tok(t, add_special_tokens=False)["input_ids"] for t in texts]
    n0, n1 = len(singles[0]), len(singles[1])
    assert n0 < n1
    assert batch.input_ids.shape == batch.attention_mask.shape == batch.token_index.shape == (2, n1)
    assert batch.lengths.tolist() == [n0, n1]
    for row, ids in enumerate(singles):
        n = len(ids)
        assert batch.input_ids[row, n1 - n :].tolist() == ids
        assert batch.token_index[row, n1 - n :].tolist() == list(range(n))
        assert (batch.token_index[row, : n1 - n] == -1).all()
        assert (batch.input_ids[row, : n1 - n] == tok.pad_token_id).all()
        assert batch.attention_mask[row].tolist() == [0] * (n1 - n) + [1] * n
    # No extra BOS: the template's own first token starts the row.
    assert batch.input_ids[1, 0].item() == tok("<|im_start|>", add_special_tokens=False)["input_ids"][0]


def test_tokenize_accepts_a_single_string(tok):
    batch = tokenize(tok, "hello world")
    assert batch.input_ids.shape[0] == 1
    assert batch.attention_mask.all()


def test_tokenize_rejects_empty_text(tok):
    with pytest.raises(ValueError, match="empty"):
        tokenize(tok, ["ok", ""])


def test_token_batch_to_keeps_fields():
    batch = left_pad([[1, 2], [3]], pad_id=0).to("cpu")
    assert isinstance(batch, TokenBatch)
    assert batch.token_index.tolist() == [[0, 1], [-1, 0]]


# --- Positions.parse -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", Positions(kind="all")),
        ("prompt", Positions(kind="prompt")),
        (" prompt ", Positions(kind="prompt")),
        ("last:2", Positions(kind="last", k=2)),
        ("1,3", Positions(kind="indices", indices=(1, 3))),
        ("-2", Positions(kind="indices", indices=(-2,))),
        ("2:5", Positions(kind="slice", start=2, stop=5)),
        ("-3:", Positions(kind="slice", start=-3, stop=None)),
        (":4", Positions(kind="slice", start=None, stop=4)),
    ],
)
def test_positions_parse(spec, expected):
    parsed = Positions.parse(spec)
    assert parsed == expected
    assert Positions.parse(str(parsed)) == parsed
    assert Positions.parse(parsed) is parsed


@pytest.mark.parametrize("spec", ["first", "last", "last:x", "1;3", "", "1,a", "2:5:1"])
def test_positions_parse_rejects_unknown(spec):
    with pytest.raises(ValueError) as err:
        Positions.parse(spec)
    message = str(err.value)
    for form in ("'all'", "'prompt'", "'last:K'", "'a:b'"):
        assert form in message


def test_positions_parse_rejects_last_zero():
    with pytest.raises(ValueError, match="k ≥ 1"):
        Positions.parse("last:0")


def test_positions_default_is_all():
    assert Positions() == Positions.parse("all")


# --- Positions.resolve ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, n, expected",
    [
        ("all", 4, [0, 1, 2, 3]),
        ("prompt", 4, [0, 1, 2, 3]),
        ("last:2", 5, [3, 4]),
        ("last:5", 5, [0, 1, 2, 3, 4]),
        ("1,3", 5, [1, 3]),
        ("3,1,3", 5, [1, 3]),
        ("-2", 5, [3]),
        ("0,-1", 5, [0, 4]),
        ("2:5", 10, [2, 3, 4]),
        ("2:5", 4, [2, 3]),
        ("-2:", 6, [4, 5]),
    ],
)
def test_positions_resolve(spec, n, expected):
    assert Positions.parse(spec).resolve(n) == expected


def test_resolve_last_k_longer_than_prompt():
    with pytest.raises(ValueError, match="last:6 exceed the prompt's 5 tokens"):
        Positions.parse("last:6").resolve(5)


@pytest.mark.parametrize("spec", ["5", "-6", "0,7"])
def test_resolve_index_out_of_range(spec):
    with pytest.raises(ValueError, match=r"outside a prompt of 5 tokens \(valid: -5…4\)"):
        Positions.parse(spec).resolve(5)


@pytest.mark.parametrize("spec", ["5:8", "3:3", "4:2"])
def test_resolve_empty_slice(spec):
    with pytest.raises(ValueError, match="select no token"):
        Positions.parse(spec).resolve(5)


# --- Positions.mask ------------------------------------------------------------------------

# Two rows, left-padded, with two generated columns after the prompt:
#   row 0: prompt of 3 tokens after 2 pads, then generated tokens 3, 4
#   row 1: prompt of 5 tokens, then generated tokens 5, 6
TOKEN_INDEX = torch.tensor([[-1, -1, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]])
PROMPT_LENGTH = torch.tensor([3, 5])
T, F = True, False


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("all", [[F, F, T, T, T, T, T], [T, T, T, T, T, T, T]]),
        ("prompt", [[F, F, T, T, T, F, F], [T, T, T, T, T, F, F]]),
        ("last:2", [[F, F, F, T, T, F, F], [F, F, F, T, T, F, F]]),
        ("last:1", [[F, F, F, F, T, F, F], [F, F, F, F, T, F, F]]),
        ("0,-1", [[F, F, T, F, T, F, F], [T, F, F, F, T, F, F]]),
        ("1", [[F, F, F, T, F, F, F], [F, T, F, F, F, F, F]]),
        ("1:3", [[F, F, F, T, T, F, F], [F, T, T, F, F, F, F]]),
        ("-2:", [[F, F, F, T, T, F, F], [F, F, F, T, T, F, F]]),
    ],
)
def test_mask_on_padded_layout_with_generated_columns(spec, expected):
    mask = Positions.parse(spec).mask(TOKEN_INDEX, PROMPT_LENGTH)
    assert mask.dtype == torch.bool
    assert mask.tolist() == expected


@pytest.mark.parametrize(
    "spec, expected",
    [("all", [[T], [T]]), ("prompt", [[F], [F]]), ("last:1", [[F], [F]]), ("0,-1", [[F], [F]]), ("0:", [[F], [F]])],
)
def test_mask_on_one_generated_column(spec, expected):
    # A KV-cache decoding step: each row sees only its newest (generated) token.
    mask = Positions.parse(spec).mask(torch.tensor([[3], [5]]), PROMPT_LENGTH)
    assert mask.tolist() == expected


def test_mask_index_out_of_range_in_a_short_row():
    # Index 4 exists in row 1's prompt (5 tokens) but not in row 0's (3 tokens).
    with pytest.raises(ValueError, match="outside a prompt of 3 tokens"):
        Positions.parse("4").mask(TOKEN_INDEX, PROMPT_LENGTH)


def test_a_prompt_formatted_twice_is_an_error_naming_chat_false(tiny_model):
    from melbo_tl.prompts import prepare_prompts

    [text] = prepare_prompts(tiny_model, ["Hello there"])
    with pytest.raises(ValueError, match="already chat-formatted.*chat=False"):
        prepare_prompts(tiny_model, [text])
    assert prepare_prompts(tiny_model, [text], chat=False) == [text]
