"""The runner's three task kinds: log-likelihood (no generation), sampling (n outputs per
prompt) and batch-scored (a judge), each stored, summarised and resumed like generation tasks."""

import json
from dataclasses import dataclass, field

import pytest

from conftest import tiny_model
from posttrain.evaluation.loglik import encode_pair, score_requests_naive
from posttrain.evaluation.runner import evaluate
from posttrain.evaluation.tasks import GenerationConfig, LoglikOutput, Sample, render_prompt

QUESTIONS = [("q1", "Pick a letter.", [" A", " B", " C"], 1), ("q2", "Pick a word.", [" yes", " no"], 0),
             ("q3", "Pick a number.", [" 1", " 22", " 333", " 4"], 3)]


@dataclass
class ToyChoice:
    name: str = "toy_mc"
    kind: str = "loglik"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=1)
    primary_metric: str = "acc"
    seen: list = field(default_factory=list)

    def load(self, path=None, limit=None):
        return [Sample(id=i, messages=[{"role": "user", "content": q}], assistant_prefix="Answer:",
                       ground_truth=gold, meta={"options": opts}) for i, q, opts, gold in QUESTIONS][:limit]

    def continuations(self, sample):
        return sample.meta["options"]

    def score(self, sample, output):
        assert isinstance(output, LoglikOutput) and output.continuations == sample.meta["options"]
        self.seen.append((sample.id, output))
        best = max(range(len(output.logprobs)), key=output.logprobs.__getitem__)
        return {"acc": float(best == sample.ground_truth), "extracted": best}

    def aggregate(self, scores, samples):
        return {"acc": sum(s["acc"] for s in scores) / len(scores)}


@pytest.fixture(scope="module")
def model():
    return tiny_model(seed=5).eval()


def test_loglik_task_scores_every_continuation_after_the_rendered_prompt(model, tokenizer, tmp_path):
    task = ToyChoice()
    summary = evaluate(model, tokenizer, [task], out_dir=tmp_path, progress=False, log=lambda *_: None)
    got = dict(task.seen)
    for sid, _, opts, _ in QUESTIONS:  # the same numbers as one plain forward per option
        prompt = render_prompt(tokenizer, task.load()[[q[0] for q in QUESTIONS].index(sid)])
        want = score_requests_naive(model, [encode_pair(tokenizer, prompt, o) for o in opts])
        assert got[sid].logprobs == pytest.approx([w.logprob for w in want], abs=1e-4)
        assert got[sid].num_tokens == [w.num_tokens for w in want]
    rows = [json.loads(x) for x in (tmp_path / "toy_mc.jsonl").read_text().splitlines()]
    assert [r["finish_reason"] for r in rows] == ["loglik"] * 3 and all(len(r["output"]["logprobs"]) for r in rows)
    t = summary["tasks"]["toy_mc"]
    assert t["n"] == 3 and t["metrics"]["acc"] == sum(r["scores"]["acc"] for r in rows) / 3
    # resumed: nothing is scored again, the summary is the same
    again = ToyChoice()
    assert evaluate(model, tokenizer, [again], out_dir=tmp_path, progress=False,
                    log=lambda *_: None)["tasks"]["toy_mc"]["metrics"] == t["metrics"]
    assert again.seen == []


@dataclass
class ToySampling:
    name: str = "toy_sampling"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=3, do_sample=True, temperature=1.0, num_samples=4)
    primary_metric: str = "mean_len"
    calls: list = field(default_factory=list)

    def load(self, path=None, limit=None):
        return [Sample(id=str(i), messages=[{"role": "user", "content": f"Say {i}"}], assistant_prefix="",
                       ground_truth=None) for i in range(3)]

    def score(self, sample, outputs):
        assert isinstance(outputs, list) and len(outputs) == 4
        self.calls.append(outputs)
        return {"len": sum(len(o) for o in outputs) / len(outputs)}

    def aggregate(self, scores, samples):
        return {"mean_len": sum(s["len"] for s in scores) / len(scores)}


def test_sampling_task_gets_all_its_samples_and_rows_keep_them(model, tokenizer, tmp_path):
    task = ToySampling()
    summary = evaluate(model, tokenizer, [task], out_dir=tmp_path, seed=3, progress=False, log=lambda *_: None)
    rows = [json.loads(x) for x in (tmp_path / "toy_sampling.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["output"]) == 4 == len(r["finish_reason"]) == len(r["num_tokens"])
                                  for r in rows)
    assert [r["output"] for r in rows] == task.calls  # prompts are sorted by length; here all are equally long
    assert summary["tasks"]["toy_sampling"]["generated_tokens"] == sum(sum(r["num_tokens"]) for r in rows)
    assert sum(summary["tasks"]["toy_sampling"]["finish_reasons"].values()) == 12


@dataclass
class ToyJudged:
    name: str = "toy_judged"
    generation: GenerationConfig = GenerationConfig(max_new_tokens=2)
    primary_metric: str = "win"
    batches: list = field(default_factory=list)

    def load(self, path=None, limit=None):
        return [Sample(id=str(i), messages=[{"role": "user", "content": f"Hi {i}"}], assistant_prefix="",
                       ground_truth=None) for i in range(5)]

    def score(self, sample, output):
        raise AssertionError("score_batch replaces score")

    def score_batch(self, samples, outputs):
        self.batches.append([s.id for s in samples])
        return [{"win": float(i % 2 == 0)} for i, _ in enumerate(outputs)]

    def aggregate(self, scores, samples):
        return {"win": sum(s["win"] for s in scores) / len(scores)}


def test_batch_scored_task_is_judged_once_per_engine_call(model, tokenizer):
    task = ToyJudged()
    evaluate(model, tokenizer, [task], batch_size=2, flush_every=2, progress=False, log=lambda *_: None)
    assert [len(b) for b in task.batches] == [2, 2, 1] and sorted(sum(task.batches, [])) == [str(i) for i in range(5)]


def test_a_suite_skips_tasks_without_data_and_says_so(model, tokenizer, tmp_path):
    from posttrain.config import load_config
    from posttrain.evaluation.tasks.base import MissingData, package_file
    from posttrain.recipes.eval import EvalConfig

    class Absent(ToyChoice):
        def load(self, path=None, limit=None):
            return [] if package_file("no_such_pkg_xyz", "data.jsonl", "pip install no-such-pkg", "absent") else []

    present, absent = ToyChoice(), Absent(name="absent")
    summary = evaluate(model, tokenizer, [present, absent], out_dir=tmp_path, progress=False, log=lambda *_: None,
                       missing_data="skip")
    assert list(summary["tasks"]) == ["toy_mc"] and "pip install no-such-pkg" in summary["skipped"]["absent"]
    assert "absent: absent: no test data" in (tmp_path / "summary.md").read_text()
    with pytest.raises(MissingData, match="--data absent=PATH"):
        evaluate(model, tokenizer, [Absent(name="absent")], progress=False, log=lambda *_: None)
    cfg = load_config(EvalConfig, None, ["suite=quick"])
    assert cfg.tasks == ["gsm8k", "math500", "ifeval"]
    with pytest.raises(ValueError, match="tasks or suite"):
        load_config(EvalConfig, None, ["suite=quick", "tasks=[gsm8k]"])


def test_failed_judge_calls_are_asked_again_on_resume(model, tokenizer, tmp_path):
    @dataclass
    class Flaky(ToyJudged):
        fail: bool = True

        def score_batch(self, samples, outputs):
            self.batches.append([s.id for s in samples])
            return [{"win": 0.0 if self.fail else 1.0, "judge_error": "timeout" if self.fail and s.id == "3" else None}
                    for s in samples]

    first = Flaky()
    evaluate(model, tokenizer, [first], out_dir=tmp_path, progress=False, log=lambda *_: None)
    again = Flaky(fail=False)
    summary = evaluate(model, tokenizer, [again], out_dir=tmp_path, progress=False, log=lambda *_: None)
    assert again.batches == [["3"]]  # only the failed one is judged again; nothing is generated
    assert summary["tasks"]["toy_judged"]["metrics"]["win"] == pytest.approx(1 / 5)
