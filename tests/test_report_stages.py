"""The pipeline report's reading of a run: each stage's target metric with its paired interval and
a verdict, DPO's held-out reward accuracy against chance, plain sentences about the tasks no stage
targets, response lengths / finish reasons, and base-vs-final outputs side by side."""

import json

from posttrain.evaluation.compare import generation_stats, implicit_reward_stats
from posttrain.report import eval_table, examples, fmt, generation_table, non_target_notes, target_table


def _d(delta, low, high, n=64):
    return {"delta": delta, "low": low, "high": high, "significant": low > 0 or high < 0, "n": n}


EVALS = {"base": {"nc/accuracy": 0.17, "nll/nll": 2.30, "if/acc": 0.20},
         "sft": {"nc/accuracy": 0.40, "nll/nll": 2.23},
         "dpo": {"nc/accuracy": 0.50, "pref/margin": 0.16},
         "rlvr": {"nc/accuracy": 0.94, "if/acc": 0.10}}
STATS = {"deltas": {"sft": {"nll/nll": _d(-0.064, -0.08, -0.05, 30)},
                    "rlvr": {"nc/accuracy": _d(0.44, 0.30, 0.58)}},
         "overall": {"from": "base", "to": "rlvr", "deltas": {"if/acc": _d(-0.10, -0.30, 0.05, 24)}},
         "implicit_reward": {"dpo": {"reference": "sft", "n": 128, "accuracy": 0.617, "low": 0.53, "high": 0.70,
                                     "significant": True}}}


def test_target_table_reads_direction_and_significance():
    targets = {"sft": ["nll/nll"], "dpo": ["pref/reward_accuracy"], "rlvr": ["nc/accuracy"]}
    header, rows = target_table(EVALS, STATS, targets)
    assert header[-1] == "verdict"
    sft, dpo, rlvr = rows
    # lower NLL is better: a significant fall is an improvement
    assert sft == ["sft", "nll/nll (↓ better)", "base: 2.300", "2.230", "-0.064 [-0.080, -0.050]* (n=30)",
                   "improved (significant)"]
    assert dpo[2] == "50.0 (chance)" and dpo[3] == "61.7 [53.0, 70.0] (n=128)" and dpo[-1] == "above chance (significant)"
    assert rlvr[2] == "dpo: 50.0" and rlvr[4].startswith("+44.0 [+30.0, +58.0]*") and rlvr[-1] == "improved (significant)"


def test_non_target_notes_say_plainly_whether_anything_dropped():
    primary = {"nc": "accuracy", "if": "acc"}
    notes = non_target_notes(EVALS, STATS, {"rlvr": ["nc/accuracy"]}, primary)
    assert notes == ["if/acc: no significant drop at any stage; base → rlvr -10.0 [-30.0, +5.0] (n=24), so changes "
                     "outside that interval are ruled out."]
    dropped = {**STATS, "deltas": {**STATS["deltas"], "rlvr": {"if/acc": _d(-0.2, -0.35, -0.05, 24)}}}
    assert non_target_notes(EVALS, dropped, {}, {"if": "acc"})[0].startswith("**if/acc dropped significantly**: at rlvr")


def test_raw_metrics_and_counts_are_not_percentages():
    assert fmt("chat_nll/nll", 2.2981) == "2.298" and fmt("x/accuracy", 0.5) == "50.0"
    _, rows = eval_table({"base": {"chat_nll/num_tokens": 8875.0, "chat_nll/nll": 2.3}})
    assert rows == [["chat_nll/nll (↓ better)", "2.300"], ["chat_nll/num_tokens", "8875"]]


def _rows(path, rows):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_generation_stats_lengths_finish_reasons_and_examples(tmp_path):
    def row(i, tokens, finish, out, correct):
        return {"id": str(i), "prompt": f"<|im_start|>user\nq{i}<|im_end|>\n<|im_start|>assistant\n", "output": out,
                "scores": {"correct": correct}, "finish_reason": finish, "num_tokens": tokens}

    _rows(tmp_path / "base" / "t.jsonl", [row(i, 40, "length" if i < 2 else "eos", "long, answer", 0) for i in range(8)])
    _rows(tmp_path / "rlvr" / "t.jsonl", [row(i, 10, "eos", "short", 1) for i in range(8)])
    dirs = {"base": tmp_path / "base", "rlvr": tmp_path / "rlvr"}
    gen = generation_stats(dirs, n_boot=200)
    assert gen["t"]["base"]["cut_rate"] == 0.25 and gen["t"]["base"]["finish"] == {"eos": 6, "length": 2}
    d = gen["t"]["rlvr"]["delta_tokens"]
    assert d["from"] == "base" and d["delta"] == -30.0 and d["significant"]
    _, rows = generation_table(gen)
    assert rows[0][:3] == ["t", "base", "8"] and rows[0][5].startswith("25.0 [")
    exs = examples(tmp_path, ["base", "rlvr"], 2)
    assert [e["id"] for e in exs] == ["0", "1"] and exs[0]["prompt"] == "q0"
    assert exs[0]["outputs"] == [("long, answer", "✗", "length"), ("short", "✓", "eos")]


def test_implicit_reward_accuracy_pairs_the_margins(tmp_path):
    ref = [{"id": str(i), "scores": {"margin": 0.0, "margin_sum": 0.0}} for i in range(10)]
    pol = [{"id": str(i), "scores": {"margin": 0.1 if i < 7 else -0.1, "margin_sum": 1.0 if i < 2 else -1.0}}
           for i in range(10)]
    _rows(tmp_path / "sft" / "preference.jsonl", ref)
    _rows(tmp_path / "dpo" / "preference.jsonl", pol)
    out = implicit_reward_stats({"base": tmp_path / "base", "sft": tmp_path / "sft", "dpo": tmp_path / "dpo"})
    assert list(out) == ["dpo"]  # base scored no preference pairs
    r = out["dpo"]
    assert r["reference"] == "sft" and r["n"] == 10 and r["accuracy"] == 0.7 and r["accuracy_sum"] == 0.2
    assert r["low"] < 0.5 and not r["significant"]  # 7/10: the Wilson interval still holds 50%
