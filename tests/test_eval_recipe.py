"""`posttrain eval`: files and fields, resume after a kill, one-line errors, summary == JSONL."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import shared, subprocess_env
from posttrain.config import parse_argv
from posttrain.recipes.eval import FLAG_ALIASES, EvalConfig, evaluate
from posttrain.generation import Completion, Engine
from posttrain.evaluation.tasks import get_task, render_prompt
from posttrain.evaluation.tasks.minerva_math import MathScorer, MathTask

def cli(argv):
    from posttrain.cli import main

    return main(["eval", *argv])


def parse_cli(argv):
    return parse_argv(argv, EvalConfig, FLAG_ALIASES)


ROW_FIELDS = {"task", "id", "prompt", "output", "extracted", "scores", "finish_reason", "num_tokens"}


def rows(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


class CountingEngine:
    """The real engine, counting the prompts it is asked to complete."""

    def __init__(self, model, tokenizer, **kw):
        self.engine = Engine(model, tokenizer, **kw)
        self.prompts = 0

    def generate(self, prompts, params):
        self.prompts += len(prompts)
        return self.engine.generate(prompts, params)


class ScriptedEngine:
    """Answers each prompt with a fixed text chosen by a substring of the prompt."""

    def __init__(self, tokenizer, script: dict[str, str]):
        self.tokenizer, self.script = tokenizer, script

    def generate(self, prompts, params):
        outs = []
        for i, ids in enumerate(prompts):
            text = self.tokenizer.decode(ids)
            tail = text[-600:]  # the test question is the last user turn
            hits = [out for key, out in self.script.items() if key in tail]
            assert len(hits) == 1, tail
            toks = self.tokenizer(hits[0], add_special_tokens=False)["input_ids"]
            outs.append(Completion(i, 0, list(ids), toks, [], hits[0], "eos"))
        return outs


@pytest.fixture(scope="module")
def tiny(tiny_model_dir, tokenizer):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


def test_cli_writes_rows_summary_and_table(tiny_model_dir, tokenizer, tmp_path, monkeypatch):
    out = tmp_path / "run"
    rc = cli(["--model", tiny_model_dir, "--tasks", "gsm8k,math500,ifeval", "--limit", "3",
              "--output-dir", str(out), "--max-new-tokens", "4", "--batch-size", "2", "--no-progress"])
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["tasks"]) == {"gsm8k", "math500", "ifeval"}
    for name in ("gsm8k", "math500", "ifeval"):
        got = rows(out / f"{name}.jsonl")
        assert len(got) == 3 and all(ROW_FIELDS <= set(r) for r in got)
        samples = get_task(name).load(limit=3)
        assert {r["id"] for r in got} == {s.id for s in samples}
        by_id = {r["id"]: r for r in got}
        for s in samples:  # the exact prompt string the task defines, prefix included
            assert by_id[s.id]["prompt"] == render_prompt(tokenizer, s)
        assert all(r["task"] == name and 1 <= r["num_tokens"] <= 4 for r in got)
        assert all(r["finish_reason"] in ("eos", "stop", "length") for r in got)
        t = summary["tasks"][name]
        assert t["n"] == 3 and t["generated_tokens"] == sum(r["num_tokens"] for r in got)
        assert t["primary_metric"] in t["metrics"] and t["generation_s"] > 0
    assert rows(out / "gsm8k.jsonl")[0]["prompt"].endswith("Answer:")
    assert set(summary["tasks"]["ifeval"]["metrics"]) >= {"prompt_level_strict_acc", "prompt_level_loose_acc",
                                                          "inst_level_strict_acc", "inst_level_loose_acc"}
    table = (out / "summary.md").read_text()
    assert "| gsm8k | 3 | **exact_match** |" in table and "prompt_level_loose_acc" in table
    assert "model: " in (out / "config.yaml").read_text()

    # re-running the finished command generates nothing, so the model is never loaded
    def no_model(*a, **k):
        raise AssertionError("the model was loaded for a finished run")

    monkeypatch.setattr("posttrain.evaluation.runner.load_eval_model", no_model)
    assert cli(["--model", tiny_model_dir, "--tasks", "ifeval", "--limit", "3", "--output-dir", str(out),
                "--max-new-tokens", "4", "--no-progress"]) == 0
    again = json.loads((out / "summary.json").read_text())
    assert set(again["tasks"]) == {"gsm8k", "math500", "ifeval"}  # earlier tasks are kept
    assert again["tasks"]["ifeval"]["metrics"] == summary["tasks"]["ifeval"]["metrics"]


def test_resume_skips_finished_samples_and_repairs_a_torn_row(tiny, tokenizer, tmp_path):
    out = tmp_path / "run"
    kw = dict(tasks=["gsm8k"], out_dir=out, max_new_tokens=3, progress=False, log=lambda m: None)
    first = CountingEngine(tiny, tokenizer, max_batch_size=2)
    evaluate(tiny, tokenizer, limit=2, engine=first, **kw)
    assert first.prompts == 2
    before = (out / "gsm8k.jsonl").read_text().splitlines()

    bigger = CountingEngine(tiny, tokenizer, max_batch_size=2)
    evaluate(tiny, tokenizer, limit=4, engine=bigger, **kw)
    assert bigger.prompts == 2  # only the two new samples
    after = (out / "gsm8k.jsonl").read_text().splitlines()
    assert after[:2] == before and len(after) == 4

    # a kill in the middle of writing the last row leaves a torn line without its newline
    text = (out / "gsm8k.jsonl").read_text()
    (out / "gsm8k.jsonl").write_text(text[: len(text) - len(after[-1]) // 2 - 1])
    again = CountingEngine(tiny, tokenizer, max_batch_size=2)
    summary = evaluate(tiny, tokenizer, limit=4, engine=again, **kw)
    assert again.prompts == 1
    assert [json.loads(r)["id"] for r in (out / "gsm8k.jsonl").read_text().splitlines()][:3] == \
        [json.loads(r)["id"] for r in after[:3]]
    assert summary["tasks"]["gsm8k"]["n"] == 4 and len(rows(out / "gsm8k.jsonl")) == 4

    done = CountingEngine(tiny, tokenizer, max_batch_size=2)
    evaluate(tiny, tokenizer, limit=4, engine=done, **kw)
    assert done.prompts == 0

    with pytest.raises(ValueError, match="max_new_tokens"):  # other settings: refuse to mix rows
        evaluate(tiny, tokenizer, limit=4, engine=done, **{**kw, "max_new_tokens": 5})


def test_summary_equals_metrics_recomputed_from_jsonl(tokenizer, tmp_path):
    gsm = get_task("gsm8k").load(limit=4)
    math = get_task("math500").load(limit=3)
    ife = get_task("ifeval").load(limit=3)
    q = lambda s: s.messages[-1]["content"][-80:]  # noqa: E731
    script = {
        q(gsm[0]): f"So the answer is {gsm[0].ground_truth}.",
        q(gsm[1]): "So the answer is 99999.",
        q(gsm[2]): f"12 + 3 = 15. So the answer is {gsm[2].ground_truth}.",
        q(gsm[3]): "I do not know.",
        q(math[0]): "I do not know.",  # gold (3, pi/2)
        q(math[1]): "So the expression is $\\boxed{p-q}$.",  # gold "p - q": flex only
        q(math[2]): "Final Answer: The final answer is $\\frac{14}{3}$. I hope it is correct.",
        q(ife[0]): "*one* *two* *three* no commas here",  # no_comma ok, 3 highlights ok, < 300 words
        q(ife[1]): "Sure, here it is:\nThou shalt travel to Kyoto",  # comma only in the first line
        q(ife[2]): "[name] [address]",  # 2 placeholders, 12 asked
    }
    tasks = ["gsm8k", MathTask(name="math500", scorer=MathScorer(timeout_s=60, budget_s=120)), "ifeval"]
    summary = {}
    for task, limit in zip(tasks, (4, 3, 3)):
        s = evaluate(None, tokenizer, [task], limit, tmp_path, engine=ScriptedEngine(tokenizer, script),
                     progress=False, log=lambda m: None)
        summary.update(s["tasks"])
    saved = json.loads((tmp_path / "summary.json").read_text())["tasks"]
    assert {k: v["metrics"] for k, v in saved.items()} == {k: v["metrics"] for k, v in summary.items()}

    g = rows(tmp_path / "gsm8k.jsonl")
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    assert summary["gsm8k"]["metrics"]["exact_match"] == mean([r["scores"]["exact_match"] for r in g]) == 0.5
    assert {r["id"]: r["extracted"] for r in g}["gsm8k/1"] == "99999"

    m = rows(tmp_path / "math500.jsonl")
    mm = summary["math500"]["metrics"]
    assert mm["exact_match_flex"] == mean([r["scores"]["exact_match_flex"] for r in m]) == pytest.approx(2 / 3)
    assert mm["exact_match"] == mean([r["scores"]["exact_match"] for r in m]) == pytest.approx(1 / 3)

    i = rows(tmp_path / "ifeval.jsonl")
    im = summary["ifeval"]["metrics"]
    flat = lambda mode: [x for r in i for x in r["scores"][f"inst_level_{mode}"]]  # noqa: E731
    for mode in ("strict", "loose"):
        assert im[f"prompt_level_{mode}_acc"] == mean([all(r["scores"][f"inst_level_{mode}"]) for r in i])
        assert im[f"inst_level_{mode}_acc"] == mean(flat(mode))
    # by hand: strict [T,T,F] [F] [F]; loose [T,T,F] [T] [F]
    assert (im["prompt_level_strict_acc"], im["prompt_level_loose_acc"]) == (0.0, pytest.approx(1 / 3))
    assert (im["inst_level_strict_acc"], im["inst_level_loose_acc"]) == (pytest.approx(2 / 5), pytest.approx(3 / 5))


def _run_cli(*args):
    return subprocess.run([sys.executable, "-m", "posttrain.cli", "eval", *args], env=subprocess_env(),
                          capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [
    (["--model", "/nonexistent/model-dir", "--tasks", "gsm8k"], "/nonexistent/model-dir"),
    (["--tasks", "gsm8k,nosuchtask"], "unknown task 'nosuchtask'"),
])
def test_cli_errors_are_one_line_with_exit_code_2(args, needle):
    proc = _run_cli(*args, "--limit", "1")
    assert proc.returncode == 2, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("posttrain eval: error:") and needle in lines[0], proc.stderr


def test_unreadable_data_is_one_error_line(tiny_model_dir, tmp_path, capsys):
    from posttrain.cli import main

    bad = tmp_path / "bad.jsonl"
    bad.write_text(Path(shared("gsm8k/test.jsonl")).read_text().splitlines()[0] + "\n{not json\n")
    cases = [(f"data.gsm8k={tmp_path / 'missing.jsonl'}", "missing.jsonl"), (f"data.gsm8k={bad}", f"{bad}:2")]
    for override, needle in cases:
        rc = main(["eval", f"model={tiny_model_dir}", "tasks=gsm8k", override, f"output_dir={tmp_path / 'o'}"])
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
        assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_flags_yaml_and_overrides_build_one_config(tmp_path):
    from posttrain.config import load_config

    cfg_file = tmp_path / "eval.yaml"
    cfg_file.write_text("model: smollm2-135m\ntasks: [ifeval]\nbatch_size: 8\n")
    path, overrides, want_help = parse_cli([str(cfg_file), "--tasks", "gsm8k,math500", "--limit=5",
                                            "--data", "gsm8k=/x.jsonl", "--overwrite", "seed=3"])
    cfg = load_config(EvalConfig, path, overrides)
    assert not want_help
    assert (cfg.tasks, cfg.limit, cfg.batch_size, cfg.data, cfg.overwrite, cfg.seed) == \
        (["gsm8k", "math500"], 5, 8, {"gsm8k": "/x.jsonl"}, True, 3)
    with pytest.raises(ValueError, match="--bogus"):
        parse_cli(["--bogus", "1"])
    with pytest.raises(ValueError, match="data.ifeval"):
        load_config(EvalConfig, None, ["tasks=gsm8k", "data.ifeval=/y.jsonl"])
