"""Multi-turn rollouts with tools: the tool-call parser, the calculator (no eval, names and
attributes refused), the sandboxed python tool, trajectories from a scripted engine (tool output
masked out of the loss, budgets), and a GRPO run whose first turn is a scripted tool call."""

import ast
import json
import re
from pathlib import Path

import pytest

from posttrain.config import load_config
from posttrain.data.rlvr import RLVRRow
from posttrain.generation import Completion, Engine
from posttrain.rl import tools as tools_module
from posttrain.rl.env import RESPONSE_TEMPLATE, ToolCallError, ToolEnv, parse_tool_call, tool_instructions
from posttrain.rl.multiturn import MultiTurnSettings, generate_trajectories
from posttrain.rl.rollouts import Prompt, RolloutSettings, generate_rollouts
from posttrain.rl.tools import Calculator, PythonTool, ToolError, build_tools, calculate
from posttrain.generation import SamplingParams
from posttrain.train.metrics import read_metrics


# ---------------------------------------------------------------- parser and environment

def test_parse_tool_calls():
    call = parse_tool_call('Let me compute. <tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}'
                           '</tool_call>')
    assert (call.name, call.arguments) == ("calculator", {"expression": "2+3"})
    as_string = parse_tool_call('<tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}</tool_call>')
    assert as_string.arguments == {"code": "print(1)"}
    assert parse_tool_call('<tool_call>{"name": "calculator"}</tool_call>').arguments == {}
    for text, message in [('<tool_call>{"name": calculator}</tool_call>', "not valid JSON"),
                          ('<tool_call>["calculator"]</tool_call>', "JSON object"),
                          ('<tool_call>{"arguments": {}}</tool_call>', "JSON object"),
                          ('<tool_call>{"name": "c", "arguments": [1]}</tool_call>', '"arguments" must be'),
                          ('{"name": "c"}</tool_call>', "without <tool_call>")]:
        with pytest.raises(ToolCallError, match=message):
            parse_tool_call(text)


def test_tool_env_answers_calls_errors_and_unknown_tools():
    env = ToolEnv(build_tools(["calculator"]))
    env.reset()
    assert env.step("The answer is 4.").done
    ok = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "12 * (3 + 4)"}}</tool_call>')
    assert not ok.done and ok.observation == RESPONSE_TEMPLATE.format(result="84") and not ok.error
    unknown = env.step('<tool_call>{"name": "search", "arguments": {"q": "x"}}</tool_call>')
    assert unknown.error and "Error: unknown tool 'search'; available: calculator" in unknown.observation
    bad = env.step('<tool_call>{"name": </tool_call>')
    assert bad.error and "not valid JSON" in bad.observation
    failed = env.step('<tool_call>{"name": "calculator", "arguments": {"expression": "1/0"}}</tool_call>')
    assert failed.error and "division by zero" in failed.observation
    assert env.calls == 4
    assert "calculator:" in tool_instructions(env.tools)
    with pytest.raises(ValueError, match="unknown tool"):
        build_tools(["calculator", "shell"])


def test_calculator_evaluates_arithmetic_without_eval():
    for expr, want in [("12 * (3 + 4)", "84"), ("7 / 2", "3.5"), ("6 / 3", "2"), ("2 ** 10", "1024"),
                       ("-3 + +5", "2"), ("10 // 3", "3"), ("10 % 3", "1"), ("0.1 + 0.2", "0.3"), ("2 ** -1", "0.5")]:
        assert Calculator()({"expression": expr}) == want, expr
    refused = {"x + 1": "names are not allowed", "__import__('os').system('ls')": "Call is not allowed",
               "(1).real": "attributes are not allowed", "9 ** 9 ** 9": "more than 100 digits",
               "[1, 2]": "List is not allowed", "'a' * 3": "Constant is not allowed", "True + 1": "Constant",
               "1 if 1 else 2": "IfExp", "1 +": "not an arithmetic expression", "(-8) ** 0.5": "not a real number",
               "1" * 300: "longer than 200"}
    for expr, message in refused.items():
        with pytest.raises(ToolError, match=re.escape(message)):
            calculate(expr)
    with pytest.raises(ToolError, match='"expression"'):
        Calculator()({"expr": "1"})
    tree = ast.parse(Path(tools_module.__file__).read_text())
    called = {n.func.id for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
    assert not called & {"eval", "exec", "compile", "__import__"}  # only the AST walker `_eval`


def test_python_tool_runs_in_the_sandbox():
    tool = PythonTool(timeout_s=0.5)
    assert tool({"code": "print(2 ** 10)"}) == "1024"
    assert tool({"code": "print('a')\n1 / 0"}) == "a\nError: ZeroDivisionError"
    assert "timed out after 0.5 s" in tool({"code": "while True:\n    pass"})
    assert tool({"code": "x = 1"}) == "(no output)"
    assert "Error" in tool({"code": "import socket\nsocket.create_connection(('example.com', 80))"})


# ---------------------------------------------------------------- trajectories from a scripted engine

CALL = '<tool_call>{"name":"calculator","arguments":{"expression":"6*7"}}</tool_call>'


def after_tool(tokenizer, ids) -> bool:
    return tokenizer.decode(ids).endswith("</tool_response>\n")


class ScriptedEngine:
    """Answers like the engine does: the first turn calls the calculator, later turns answer; token
    ids hold the stop string (or the end token), the text stops before it."""

    def __init__(self, tokenizer, answer="The answer is 42."):
        self.tokenizer, self.answer, self.calls = tokenizer, answer, []

    def generate(self, prompts, params, prompt_keys=None):
        plist = params if isinstance(params, list) else [params] * len(prompts)
        self.calls.append((prompts, plist, prompt_keys))
        outs = []
        for i, (p, sp) in enumerate(zip(prompts, plist)):
            later = after_tool(self.tokenizer, p)
            text, finish = (self.answer, "eos") if later else (CALL[:-len("</tool_call>")], "stop")
            ids = self.tokenizer(self.answer if later else CALL, add_special_tokens=False)["input_ids"]
            ids = ids + [self.tokenizer.eos_token_id] if later else ids
            for j in range(sp.n):
                outs.append(Completion(i, j, list(p), ids, [-0.5] * len(ids), text, finish))
        return outs


def test_trajectories_mask_tool_output_and_respect_budgets(tokenizer):
    engine = ScriptedEngine(tokenizer)
    settings = MultiTurnSettings(("calculator",), max_turns=3, max_tokens_per_turn=40)
    params = SamplingParams(max_new_tokens=120, n=2, seed=1, stop=("\n\n",))
    trajs = generate_trajectories(engine, [[1, 100, 200]], [5], params, settings)
    call_ids = tokenizer(CALL, add_special_tokens=False)["input_ids"]
    tool_ids = tokenizer(RESPONSE_TEMPLATE.format(result="42"), add_special_tokens=False)["input_ids"]
    answer_ids = tokenizer("The answer is 42.", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert len(trajs) == 2
    for t in trajs:
        assert t.token_ids == call_ids + tool_ids + answer_ids
        assert t.loss_mask == [1] * len(call_ids) + [0] * len(tool_ids) + [1] * len(answer_ids)
        assert t.logprobs == [-0.5] * len(call_ids) + [0.0] * len(tool_ids) + [-0.5] * len(answer_ids)
        assert (t.turns, t.calls, t.errors, t.finish_reason) == (2, 1, 0, "eos")
        assert t.as_completion().text == CALL + "The answer is 42."  # the model's turns only
        assert "<tool_response>\n42\n</tool_response>" in t.full_text
    first, second = engine.calls
    assert "</tool_call>" in first[1][0].stop and "\n\n" in first[1][0].stop and first[2] == [5]
    assert first[1][0].max_new_tokens == 40 and len(second[0]) == 2 and len(set(second[2])) == 2  # own streams
    assert second[1][0].n == 1 and second[0][0] == [1, 100, 200] + call_ids + tool_ids
    # out of turns on a call: no tool answer appended, cut like a response at the length limit
    t = generate_trajectories(engine, [[1, 100]], [0], params, MultiTurnSettings(("calculator",), max_turns=1))[0]
    assert (t.token_ids, t.finish_reason, t.calls) == (call_ids, "length", 0)
    # no room for the tool answer in the response budget
    small = SamplingParams(max_new_tokens=len(call_ids) + 3, n=1, seed=1)
    t = generate_trajectories(engine, [[1, 100]], [0], small, settings)[0]
    assert (t.token_ids, t.finish_reason, t.calls) == (call_ids, "length", 1)


def test_rollout_batch_and_training_samples_carry_the_loss_mask(tokenizer):
    from posttrain.recipes.rlvr import train_samples

    engine = ScriptedEngine(tokenizer)
    row = RLVRRow([{"role": "user", "content": "What is 6 times 7?"}], "42", "gsm8k")
    s = RolloutSettings(group_size=2, max_new_tokens=120, multiturn=MultiTurnSettings(("calculator",)))
    batch = generate_rollouts(engine, [Prompt(row, [1, 100, 200])], [0], step=0, version=0, seed=0, s=s)
    assert batch.rewards.tolist() == [10.0, 10.0]  # the verifier reads "...The answer is 42."
    assert batch.stats()["tool/calls"] == 1.0 and batch.stats()["turns/mean"] == 2.0
    samples = train_samples(batch, [0, 1])
    mask = samples.token["loss_mask"][0]
    n_tool = len(tokenizer(RESPONSE_TEMPLATE.format(result="42"), add_special_tokens=False)["input_ids"])
    assert mask.shape == (len(batch.response_ids[0]),) and int((mask == 0).sum()) == n_tool
    assert samples.trained_tokens(0) == len(batch.response_ids[0]) - n_tool
    assert "<tool_response>" in batch.samples[0]["response"] and "<tool_response>" not in batch.texts[0]


def test_tool_prompt_system_turn(tokenizer):
    from posttrain.rl.rollouts import encode_prompts

    system = MultiTurnSettings(("calculator",)).system_prompt()
    assert system == tool_instructions(build_tools(["calculator"])) and "calculator:" in system
    plain = RLVRRow([{"role": "user", "content": "What is 6 times 7?"}], "42", "gsm8k")
    own = RLVRRow([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}], "1", "gsm8k")
    with_tools, unchanged = encode_prompts(tokenizer, [plain, own], 4096, system=system)
    assert "You can call tools." in tokenizer.decode(with_tools.ids)
    assert "You can call tools." not in tokenizer.decode(unchanged.ids) and "Be brief." in tokenizer.decode(unchanged.ids)
    assert with_tools.row is plain  # the row itself (and what is logged of it) is not rewritten
    assert "You can call tools." not in tokenizer.decode(encode_prompts(tokenizer, [plain], 4096)[0].ids)


def test_heldout_eval_runs_multi_turn_with_tools(tokenizer):
    from posttrain.evaluation.heldout import evaluate_prompts

    rows = [RLVRRow([{"role": "user", "content": "What is 6 times 7?"}], "42", "gsm8k"),
            RLVRRow([{"role": "user", "content": "What is 6 times 7 minus 1?"}], "41", "gsm8k")]
    prompts = [Prompt(r, [1, 100 + i]) for i, r in enumerate(rows)]
    res = evaluate_prompts(ScriptedEngine(tokenizer), prompts, 120, tools=MultiTurnSettings(("calculator",)))
    # both call the calculator once (valid), then answer 42: right for the first row only
    assert res["accuracy"] == 0.5 and res["tool/calls"] == 1.0 and res["tool/valid"] == 1.0
    assert res["tool/used"] == 1.0 and res["turns/mean"] == 2.0 and res["truncated_rate"] == 0.0
    call_ids = tokenizer(CALL, add_special_tokens=False)["input_ids"]
    assert res["response_len"] > len(call_ids)  # tool answer and final turn included

    class BadCalls(ScriptedEngine):  # the first turn's call is not JSON; the env answers "Error: ..."
        def generate(self, prompts, params, prompt_keys=None):
            outs = super().generate(prompts, params, prompt_keys)
            bad = '<tool_call>{"name": calc</tool_call>'
            ids = self.tokenizer(bad, add_special_tokens=False)["input_ids"]
            return [o if o.finish_reason != "stop" else Completion(o.prompt_index, o.sample_index, o.prompt_token_ids, ids,
                                                                   [-0.5] * len(ids), bad[:-len("</tool_call>")], "stop")
                    for o in outs]

    res = evaluate_prompts(BadCalls(tokenizer), prompts, 120, tools=MultiTurnSettings(("calculator",)))
    assert res["tool/calls"] == 1.0 and res["tool/errors"] == 1.0 and res["tool/valid"] == 0.0
    single = evaluate_prompts(ScriptedEngine(tokenizer), prompts[:1], 120)  # no tools: one turn, no tool keys
    assert "tool/calls" not in single


# ---------------------------------------------------------------- end to end

def test_multi_turn_grpo_trains_on_whole_trajectories(tiny_model_dir, tmp_path, monkeypatch):
    """The tiny random model never writes a tool call, so its first turn is scripted (a compact
    calculator call); the engine itself writes the rest after the tool's answer."""
    from posttrain.recipes.rlvr import RLVRConfig, main

    original = Engine.generate

    def generate(self, prompts, params=None, **kw):
        plist = params if isinstance(params, list) else [params] * len(prompts)
        # the system turn names <tool_response> too: a later turn is one whose context ends with the tool's answer
        if any(after_tool(self.tokenizer, p) for p in prompts):
            return original(self, prompts, params, **kw)
        ids = self.tokenizer(CALL, add_special_tokens=False)["input_ids"]
        return [Completion(i, j, list(p), list(ids), [0.0] * len(ids), CALL[:-len("</tool_call>")], "stop")
                for i, (p, sp) in enumerate(zip(prompts, plist)) for j in range(sp.n)]

    monkeypatch.setattr(Engine, "generate", generate)
    words = json.dumps({"func_name": "validate_word_constraint", "N": 5, "quantifier": "at least"})
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join(json.dumps({"messages": [{"role": "user", "content": c}], "ground_truth": words,
                                        "dataset": "ifeval"}) + "\n" for c in ("Compute 6 times 7.", "Say hi.")))
    out = tmp_path / "mt"
    main(load_config(RLVRConfig, None, [
        f"model.name_or_path={tiny_model_dir}", f"data.paths=[{rows}]", "rollout.prompts_per_step=2",
        "rollout.samples_per_prompt=4", "rollout.max_new_tokens=64", "rollout.max_tokens_per_turn=8",
        "rollout.tools=[calculator]", "rollout.max_turns=2", "train.tis_cap=null", "train.filter_constant_groups=false",
        "optim.lr=2e-2", "kl.beta=0.01", "train.max_steps=2", "run.progress=false", f"run.output_dir={out}",
        f"eval.paths=[{rows}]", "eval.at_start=true"]))
    every = read_metrics(out)
    evals = [r for r in every if "eval/rows/accuracy" in r]
    # held-out evaluation runs multi-turn in the same environment: the scripted call, then the answer
    assert [r["step"] for r in evals] == [0, 2]
    assert all(r["eval/rows/tool/calls"] == 1.0 and r["eval/rows/tool/valid"] == 1.0 for r in evals)
    metrics = [r for r in every if "reward/mean" in r]
    assert [r["step"] for r in metrics] == [1, 2]
    assert all(r["tool/calls"] == 1.0 and r["turns/mean"] == 2.0 and 0 < r["tool/token_frac"] < 1 for r in metrics)
    assert all(r["optimizer_steps"] == 1 and r["samples/trained"] == 8 for r in metrics)
    assert any(r["reward/std"] > 0 and r["grad_norm"] > 0 for r in metrics)  # trained on varied trajectories
    logged = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines()]
    assert all("<tool_response>\n42\n</tool_response>" in s["response"] for s in logged)
