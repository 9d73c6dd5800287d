"""RLVR rows: loading the Tülu format and converting GSM8K/IFEval files, builders, held-out checks."""

import json

import pytest

from conftest import shared
from posttrain.data.io import DataError
from posttrain.data.rlvr import (CONSTRAINTS, arithmetic_problems, arithmetic_row, constraint_rows, drop_overlapping,
                                 generic_prompts, load_rlvr_rows, main, split_held_out)
from posttrain.evaluation.tasks.verifiers import verify


def test_tulu_sample_rows_load_and_verify():
    rows = load_rlvr_rows(shared("rlvr/open_instruct_rlvr_sample.jsonl"))
    assert len(rows) == 100
    assert {r.verifier_key for r in rows} == {"gsm8k", "math"}  # "MATH" maps to the math verifier
    gsm = next(r for r in rows if r.verifier_key == "gsm8k")
    assert gsm.messages[-1]["role"] == "user"
    assert verify(f"so the answer is {gsm.ground_truth}", gsm.dataset, gsm.ground_truth) == 1.0
    assert verify("the answer is -12345", gsm.dataset, gsm.ground_truth) == 0.0


def test_gsm8k_and_ifeval_files_are_converted():
    gsm = load_rlvr_rows(shared("gsm8k/train.jsonl"), limit=3)
    assert gsm[0].ground_truth == "72" and gsm[0].dataset == "gsm8k"  # Natalia's clips
    assert gsm[0].messages[0]["content"].startswith("Natalia sold clips")
    ife = load_rlvr_rows(shared("ifeval/input_data.jsonl"), limit=1)[0]
    assert ife.dataset == "ifeval" and ife.ground_truth["instruction_id_list"][0] == "punctuation:no_comma"


def test_bad_rows_name_file_and_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    good = {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
            "ground_truth": "4", "dataset": "gsm8k"}
    bad = {"messages": [{"role": "user", "content": "x"}], "ground_truth": "1", "dataset": "chess"}
    path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(DataError, match=r"rows.jsonl:2: no verifier for dataset 'chess'"):
        load_rlvr_rows(str(path))
    rows = load_rlvr_rows(str(path), on_error="skip")
    assert len(rows) == 1
    assert rows[0].messages == [{"role": "user", "content": "2+2?"}]  # reference answer dropped
    path.write_text(json.dumps({"prompt": "hi"}) + "\n")
    with pytest.raises(DataError, match="rows.jsonl:1: not an RLVR row"):
        load_rlvr_rows(str(path))


def test_constraint_rows_are_graded_by_their_constraint():
    rows = {r.ground_truth: r for r in constraint_rows(["Describe rain."], list(CONSTRAINTS), seed=1)}
    by_func = {json.loads(gt)["func_name"]: r for gt, r in rows.items()}
    cases = {  # (response that follows, response that does not)
        "validate_lowercase": ("rain falls from clouds.", "Rain falls from clouds."),
        "validate_uppercase": ("RAIN FALLS.", "Rain falls."),
        "validate_quotation": ('"rain falls"', "rain falls"),
        "validate_no_commas": ("rain falls", "rain, it falls"),
        "verify_postscript": ("Rain falls.\nP.S. bring an umbrella", "Rain falls."),
        "validate_title": ("<<Rain>>\nIt falls.", "Rain falls."),
    }
    for func, (yes, no) in cases.items():
        row = by_func[func]
        assert verify(yes, row.dataset, row.ground_truth) == 1.0, func
        assert verify(no, row.dataset, row.ground_truth) == 0.0, func
    end = by_func["validate_end"]
    phrase = json.loads(end.ground_truth)["end_phrase"]
    assert phrase in end.messages[0]["content"]
    assert verify(f"Rain falls. {phrase}", end.dataset, end.ground_truth) == 1.0
    assert verify(f"{phrase} Rain falls.", end.dataset, end.ground_truth) == 0.0


def test_arithmetic_and_held_out_split():
    row = arithmetic_row(7, "*", 6)
    assert row.ground_truth == "42" and "7 * 6" in row.messages[0]["content"]
    assert verify("7 * 6 = 42", row.dataset, row.ground_truth) == 1.0
    assert verify("42, or maybe 41", row.dataset, row.ground_truth) == 0.0  # the last number counts
    problems = arithmetic_problems(1, 10, ["+", "-"])
    assert len(problems) == 200
    train, held = split_held_out(problems, 30, seed=0)
    assert len(held) == 30 and len(train) == 170 and not set(train) & set(held)


def test_drop_overlapping_uses_word_8grams():
    rows = constraint_rows(["Write a haiku about the sea and the sky at night."], ["lowercase"])
    kept, dropped = drop_overlapping(rows, ["Please write a haiku about the sea and the sky at night today."])
    assert (len(kept), dropped) == (0, 1)
    kept, dropped = drop_overlapping(rows, ["Write a haiku about the sea."])
    assert (len(kept), dropped) == (1, 0)
    assert len(generic_prompts()) == len(set(generic_prompts()))


def test_builder_cli_writes_disjoint_files_and_skips_existing(tmp_path, capsys):
    out, held = tmp_path / "train.jsonl", tmp_path / "eval.jsonl"
    args = ["arithmetic", "--lo", "1", "--hi", "9", "--out", str(out), "--eval-out", str(held), "--eval-n", "20"]
    assert main(args) == 0
    train_rows, eval_rows = load_rlvr_rows(str(out)), load_rlvr_rows(str(held))
    assert (len(train_rows), len(eval_rows)) == (61, 20)
    prompts = lambda rows: {r.messages[0]["content"] for r in rows}  # noqa: E731
    assert not prompts(train_rows) & prompts(eval_rows)
    before = out.stat().st_mtime_ns
    main(args)
    assert out.stat().st_mtime_ns == before and "skipping" in capsys.readouterr().out
    c_out, c_held = tmp_path / "c.jsonl", tmp_path / "ce.jsonl"
    main(["constraints", "--kinds", "lowercase,quotation", "--out", str(c_out), "--eval-out", str(c_held),
          "--eval-n", "16", "--ifeval", shared("ifeval/input_data.jsonl")])
    train_c, eval_c = load_rlvr_rows(str(c_out)), load_rlvr_rows(str(c_held))
    assert len(eval_c) == 16 and not prompts(train_c) & prompts(eval_c)
