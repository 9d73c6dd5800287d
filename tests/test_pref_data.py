"""Preference data: the three row shapes, hh-rlhf transcripts, the error policy, response-only
labels, truncation, packing of pairs and the held-out split."""

import json

import pytest
import torch

from conftest import shared
from posttrain.data.chat import IGNORE_INDEX, LoadStats
from posttrain.data.io import DataError
from posttrain.data.packing import PackedBatch
from posttrain.data.preference import (PreferencePair, fingerprint_pairs, last_non_pad_positions, load_preferences,
                                       pack_pairs, parse_hh_transcript, split_heldout, to_pair, tokenize_pair,
                                       tokenize_pairs)

U = lambda s: {"role": "user", "content": s}  # noqa: E731
A = lambda s: {"role": "assistant", "content": s}  # noqa: E731


def test_hh_transcript_parsing():
    text = "\n\nHuman: Hi there\n\nAssistant:  Hello!\n\nHuman: Bye?\n\nAssistant: Bye."
    assert parse_hh_transcript(text) == [U("Hi there"), A("Hello!"), U("Bye?"), A("Bye.")]
    with pytest.raises(DataError, match="before the first"):
        parse_hh_transcript("preamble\n\nHuman: x\n\nAssistant: y")
    with pytest.raises(DataError, match="no '"):
        parse_hh_transcript("\n")


def test_every_shape_gives_the_same_pair():
    prompt = [U("Q1"), A("A1"), U("Q2")]
    expected = PreferencePair(prompt, [A("good")], [A("bad")])
    shapes = [
        {"chosen": prompt + [A("good")], "rejected": prompt + [A("bad")]},
        {"prompt": prompt, "chosen": "good", "rejected": "bad"},
        {"prompt": prompt, "chosen": [A("good")], "rejected": [A("bad")]},
        {"prompt": prompt, "chosen": prompt + [A("good")], "rejected": prompt + [A("bad")]},  # Tülu 3 files
        {"chosen": "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant: good",
         "rejected": "\n\nHuman: Q1\n\nAssistant: A1\n\nHuman: Q2\n\nAssistant: bad"},
    ]
    for rec in shapes:
        assert to_pair(rec) == expected, rec
    assert to_pair({"prompt": "Q", "chosen": "good", "rejected": "bad"}) == PreferencePair([U("Q")], [A("good")],
                                                                                          [A("bad")])


def test_bad_rows_name_file_and_line_or_are_counted(tmp_path):
    rows = [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": "Q", "chosen": "same", "rejected": "same"},
        {"chosen": [U("Q"), A("a")], "rejected": [U("other"), A("b")]},  # no shared prompt
        {"prompt": "Q", "chosen": [{"role": "robot", "content": "x"}], "rejected": "bad"},
        {"prompt": "Q", "chosen": "   ", "rejected": "bad"},
        {"question": "Q"},
        {"prompt": "Q", "chosen": [U("not the prompt"), A("x")], "rejected": "bad"},
    ]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataError, match=rf"{path}:2: chosen and rejected are identical.*on_error=skip"):
        load_preferences(str(path))
    stats = LoadStats()
    pairs = load_preferences(str(path), on_error="skip", stats=stats)
    assert len(pairs) == 1 and pairs[0].origin == f"{path}:1"
    assert stats.read == 7 and stats.kept == 1 and sum(stats.dropped.values()) == 6
    assert any("unknown role 'robot'" in m for m in stats.examples)
    with pytest.raises(DataError, match="unknown preference format"):
        load_preferences(str(path), fmt="nope")


def test_real_files_in_all_three_shapes():
    for rel, n in [("preference/open_instruct_preference_sample.jsonl", 5),
                   ("preference/hh_rlhf_helpful_base_test.jsonl", 5)]:
        pairs = load_preferences(shared(rel), limit=n)
        assert len(pairs) == n
        for p in pairs:
            assert p.prompt[-1]["role"] == "user" and p.chosen != p.rejected
            assert [m["role"] for m in p.chosen] == ["assistant"] == [m["role"] for m in p.rejected]
    first = load_preferences(shared("preference/open_instruct_preference_sample.jsonl"), limit=1)[0]
    raw = json.loads(open(shared("preference/open_instruct_preference_sample.jsonl")).readline())
    assert first.prompt == [U(raw["prompt"])] and first.chosen == raw["chosen"][1:]


def _labeled_text(tokenizer, ex):
    return tokenizer.decode([t for t, lab in zip(ex.input_ids, ex.labels) if lab != IGNORE_INDEX])


def test_only_the_final_response_is_labeled(tokenizer):
    pair = PreferencePair([U("Say hi"), A("earlier answer"), U("Again")], [A("Hi friend")], [A("No")])
    tp = tokenize_pair(tokenizer, pair)
    eos = tokenizer.eos_token
    assert _labeled_text(tokenizer, tp.chosen) == "Hi friend" + eos
    assert _labeled_text(tokenizer, tp.rejected) == "No" + eos
    # both sides render the same prompt; labels align with ids
    assert tokenizer.decode(tp.chosen.input_ids).startswith(tokenizer.apply_chat_template(pair.prompt, tokenize=False))
    assert len(tp.chosen.labels) == len(tp.chosen.input_ids)
    assert tp.num_tokens == len(tp.chosen.input_ids) + len(tp.rejected.input_ids)


def test_too_long_policies(tokenizer):
    pair = PreferencePair([U("Tell me a story")], [A("once upon a time " * 20)], [A("no")])
    full = tokenize_pair(tokenizer, pair)
    n_chosen, n_rejected = len(full.chosen.input_ids), len(full.rejected.input_ids)
    limit = n_rejected + 5
    assert n_chosen > limit
    with pytest.raises(DataError, match=f"chosen: {n_chosen} tokens, longer than max_length={limit}"):
        tokenize_pair(tokenizer, pair, limit, "raise")
    assert tokenize_pair(tokenizer, pair, limit, "skip") is None
    cut = tokenize_pair(tokenizer, pair, limit, "truncate")
    assert len(cut.chosen.input_ids) == limit and cut.chosen.input_ids == full.chosen.input_ids[:limit]
    assert 0 < cut.chosen.num_trainable < full.chosen.num_trainable and cut.rejected == full.rejected
    # a cut that leaves no response token is an error (or a counted drop), never a silent empty pair
    prompt_len = n_rejected - full.rejected.num_trainable - 2
    with pytest.raises(DataError, match="no response token"):
        tokenize_pair(tokenizer, pair, prompt_len, "truncate")
    stats = LoadStats()
    pairs = [pair, PreferencePair([U("Q")], [A("yes")], [A("no")], origin="f.jsonl:7")]
    out = tokenize_pairs(tokenizer, pairs, limit, "skip", "raise", stats)
    assert len(out) == 1 and stats.dropped["too long"] == 1
    with pytest.raises(DataError, match="f.jsonl:7: chosen: .* longer than max_length=3"):
        tokenize_pairs(tokenizer, pairs[1:], 3, "raise")
    stats = LoadStats()
    out = tokenize_pairs(tokenizer, pairs, prompt_len, "truncate", "skip", stats)
    assert len(out) == 1 and out[0].chosen.num_trainable == 2  # the short pair fits; "yes" + eos
    assert stats.dropped["no response tokens"] == 1


def test_pack_pairs_layout_and_last_non_pad():
    from posttrain.data.chat import TokenizedExample
    from posttrain.data.preference import TokenizedPair

    ex = lambda ids: TokenizedExample(ids, [IGNORE_INDEX] + ids[1:])  # noqa: E731
    pairs = [TokenizedPair(ex([5, 6, 7]), ex([5, 8])), TokenizedPair(ex([9, 9, 2, 2]), ex([4]))]
    batch = pack_pairs(pairs)
    assert batch.seq_lens == [3, 2, 4, 1]
    assert batch.input_ids[0].tolist() == [5, 6, 7, 5, 8, 9, 9, 2, 2, 4]
    assert batch.position_ids[0].tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 0]
    assert last_non_pad_positions(batch, pad_token_id=None).tolist() == [2, 4, 8, 9]
    # pad id 2: the third document's trailing pads are skipped, as the HF classification head does
    assert last_non_pad_positions(batch, pad_token_id=2).tolist() == [2, 4, 6, 9]
    pad_only = PackedBatch(torch.tensor([[2, 2]]), torch.tensor([[-100, -100]]), torch.tensor([[0, 1]]), [2])
    with pytest.raises(ValueError, match="all padding"):
        last_non_pad_positions(pad_only, pad_token_id=2)


def test_split_heldout_is_seeded_and_disjoint():
    items = list(range(20))
    train, held = split_heldout(items, 5, seed=3)
    assert len(held) == 5 and sorted(train + held) == items and train == sorted(train)
    assert split_heldout(items, 5, seed=3) == (train, held) and split_heldout(items, 5, seed=4)[1] != held
    assert split_heldout(items, 0, seed=3) == (items, [])
    with pytest.raises(ValueError, match="nothing would be left"):
        split_heldout(items, 20, seed=0)


def test_fingerprint_follows_tokens(tokenizer):
    pair = PreferencePair([U("Tell me a story")], [A("once upon a time " * 5)], [A("no")])
    a = fingerprint_pairs([tokenize_pair(tokenizer, pair, 64)])
    assert a == fingerprint_pairs([tokenize_pair(tokenizer, pair, 64)])
    assert a != fingerprint_pairs([tokenize_pair(tokenizer, pair, 45, "truncate")])  # max length
    swapped = PreferencePair(pair.prompt, pair.rejected, pair.chosen)
    assert a != fingerprint_pairs([tokenize_pair(tokenizer, swapped, 64)])
