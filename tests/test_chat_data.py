import json

import pytest

from conftest import shared
from posttrain.data.chat import (IGNORE_INDEX, LoadStats, load_conversations, to_messages,
                                 tokenize_conversation, tokenize_dataset)
from posttrain.data.io import DataError, read_records
from posttrain.models import load_tokenizer

CONV = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello! How can I help?"},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4.\nAnything else?"},
]


def unmasked_spans(ex):
    spans, cur = [], []
    for i, lab in zip(ex.input_ids, ex.labels):
        if lab != IGNORE_INDEX:
            assert lab == i
            cur.append(i)
        elif cur:
            spans.append(cur)
            cur = []
    if cur:
        spans.append(cur)
    return spans


@pytest.mark.parametrize("template", ["model", "tulu"])
def test_only_assistant_content_and_eos_are_trained(template):
    tok = load_tokenizer("smollm2-135m", chat_template=template)
    ex = tokenize_conversation(tok, CONV)
    decoded = [tok.decode(s) for s in unmasked_spans(ex)]
    assert decoded == [m["content"] + tok.eos_token for m in CONV if m["role"] == "assistant"]
    # Everything else (system, user turns, headers) is masked.
    masked_text = tok.decode([i for i, lab in zip(ex.input_ids, ex.labels) if lab == IGNORE_INDEX])
    assert "Be brief." in masked_text and "What is 2+2?" in masked_text
    assert "Hello!" not in masked_text


def test_tulu_template_renders_as_recipe(tokenizer):
    tok = load_tokenizer("smollm2-135m", chat_template="tulu")
    text = tok.apply_chat_template(CONV[1:3] + [{"role": "user", "content": "ok"}], tokenize=False,
                                   add_generation_prompt=True)
    eos = tok.eos_token
    assert text == f"<|user|>\nHi there\n<|assistant|>\nHello! How can I help?{eos}\n<|user|>\nok\n<|assistant|>\n"


def test_real_sft_sample_masks_match_contents(tokenizer):
    convs = load_conversations(shared("sft/open_instruct_sft_sample.jsonl"), limit=20)
    for msgs in convs:
        ex = tokenize_conversation(tokenizer, msgs)
        decoded = [tokenizer.decode(s) for s in unmasked_spans(ex)]
        assert decoded == [m["content"] + tokenizer.eos_token for m in msgs if m["role"] == "assistant"]


def test_converters():
    sharegpt = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    assert to_messages(sharegpt) == [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    pc = {"prompt": "q", "completion": "a"}
    assert to_messages(pc, "prompt_completion") == to_messages(sharegpt, "sharegpt")
    with pytest.raises(DataError, match="unknown speaker"):
        to_messages({"conversations": [{"from": "robot", "value": "x"}]})


def test_sharegpt_fixture_loads(tokenizer):
    convs = load_conversations(shared("sft/fastchat_dummy_conversation.jsonl"), fmt="sharegpt", limit=5)
    assert len(convs) == 5 and convs[0][0]["role"] == "user"


BAD_ROWS = [
    ({"text": "no messages"}, "missing field 'messages'"),
    ({"messages": [{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}]}, "unknown role 'robot'"),
    ({"messages": [{"role": "user", "content": 3}, {"role": "assistant", "content": "y"}]}, "content must be a string"),
    ({"messages": [{"role": "user", "content": "only a question"}]}, "no assistant turn"),
]


@pytest.mark.parametrize("row,msg", BAD_ROWS)
def test_bad_rows_name_file_and_line(tmp_path, row, msg):
    p = tmp_path / "d.jsonl"
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    p.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(DataError) as e:
        load_conversations(str(p))
    assert f"{p}:2:" in str(e.value) and msg in str(e.value)
    stats = LoadStats()
    convs = load_conversations(str(p), on_error="skip", stats=stats)
    assert len(convs) == 1 and stats.read == 2 and stats.kept == 1 and sum(stats.dropped.values()) == 1


def test_invalid_json_line(tmp_path):
    p = tmp_path / "d.jsonl"
    p.write_text('{"messages": []}\n{not json}\n')
    with pytest.raises(DataError, match=r"d.jsonl:2: invalid JSON"):
        list(read_records(p))


def test_too_long_policies(tokenizer):
    long = [{"role": "user", "content": "word " * 200}, {"role": "assistant", "content": "ok"}]
    with pytest.raises(DataError, match="longer than max_length=50"):
        tokenize_conversation(tokenizer, long, max_length=50)
    assert tokenize_conversation(tokenizer, long, max_length=50, too_long="skip") is None
    stats = LoadStats()
    out = tokenize_dataset(tokenizer, [long, CONV], 150, too_long="skip", stats=stats)
    assert len(out) == 1 and stats.dropped["too long"] == 1
    # Truncating away every assistant token is an error, not a silent empty example.
    with pytest.raises(DataError, match="no trainable token"):
        tokenize_conversation(tokenizer, long, max_length=50, too_long="truncate")


def test_parquet_roundtrip(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert load_conversations(str(tmp_path / "d.parquet")) == [rows[0]["messages"]]
