"""Bad input data (issue #14): undecodable bytes, byte-order marks, empty files, ground truths the
reward cannot grade. Each must stop with an error naming the file, line and field (or be read
safely), before any model is loaded and without touching an existing run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, subprocess_env
from posttrain.data.chat import load_conversations
from posttrain.data.io import DataError, LoadStats, load_rows, read_records
from posttrain.data.preference import PreferenceData, build_preference_splits, load_preferences
from posttrain.data.rlvr import load_rlvr_rows
from posttrain.evaluation.tasks.verifiable import VerifiableTask

CONV = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {"prompt": "hi", "chosen": "hello there", "rejected": "go away"}


def rlvr(ground_truth, dataset="gsm8k") -> dict:
    return {"messages": [{"role": "user", "content": "2+2?"}], "ground_truth": ground_truth, "dataset": dataset}


def jsonl(path: Path, *records) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


# ---------------------------------------------------------------- undecodable bytes

def test_invalid_utf8_names_file_line_and_byte_offset(tmp_path):
    path = tmp_path / "bad.jsonl"
    line = json.dumps(CONV).encode()
    # CRLF endings and a non-ASCII character before the bad byte: the offset counts bytes, exactly.
    accented = json.dumps({"messages": [{"role": "user", "content": "café"}, {"role": "assistant", "content": "ok"}]},
                          ensure_ascii=False).encode()
    data = line + b"\r\n" + accented + b"\r\n" + line.replace(b"hello", b"hel\xfflo") + b"\n"
    path.write_bytes(data)
    offset = data.index(b"\xff")
    with pytest.raises(DataError) as e:
        load_conversations(str(path), on_error="skip")  # a broken file is not a droppable row
    msg = str(e.value)
    assert msg.startswith(f"{path}:3: invalid UTF-8: byte 0xff at column ")
    assert f"(byte offset {offset} in the file)" in msg and "invalid start byte" in msg
    # The rows before the bad byte are read, in order, as without it.
    rows = read_records(path)
    assert [n for n, _ in (next(rows), next(rows))] == [1, 2]
    with pytest.raises(DataError, match="bad.jsonl:3: invalid UTF-8"):
        next(rows)


def test_invalid_utf8_in_a_json_array(tmp_path):
    path = tmp_path / "bad.json"
    data = b"[\n" + json.dumps(CONV).encode() + b",\n" + json.dumps(CONV).encode().replace(b"hi", b"h\xe9") + b"]"
    path.write_bytes(data)
    offset = data.index(b"\xe9")
    with pytest.raises(DataError, match=rf"bad.json:3: invalid UTF-8: byte 0xe9 \(byte offset {offset} "):
        list(read_records(path))


# ---------------------------------------------------------------- byte-order marks

def test_utf8_bom_is_read_as_utf8_sig(tmp_path):
    bom = b"\xef\xbb\xbf"
    line = json.dumps(CONV).encode() + b"\n"
    (tmp_path / "a.jsonl").write_bytes(bom + line * 2)
    assert load_conversations(str(tmp_path / "a.jsonl")) == [CONV["messages"]] * 2
    (tmp_path / "a.json").write_bytes(bom + json.dumps([CONV]).encode())
    assert load_conversations(str(tmp_path / "a.json")) == [CONV["messages"]]
    # Files joined with `cat` keep a mark at each start; line numbers stay those of the file.
    (tmp_path / "joined.jsonl").write_bytes(bom + line + bom + line + b'{"messages": []}\n')
    with pytest.raises(DataError, match="joined.jsonl:3: 'messages' must be a non-empty list"):
        load_conversations(str(tmp_path / "joined.jsonl"))
    stats = LoadStats()
    assert len(load_conversations(str(tmp_path / "joined.jsonl"), on_error="skip", stats=stats)) == 2
    assert stats.summary() == "read 3, kept 2, dropped 1 ('messages' must be a non-empty list)"


# ---------------------------------------------------------------- empty files and per-file counts

def test_empty_file_is_named_with_per_file_counts(tmp_path, tokenizer):
    from posttrain.recipes.sft import SFTConfig, SFTData, build_dataset

    empty, good = tmp_path / "empty.jsonl", jsonl(tmp_path / "good.jsonl", CONV, CONV)
    empty.write_text("\n")  # a blank line is no row
    long = jsonl(tmp_path / "long.jsonl", CONV, {"messages": [{"role": "user", "content": "word " * 400},
                                                              {"role": "assistant", "content": "ok"}]})
    logs = []
    cfg = SFTConfig(data=SFTData(paths=[str(empty), str(good), str(long)], max_length=64, too_long="skip"))
    assert len(build_dataset(cfg, tokenizer, logs.append)) == 3
    assert f"[data] warning: {empty} has no rows (empty file?)" in logs
    assert f"[data]   {long}: read 2, kept 1, dropped 1 (too long)" in logs  # kept: left after tokenization
    assert "[data] read 4, kept 3, dropped 1 (too long); 3 examples after tokenization" in logs

    cfg = SFTConfig(data=SFTData(paths=[str(empty), str(long)], max_length=8, too_long="skip"))
    with pytest.raises(ValueError) as e:
        build_dataset(cfg, tokenizer, logs.append)
    assert str(e.value) == (f"no training examples left after loading and filtering ({empty}: no rows (empty file?); "
                            f"{long}: read 2, kept 0, dropped 2 (too long))")


def test_empty_preference_and_rlvr_files_are_named(tmp_path, tokenizer):
    from posttrain.recipes.rlvr import RLVRData, load_prompts

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    same = {**PAIR, "rejected": PAIR["chosen"]}
    bad = jsonl(tmp_path / "pairs.jsonl", same, same)
    with pytest.raises(ValueError, match=rf"no training pairs left after loading and filtering \({empty}: no rows "
                                         rf"\(empty file\?\); {bad}: read 2, kept 0, dropped 2 \(chosen and rejected"):
        build_preference_splits(PreferenceData(paths=[str(empty), str(bad)], on_error="skip"), tokenizer, 0,
                                log=lambda _: None)
    logs = []
    pairs, _ = build_preference_splits(PreferenceData(paths=[str(empty), str(jsonl(tmp_path / "ok.jsonl", PAIR))]),
                                       tokenizer, 0, log=logs.append)
    assert len(pairs) == 1 and f"[data] warning: {empty} has no rows (empty file?)" in logs

    with pytest.raises(ValueError, match=rf"no prompts left after loading and filtering \({empty}: no rows"):
        load_prompts([str(empty)], RLVRData(paths=[str(empty)]), tokenizer, print, None)
    rows = jsonl(tmp_path / "rows.jsonl", rlvr("4"), rlvr("5"))
    logs = []
    assert len(load_prompts([str(empty), str(rows)], RLVRData(), tokenizer, logs.append, None)) == 2
    assert f"[data]   {rows}: read 2, kept 2" in logs and f"[data] warning: {empty} has no rows (empty file?)" in logs


def test_one_row_loader_counts_per_file(tmp_path):
    a = jsonl(tmp_path / "a.jsonl", CONV, {"x": 1}, CONV, CONV)
    b = jsonl(tmp_path / "b.jsonl", {"x": 1}, CONV)
    stats = LoadStats()
    convs = load_conversations(str(a), on_error="skip", stats=stats, limit=2)
    convs += load_conversations(str(b), on_error="skip", stats=stats)
    assert len(convs) == 3
    reason = "missing field 'messages' (or 'conversations', or 'prompt'+'c"  # cut at 60 characters, as before
    assert [fs.summary() for fs in stats.files] == [f"{a}: read 3, kept 2, dropped 1 ({reason})",  # limit: 2 kept
                                                     f"{b}: read 2, kept 1, dropped 1 ({reason})"]
    assert (stats.read, stats.kept, sum(stats.dropped.values())) == (5, 3, 2)
    assert load_preferences(str(jsonl(tmp_path / "p.jsonl", PAIR)))[0].origin == f"{tmp_path / 'p.jsonl'}:1"

    def convert(rec, where):
        if "bad" in rec:
            raise DataError(f"{where}: field 'bad' is set")  # a converter that names the row itself
        return rec["n"]

    path = jsonl(tmp_path / "n.jsonl", {"n": 1}, {"bad": 1}, {"n": 3})
    with pytest.raises(DataError, match=rf"^{path}:2: field 'bad' is set  \(set data.on_error=skip"):
        load_rows(str(path), convert)
    stats = LoadStats()
    assert load_rows(str(path), convert, "skip", stats) == [1, 3]
    assert stats.examples == [f"{path}:2: field 'bad' is set"] and stats.dropped == {"field 'bad' is set": 1}


# ---------------------------------------------------------------- ground truth checked at load time

GROUND_TRUTH_CASES = [
    (rlvr(None), "field 'ground_truth' for dataset 'gsm8k': expected a number", "got null"),
    (rlvr([1, 2]), "field 'ground_truth' for dataset 'gsm8k': expected a number", "got [1, 2]"),
    (rlvr(True), "field 'ground_truth' for dataset 'gsm8k': expected a number", "got true"),
    (rlvr("", "MATH"), "field 'ground_truth' for dataset 'MATH': expected the final answer", 'got ""'),
    (rlvr('{"func_name": "validate_nope"}', "ifeval"), "field 'ground_truth' for dataset 'ifeval': "
     "unknown constraint function 'validate_nope'", "validate_lowercase"),
    (rlvr('{"func_name": "validate_lowercase"', "ifeval"), "field 'ground_truth' for dataset 'ifeval': "
     "not valid JSON (Expecting ',' delimiter", '{"func_name": ...'),
    (rlvr({"func_name": "validate_word_constraint", "N": "5", "quantifier": "at least"}, "ifeval"),
     "field 'ground_truth' for dataset 'ifeval': validate_word_constraint: argument 'N' must be int", 'got "5"'),
    (rlvr({"func_name": "validate_word_constraint", "N": 5, "quantifier": "fewer than"}, "ifeval"),
     "field 'ground_truth' for dataset 'ifeval': validate_word_constraint: 'quantifier' must be one of "
     "['at least', 'at most', 'around']", 'got "fewer than"'),
    (rlvr({"instruction_id_list": ["punctuation:no_comm"], "kwargs": [{}]}, "ifeval"),
     "field 'ground_truth' for dataset 'ifeval': instruction (punctuation:no_comm): unknown IFEval instruction id "
     "'punctuation:no_comm'", ""),
    (rlvr(["4", "5"], ["gsm8k", "gsm8k", "math"]), "field 'ground_truth' for 3 datasets: got 2 ground truths", ""),
    ({"question": "q?", "answer": "#### seven"}, "field 'answer' for dataset 'gsm8k': expected a number", ""),
    ({"prompt": "p", "instruction_id_list": ["length_constraints:number_words"], "kwargs": [{}]},
     "fields 'instruction_id_list' and 'kwargs' for dataset 'ifeval': instruction (length_constraints:number_words): "
     "instruction 'length_constraints:number_words' is missing kwargs ['num_words', 'relation']", ""),
]


@pytest.mark.parametrize("record, message, detail", GROUND_TRUTH_CASES)
def test_ground_truth_the_reward_cannot_grade_is_a_load_error(tmp_path, record, message, detail):
    path = jsonl(tmp_path / "rows.jsonl", rlvr("4"), record)
    with pytest.raises(DataError) as e:
        load_rlvr_rows(str(path))
    assert str(e.value).startswith(f"{path}:2: {message}") and detail in str(e.value)
    stats = LoadStats()
    assert [r.ground_truth for r in load_rlvr_rows(str(path), on_error="skip", stats=stats)] == ["4"]
    assert stats.summary() == f"read 2, kept 1, dropped 1 ({message.split(':')[0]})"


def test_valid_ground_truths_still_load(tmp_path):
    ok = [rlvr("3,380"), rlvr(-7), rlvr(["12"]), rlvr("\\frac{1}{2}", "math"), rlvr(0.5, "MATH"),
          rlvr(json.dumps({"func_name": "verify_keywords", "keyword_list": ["sea"], "N": None}), "ifeval"),
          rlvr({"func_name": "validate_word_constraint", "N": 5, "quantifier": "around"}, "ifeval"),
          rlvr(str([json.dumps({"instruction_id": ["punctuation:no_comma"], "kwargs": [None]})]), "ifeval"),
          rlvr(["4", "x"], ["gsm8k", "math"])]
    assert len(load_rlvr_rows(str(jsonl(tmp_path / "ok.jsonl", *ok)))) == len(ok)


def test_gsm8k_answer_keeps_its_sign(tmp_path):
    # The reward compares signed numbers: "#### -7" must reward "-7", not "7".
    from posttrain.evaluation.tasks.verifiers import verify

    row = load_rlvr_rows(str(jsonl(tmp_path / "g.jsonl", {"question": "q?", "answer": "so\n#### -7"})))[0]
    assert row.ground_truth == "-7" and verify("It is -7", "gsm8k", row.ground_truth) == 1.0


def test_verifiable_eval_task_checks_ground_truth_at_load(tmp_path):
    path = jsonl(tmp_path / "held.jsonl", rlvr("4"), rlvr(None))
    with pytest.raises(ValueError, match=rf"^{path}:2: field 'ground_truth' for dataset 'gsm8k': expected a number"):
        VerifiableTask().load(str(path))


# ---------------------------------------------------------------- the CLI stops before any model loads

@pytest.fixture(scope="module")
def tokenizer_only_dir(tmp_path_factory, tokenizer):
    # A config and a tokenizer but no weights: a run that got as far as loading the model would
    # fail with another error.
    from conftest import tiny_config

    path = tmp_path_factory.mktemp("tokenizer-only")
    tiny_config("llama").save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


def sft(model_dir, data: Path, out: Path, *extra) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "posttrain.cli", "sft", str(REPO / "configs/sft/smollm2-cpu.yaml"),
           f"model.name_or_path={model_dir}", f"data.paths=[{data}]", f"run.output_dir={out}", *extra]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)


def test_sft_cli_bad_data_fails_before_the_model_and_keeps_the_run(tmp_path, tokenizer_only_dir):
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(json.dumps(CONV).encode() + b"\n" + json.dumps(CONV).encode().replace(b"hi", b"h\xff") + b"\n")
    r = sft(tokenizer_only_dir, bad, tmp_path / "fresh")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"posttrain sft: error: {bad}:2: invalid UTF-8: byte 0xff at column" in r.stderr
    assert "byte offset" in r.stderr
    assert not (tmp_path / "fresh").exists()  # the data is read before the run directory is made

    # An existing run, resumed with an empty data file: its checkpoint and metrics are untouched.
    run = tmp_path / "run"
    (run / "checkpoints" / "step_000004").mkdir(parents=True)
    (run / "checkpoints" / "step_000004" / "trainer_state.pt").write_bytes(b"state")
    (run / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    before = {p: p.read_bytes() for p in run.rglob("*") if p.is_file()}
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    r = sft(tokenizer_only_dir, empty, run, "run.resume=true")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert f"no training examples left after loading and filtering ({empty}: no rows (empty file?))" in r.stderr
    assert all(p.read_bytes() == data for p, data in before.items())
    assert {p for p in run.rglob("*") if p.is_file()} == set(before)  # no config.yaml rewritten either
    assert not (run / "final").exists()
