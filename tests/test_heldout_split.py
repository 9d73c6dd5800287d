"""Held-out rows of a stage's data: a seeded split into train and held-out files, held-out rows in
the shape the eval task reads, nothing lost or duplicated."""

import json

import pytest

from posttrain.data.heldout import split_files


def _write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_chat_split_is_seeded_and_partitions_the_rows(tmp_path):
    rows = [{"id": i, "messages": [{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}]}
            for i in range(10)]
    src = _write(tmp_path / "sft.jsonl", rows)
    train, held = split_files([src], 3, seed=1, out_dir=tmp_path / "a", kind="chat")
    t = [json.loads(x) for x in train.read_text().splitlines()]
    h = [json.loads(x) for x in held.read_text().splitlines()]
    assert len(t) == 7 and len(h) == 3
    assert sorted(r["id"] for r in t + h) == list(range(10))  # a partition
    assert [r["id"] for r in t] == sorted(r["id"] for r in t)  # training rows keep their order
    _, held2 = split_files([src], 3, seed=1, out_dir=tmp_path / "b", kind="chat")
    assert held2.read_text() == held.read_text()  # same seed, same rows
    _, held3 = split_files([src], 3, seed=2, out_dir=tmp_path / "c", kind="chat")
    assert held3.read_text() != held.read_text()
    meta = json.loads((tmp_path / "a" / "split.json").read_text())
    assert meta["rows"] == 10 and len(meta["heldout_origins"]) == 3


def test_preference_rows_are_normalised(tmp_path):
    hh = {"chosen": "\n\nHuman: hi?\n\nAssistant: hello there", "rejected": "\n\nHuman: hi?\n\nAssistant: go away"}
    rows = [hh] * 4
    src = _write(tmp_path / "hh.jsonl", rows)
    _, held = split_files([src], 2, seed=0, out_dir=tmp_path / "s", kind="preference")
    got = [json.loads(x) for x in held.read_text().splitlines()]
    assert got[0] == {"chosen": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "hello there"}],
                      "rejected": [{"role": "user", "content": "hi?"}, {"role": "assistant", "content": "go away"}]}


def test_unscorable_rows_stay_in_training_and_a_shortfall_is_explained(tmp_path):
    good = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    bad = {"messages": [{"role": "user", "content": "q"}]}  # no assistant turn: chat_nll cannot score it
    src = _write(tmp_path / "mixed.jsonl", [bad, good, good, bad, good])
    train, held = split_files([src], 2, seed=0, out_dir=tmp_path / "s", kind="chat")
    assert all(json.loads(x) == good for x in held.read_text().splitlines())
    assert sum(json.loads(x) == bad for x in train.read_text().splitlines()) == 2
    with pytest.raises(ValueError, match=r"cannot hold out 3 of the 3 scorable rows \(of 5\).*mixed\.jsonl:1"):
        split_files([src], 3, seed=0, out_dir=tmp_path / "s", kind="chat")


def test_max_chars_keeps_long_rows_in_training(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a" * (50 * (i % 2))}]}
            for i in range(8)]  # odd rows are long
    rows = [r if i % 2 else {"messages": [r["messages"][0], {"role": "assistant", "content": "ok"}]}
            for i, r in enumerate(rows)]
    src = _write(tmp_path / "m.jsonl", rows)
    train, held = split_files([src], 3, seed=0, out_dir=tmp_path / "s", kind="chat", max_chars=100)
    assert all(json.loads(x)["messages"][1]["content"] == "ok" for x in held.read_text().splitlines())
    assert len(train.read_text().splitlines()) == 5
