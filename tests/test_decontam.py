"""Decontamination: tokenizer, coverage semantics, planted contamination, report and filtered output."""

from __future__ import annotations

import json
import random
import re
import sys
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.data.text import UNICODE_WHITESPACE
from posttrain.curation.decontam import (
    DecontamConfig,
    EvalSet,
    build_index,
    coverage,
    decontaminate,
    default_eval_sets,
    extract_prompts,
    load_eval_instances,
    main,
    parse_eval_spec,
    run_decontaminate,
    tokenize,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason="shared data folder not present")


def _write_jsonl(path: Path, rows: list[dict]) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _user(text: str, *more: str) -> dict:
    msgs = [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
    for t in more:
        msgs += [{"role": "user", "content": t}, {"role": "assistant", "content": "ok"}]
    return {"messages": msgs}


def _words(prefix: str, n: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _eval_file(tmp_path: Path, prompts: list[str], name: str = "toy") -> EvalSet:
    path = _write_jsonl(tmp_path / f"{name}.jsonl", [{"id": f"{name}-{i}", "q": p} for i, p in enumerate(prompts)])
    return EvalSet(name, path, ("q",))


# ------------------------------------------------------------------------------------ tokenizer

def test_tokenizer_agrees_with_tulu_analyzer_pattern_on_plain_ascii():
    text = 'What is 3 + 4? Janet\'s "ducks" (x-2) lay 16 eggs, per day: yes; no!\nA\\B $\\frac{1}{2}$.'
    reference = [t for t in re.split(r'[ ,.?!:;()"-]|\n|\\', text.lower()) if t]
    assert [t.decode() for t in tokenize(text)] == reference
    assert tokenize(text)[:5] == [b"what", b"is", b"3", b"+", b"4"]


def test_tokenizer_folds_whitespace_case_and_typographic_punctuation():
    assert tokenize("Janet\u2019s\tDUCKS\u00a0lay \u201ceggs\u201d\u2014daily") == tokenize("janet's ducks lay eggs daily")
    assert tokenize("") == [] and tokenize(" ,.;") == []


def test_whitespace_list_is_exactly_what_str_split_uses():
    computed = "".join(c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace())
    assert UNICODE_WHITESPACE == computed


def test_mask_numbers_makes_number_changes_invisible():
    assert tokenize("pay $12.50 for 3 items", mask_numbers=True) == tokenize("pay $7.25 for 10 items", mask_numbers=True)
    assert tokenize("pay $12.50 for 3 items") != tokenize("pay $7.25 for 10 items")


# ------------------------------------------------------------------------------------ semantics

def _index_for(prompts: list[str], n: int = 8):
    from posttrain.curation.decontam import EvalInstance

    insts = [EvalInstance("toy", i, i, p, len(tokenize(p))) for i, p in enumerate(prompts)]
    return build_index(insts, n)


def test_coverage_counts_tokens_of_shared_ngrams_exactly():
    test = _words("t", 16)
    index = _index_for([" ".join(test)])
    # One shared 8-gram covers 8 of 16 tokens; a 9-token overlap (two 8-grams) covers 9.
    assert coverage(tokenize(" ".join(test[:8])), index) == {0: 0.5}
    assert coverage(tokenize("x y " + " ".join(test[:9]) + " z"), index) == {0: 9 / 16}
    # Two disjoint shared runs: 8 + 8 tokens of 20, in one document.
    test20 = _words("t", 20)
    index20 = _index_for([" ".join(test20)])
    doc = " ".join(test20[:8]) + " gap " + " ".join(test20[12:])
    assert coverage(tokenize(doc), index20) == {0: 16 / 20}
    # A 7-token overlap shares no 8-gram.
    assert coverage(tokenize(" ".join(test[:7])), index) == {}


def test_repeated_test_ngram_covers_all_its_positions():
    test = _words("a", 8) + ["mid"] + _words("a", 8)  # the same 8-gram twice, 17 tokens
    index = _index_for([" ".join(test)])
    assert coverage(tokenize(" ".join(_words("a", 8))), index) == {0: 16 / 17}


def test_exactly_half_is_not_flagged_more_than_half_is(tmp_path):
    test = _words("t", 16)
    es = _eval_file(tmp_path, [" ".join(test)])
    rows = [_user(" ".join(test[:8])), _user(" ".join(test[:9]))]
    report = decontaminate({"train": rows}, [es], ngram=8, threshold=0.5)
    assert report.removed_rows["train"] == [1]
    assert [(m.train_row, m.score) for m in report.matches] == [(1, 0.5625)]


def test_coverage_is_per_single_training_instance(tmp_path):
    test = _words("t", 20)
    es = _eval_file(tmp_path, [" ".join(test)])
    part_a, part_b = " ".join(test[:8]), " ".join(test[12:])  # 40% each, 80% together
    rows = [
        _user(part_a),  # two rows, each 40%
        _user(part_b),
        _user(part_a, part_b),  # one row, two user turns of 40% each: turns are separate instances
        _user(part_a + " and then " + part_b),  # one prompt covering 80%
    ]
    report = decontaminate({"train": rows}, [es])
    assert report.removed_rows["train"] == [3]
    assert report.results[0].flagged == 1


def test_short_test_instances_match_as_a_whole_sequence(tmp_path):
    es = _eval_file(tmp_path, ["Simplify $\\sqrt{242}$.", " ".join(_words("long", 12))])
    rows = [
        _user("Please: simplify $\\sqrt{242}$ and show work"),  # contains all 3 tokens in order
        _user("simplify this: $\\sqrt{243}$"),
        _user("$\\sqrt{242}$ simplify"),  # wrong order
    ]
    report = decontaminate({"train": rows}, [es])
    assert report.removed_rows["train"] == [0]
    assert report.matches[0].score == 1.0 and report.matches[0].eval_id == "toy-0"


def test_prefilter_keeps_every_true_hit():
    from posttrain.curation.decontam import _build_prefilter, candidate_docs

    rng = random.Random(3)
    vocab = [f"v{i}" for i in range(60)]  # small vocabulary: many partial overlaps
    evals = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 30))) for _ in range(40)]
    index = _index_for(evals)
    docs = []
    for _ in range(400):
        src = tokenize(rng.choice(evals))
        a = rng.randint(0, len(src))
        piece = [t.decode() for t in src[a:a + rng.randint(0, 12)]]
        docs.append(tokenize(" ".join([rng.choice(vocab) for _ in range(rng.randint(0, 6))] + piece)))
    hits = [i for i, d in enumerate(docs) if coverage(d, index)]
    assert len(hits) > 50
    assert set(hits) <= set(candidate_docs(docs, index, _build_prefilter(index)))


# ------------------------------------------------------------------------------------ planted items

def _light_edits(text: str, rng: random.Random, gsm8k: bool) -> list[str]:
    edits = [
        text,
        text.upper(),
        text.lower(),
        re.sub(r" ", lambda _: rng.choice(["  ", "\t", "\n", " \u00a0"]), text),
        text.replace(", ", " ").replace(". ", "! ").replace("?", " ?"),
        f"Homework help needed. {text} Please explain every step carefully and briefly.",
    ]
    if gsm8k:
        spans = [m.span() for m in re.finditer(r"\d+", text)]
        a, b = spans[len(spans) // 2]
        edits.append(text[:a] + str(int(text[a:b]) + 7) + text[b:])
    return edits


@needs_data
def test_planted_eval_items_are_all_found_and_clean_data_is_not(tmp_path):
    rng = random.Random(0)
    evals = default_eval_sets(DATA)
    insts = {es.name: load_eval_instances(es) for es in evals}
    picks = [("gsm8k", i) for i in rng.sample(range(len(insts["gsm8k"])), 30)]
    picks += [("math500", i) for i in rng.sample([i.index for i in insts["math500"] if i.n_tokens >= 8], 15)]
    picks += [("math500", i.index) for i in insts["math500"] if i.n_tokens < 8][:3]
    picks += [("ifeval", i) for i in rng.sample(range(len(insts["ifeval"])), 15)]
    clean = [json.loads(line) for line in (DATA / "sft" / "open_instruct_sft_sample.jsonl").open()]
    clean += [{"prompt": json.loads(line)["instruction"]}
              for line in (DATA / "sft" / "self_instruct_seed_tasks.jsonl").open()]
    rows, planted = list(clean), {}
    for name, idx in picks:
        for text in _light_edits(insts[name][idx].text, rng, gsm8k=name == "gsm8k"):
            planted[len(rows)] = (name, idx)
            rows.append(_user(text))

    report = decontaminate({"mixed": rows}, evals)
    flagged = {(m.eval_set, m.eval_index) for m in report.matches}
    removed = set(report.removed_rows["mixed"])
    missed = [(row, planted[row]) for row in planted if row not in removed]
    assert missed == []
    assert {planted[row] for row in planted} <= flagged
    assert removed == set(planted)  # nothing from the clean SFT / self-instruct rows
    assert {(m.eval_set, m.eval_index) for m in report.matches if m.train_row < len(clean)} == set()


@needs_data
def test_changing_every_number_needs_mask_numbers(tmp_path):
    evals = [EvalSet("gsm8k", str(DATA / "gsm8k" / "test.jsonl"), ("question",))]
    insts = load_eval_instances(evals[0])[:200]
    rng = random.Random(1)
    rows = [_user(re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), i.text)) for i in insts]
    plain = decontaminate({"t": rows}, evals)
    masked = decontaminate({"t": rows}, evals, mask_numbers=True)
    own = lambda r: {m.eval_index for m in r.matches if m.eval_index == m.train_row}  # noqa: E731
    assert own(masked) == set(range(200))
    assert len(own(plain)) < 200  # 8-grams alone miss problems whose numbers are dense


@needs_data
def test_clean_sets_give_no_flags():
    sources = {"sft": str(DATA / "sft" / "open_instruct_sft_sample.jsonl"),
               "seed": str(DATA / "sft" / "self_instruct_seed_tasks.jsonl"),
               "user_oriented": str(DATA / "sft" / "self_instruct_user_oriented_instructions.jsonl")}
    report = decontaminate(sources, default_eval_sets(DATA))
    assert [r.flagged for r in report.results] == [0] * 9
    assert report.contaminated == [] and report.matches == []
    assert [d.n_rows for d in report.datasets] == [100, 175, 252]


# ------------------------------------------------------------------------------------ report and outputs

def test_report_numbers_files_and_filtered_output(tmp_path):
    prompts = [" ".join(_words(f"q{k}_", 12)) for k in range(10)]
    es = _eval_file(tmp_path, prompts)
    rows = [_user("nothing to see here " * 3) for _ in range(20)]
    for row, k in [(3, 0), (7, 4), (8, 4), (15, 9)]:
        rows[row] = _user("prefix " + prompts[k])
    src = tmp_path / "train.jsonl"
    src.write_text("".join(json.dumps(r) + "\n" + ("\n" if i == 5 else "") for i, r in enumerate(rows)))
    out = tmp_path / "out"
    report = decontaminate({"my set": str(src)}, [es], dataset_threshold=0.2, out_dir=out)

    (pair,) = report.results
    assert (pair.flagged, pair.n_eval, pair.flagged_pct, pair.contaminated) == (3, 10, 30.0, True)
    assert report.contaminated == [("my set", "toy")]
    assert report.removed_rows["my set"] == [3, 7, 8, 15]
    assert report.datasets[0].rows_removed == 4 and report.datasets[0].n_rows == 20
    # Rows after the blank line keep 0-based record indices; lines are 1-based file lines.
    assert [(m.train_row, m.train_line, m.eval_id) for m in report.matches] == [
        (3, 4, "toy-0"), (7, 9, "toy-4"), (8, 10, "toy-4"), (15, 17, "toy-9")]

    saved = json.loads((out / "report.json").read_text())
    assert saved["results"][0]["flagged"] == 3 and saved["n_matches"] == 4
    assert "| my set | toy | 3 | 10 | 30.00 | **yes** |" in (out / "report.md").read_text()
    lines = (out / "matches.jsonl").read_text().splitlines()
    assert [json.loads(x)["train_row"] for x in lines] == [3, 7, 8, 15]
    assert json.loads(lines[0])["eval_text"] == prompts[0]

    filtered = (out / "filtered" / "my_set.jsonl").read_text().splitlines()
    assert filtered == [json.dumps(r) for i, r in enumerate(rows) if i not in {3, 7, 8, 15}]
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]

    again = decontaminate({"my set": str(src)}, [es], dataset_threshold=0.3)
    assert again.results[0].contaminated is False  # exactly 30% is not more than 30%


def test_parallel_and_serial_scans_agree(tmp_path):
    prompts = [" ".join(_words(f"p{k}_", 10)) for k in range(5)]
    es = _eval_file(tmp_path, prompts)
    rows = [_user(f"row {i} " + ("filler words " * (i % 7))) for i in range(3000)]
    for row in (0, 999, 1000, 2999):
        rows[row] = _user("see " + prompts[row % 5])
    src = _write_jsonl(tmp_path / "t.jsonl", rows)
    serial = decontaminate({"t": src}, [es], workers=1, chunk_bytes=4096)
    parallel = decontaminate({"t": src}, [es], workers=2, chunk_bytes=4096)
    assert serial.matches == parallel.matches
    assert sorted((m.train_row, m.train_line) for m in serial.matches) == [(0, 1), (999, 1000), (1000, 1001), (2999, 3000)]
    assert serial.datasets[0].n_prompts == parallel.datasets[0].n_prompts == 3000


def test_json_and_in_memory_sources_match_jsonl(tmp_path):
    es = _eval_file(tmp_path, [" ".join(_words("w", 10))])
    rows = [{"prompt": "hello there"}, {"prompt": "x " + " ".join(_words("w", 10))}]
    (tmp_path / "t.json").write_text(json.dumps(rows))
    a = decontaminate({"t": rows}, [es])
    b = decontaminate({"t": str(tmp_path / "t.json")}, [es], out_dir=tmp_path / "o")
    assert a.removed_rows == b.removed_rows == {"t": [1]}
    assert json.loads((tmp_path / "o" / "filtered" / "t.jsonl").read_text()) == rows[0]


# ------------------------------------------------------------------------------------ inputs and errors

def test_extract_prompts_formats():
    conv = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u1"},
                         {"role": "assistant", "content": "a"}, {"role": "user", "content": "u2"}]}
    assert extract_prompts(conv, None) == ["u1", "u2"]
    assert extract_prompts({"conversations": [{"from": "human", "value": "h"}, {"from": "gpt", "value": "g"}]},
                           None) == ["h"]
    assert extract_prompts({"instruction": "do", "input": "this"}, None) == ["do\nthis"]
    assert extract_prompts({"question": "q?", "answer": "a"}, None) == ["q?"]
    assert extract_prompts({"text": "t", "prompt": "p"}, "text") == ["t"]
    with pytest.raises(ValueError, match="set prompt_field"):
        extract_prompts({"chosen": "x"}, None, "f.jsonl:3")
    with pytest.raises(ValueError, match="'text' is missing"):
        extract_prompts({"prompt": "p"}, "text")


def test_bad_input_errors_name_file_and_line(tmp_path):
    es = _eval_file(tmp_path, [" ".join(_words("w", 10))])
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "fine"}\n\n{"prompt": oops}\n')
    with pytest.raises(ValueError, match=r"bad\.jsonl:3: invalid JSON"):
        decontaminate({"b": str(bad)}, [es])
    odd = tmp_path / "odd.jsonl"
    odd.write_text('{"prompt": "fine"}\n{"chosen": "x"}\n')
    with pytest.raises(ValueError, match=r"odd\.jsonl:2: cannot find the prompt"):
        decontaminate({"o": str(odd)}, [es])
    with pytest.raises(ValueError, match="file not found"):
        decontaminate({"m": str(tmp_path / "missing.jsonl")}, [es])
    with pytest.raises(ValueError, match="field 'nope' is missing"):
        decontaminate({"t": [{"prompt": "x"}]}, [EvalSet("e", es.path, ("nope",))])
    with pytest.raises(ValueError, match="NAME=PATH:FIELD"):
        parse_eval_spec("just/a/path.jsonl")


def test_eval_spec_parsing_and_joined_fields(tmp_path):
    assert parse_eval_spec("drop=/d/x.jsonl:passage+question") == EvalSet("drop", "/d/x.jsonl", ("passage", "question"))
    path = _write_jsonl(tmp_path / "e.jsonl", [{"a": " ".join(_words("a", 5)), "b": " ".join(_words("b", 5))}])
    (inst,) = load_eval_instances(parse_eval_spec(f"two={path}:a+b"))
    assert inst.n_tokens == 10 and inst.eval_id == 0


def test_config_entry_points(tmp_path, capsys):
    es_path = _write_jsonl(tmp_path / "e.jsonl", [{"q": " ".join(_words("w", 10))}])
    train = _write_jsonl(tmp_path / "t.jsonl", [{"prompt": " ".join(_words("w", 10))}, {"prompt": "no"}])
    cfg = load_config(DecontamConfig, None, [f"train.t={train}", "default_evals=false", f"evals=[e={es_path}:q]",
                                             f"out_dir={tmp_path / 'out'}"])
    report = run_decontaminate(cfg)
    assert report.removed_rows == {"t": [0]}
    assert (tmp_path / "out" / "report.json").is_file()
    assert main(["--train", f"t={train}", "default_evals=false", f"evals=[e={es_path}:q]",
                 f"out_dir={tmp_path / 'out2'}"]) == 0
    assert "| t | e | 1 | 1 | 100.00 | **yes** |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="train"):
        run_decontaminate(DecontamConfig(default_evals=False))


# ------------------------------------------------------------------------------------ real data

@needs_data
def test_gsm8k_train_against_gsm8k_test_invariants(tmp_path):
    train = DATA / "gsm8k" / "train.jsonl"
    report = decontaminate({"gsm8k_train": str(train)}, default_eval_sets(DATA), out_dir=tmp_path)
    ds = report.datasets[0]
    assert ds.n_rows == ds.n_prompts == 7473
    assert all(m.score > 0.5 for m in report.matches)
    assert ds.rows_removed == len({m.train_row for m in report.matches})
    gsm = next(r for r in report.results if r.eval_set == "gsm8k")
    assert gsm.flagged == len({m.eval_index for m in report.matches if m.eval_set == "gsm8k"})
    assert gsm.flagged / gsm.n_eval < 0.02  # the GSM8K splits are not near-duplicates of each other
    kept = (tmp_path / "filtered" / "gsm8k_train.jsonl").read_text().splitlines()
    assert len(kept) == 7473 - ds.rows_removed
