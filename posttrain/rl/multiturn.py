"""Multi-turn rollouts with tools: generate until a tool call closes, run it, append the answer,
continue, within budgets; the whole trajectory is one training sample.

A trajectory's response is every token after the prompt: the model's turns (loss mask 1, with the
engine's log-probs) and the tool answers between them (loss mask 0: they are in the context the
policy is trained on, but not its actions, so they carry no loss, no KL and no importance weight;
their generator log-probs are stored as 0 and never used). Budgets: `max_turns` model turns,
`max_tokens_per_turn` tokens per model turn, and `rollout.max_new_tokens` tokens for the whole
response, tool answers included. A trajectory ends when a turn does not call a tool (its finish
reason is the turn's), or with finish reason "length" when a budget runs out (turns used up on a
call, or no room for the tool's answer and one more token).

The reward is the row's verifier on what the model wrote (its turns joined, tool answers left out,
so a tool's output cannot be graded as the model's answer). Randomness: the first turn draws the
k samples of each prompt as a single-turn rollout does; later turns use one stream per
(prompt position, sample, turn), so a trajectory is the same however the batch is split.
"""

from __future__ import annotations

import dataclasses
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from posttrain.generation import Completion, SamplingParams
from posttrain.rl.env import TOOL_CALL_END, EnvStep, ToolEnv, tool_instructions
from posttrain.rl.tools import build_tools

_TURN_KEY_OFFSET = 1 << 40  # prompt keys of later turns, away from the first turn's positions


@dataclass(frozen=True)
class MultiTurnSettings:
    tools: tuple[str, ...]
    max_turns: int = 4
    max_tokens_per_turn: int | None = None  # None: the whole response budget
    tool_timeout_s: float = 5.0

    @classmethod
    def from_config(cls, rollout) -> "MultiTurnSettings | None":
        """From `rollout.tools` and its budgets; None (single-turn) when no tool is named."""
        if not rollout.tools:
            return None
        return cls(tuple(rollout.tools), rollout.max_turns, rollout.max_tokens_per_turn, rollout.tool_timeout_s)

    def make_env(self) -> ToolEnv:
        return ToolEnv(build_tools(self.tools, self.tool_timeout_s))

    def system_prompt(self) -> str:
        return tool_instructions(build_tools(self.tools, self.tool_timeout_s))

    @staticmethod
    def stats(trajectories: list["Trajectory"]) -> dict[str, float]:
        n = max(len(trajectories), 1)
        tokens = sum(len(t.token_ids) for t in trajectories)
        calls = sum(t.calls for t in trajectories)
        return {"tool/calls": calls / n,
                "tool/errors": sum(t.errors for t in trajectories) / n,
                # the share of calls that parsed and ran; 0 without any call
                "tool/valid": (calls - sum(t.errors for t in trajectories)) / calls if calls else 0.0,
                "tool/used": sum(t.calls > 0 for t in trajectories) / n,
                "turns/mean": sum(t.turns for t in trajectories) / n,
                "tool/token_frac": sum(len(t.loss_mask) - sum(t.loss_mask) for t in trajectories) / max(tokens, 1)}


@dataclass
class Trajectory:
    prompt_index: int
    sample_index: int
    prompt_ids: list[int]
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)
    model_text: list[str] = field(default_factory=list)  # the model's turns
    pieces: list[str] = field(default_factory=list)  # model turns and tool answers, in order (for logs)
    finish_reason: str | None = None
    turns: int = 0
    calls: int = 0
    errors: int = 0

    @property
    def full_text(self) -> str:
        return "".join(self.pieces)

    def add(self, tokens: list[int], logprobs: list[float] | None, text: str) -> None:
        """Append a model turn (with its log-probs) or, with logprobs None, a tool answer (masked)."""
        self.token_ids += tokens
        self.logprobs += logprobs if logprobs is not None else [0.0] * len(tokens)
        self.loss_mask += [1 if logprobs is not None else 0] * len(tokens)
        self.pieces.append(text)
        if logprobs is not None:
            self.model_text.append(text)

    def as_completion(self) -> Completion:
        return Completion(self.prompt_index, self.sample_index, self.prompt_ids, self.token_ids, self.logprobs,
                          "".join(self.model_text), self.finish_reason or "length")


def turn_key(position: int, sample: int, group_size: int, turn: int) -> int:
    """The engine's prompt key of turn `turn` >= 2 of sample `sample` of the prompt at `position`."""
    return _TURN_KEY_OFFSET + (position * group_size + sample) * 1024 + turn


def _turn_text(tokenizer, out: Completion) -> tuple[str, bool]:
    """(what the model wrote in the turn, whether it stopped on a tool call's closing tag). The
    engine cuts `text` before the stop string; the decoded tokens show which one matched."""
    if out.finish_reason != "stop":
        return out.text, False
    rest = tokenizer.decode(out.token_ids, skip_special_tokens=True)[len(out.text):]
    called = rest.startswith(TOOL_CALL_END)
    return out.text + (TOOL_CALL_END if called else ""), called


def generate_trajectories(engine, prompt_ids: list[list[int]], positions: list[int], params: SamplingParams,
                          s: MultiTurnSettings) -> list[Trajectory]:
    """`params.n` trajectories per prompt, in (prompt, sample) order. `params.max_new_tokens` is the
    whole response's budget; `positions` are the prompts' places in the step (the random streams)."""
    tokenizer = engine.tokenizer
    if tokenizer is None:
        raise ValueError("multi-turn rollouts need an engine with a tokenizer")
    k, budget = params.n, params.max_new_tokens
    per_turn = min(s.max_tokens_per_turn or budget, budget)
    stop = tuple(dict.fromkeys(tuple(params.stop) + (TOOL_CALL_END,)))
    trajs = [Trajectory(p, j, prompt_ids[p]) for p in range(len(prompt_ids)) for j in range(k)]
    envs = [s.make_env() for _ in trajs]
    for env in envs:
        env.reset()
    first = dataclasses.replace(params, max_new_tokens=per_turn, stop=stop)
    outs = engine.generate(prompt_ids, first, prompt_keys=positions) if prompt_ids else []
    active = list(range(len(trajs)))
    turn = 1
    while active:
        calls = []
        for i, out in zip(active, outs):
            t = trajs[i]
            text, called = _turn_text(tokenizer, out)
            t.add(list(out.token_ids), list(out.logprobs), text)
            t.turns += 1
            if not called:
                t.finish_reason = out.finish_reason
            elif t.turns >= s.max_turns:
                t.finish_reason = "length"  # out of turns on a call: no end token, as a cut response
            else:
                calls.append((i, text))
        steps = _run_steps([envs[i] for i, _ in calls], [text for _, text in calls])
        active = []
        for (i, _), step in zip(calls, steps):
            t = trajs[i]
            t.calls += 1
            t.errors += step.error
            ids = tokenizer(step.observation, add_special_tokens=False)["input_ids"]
            if len(t.token_ids) + len(ids) + 1 > budget:  # no room for the answer and one more token
                t.finish_reason = "length"
                continue
            t.add(ids, None, step.observation)
            active.append(i)
        if not active:
            break
        turn += 1
        contexts = [trajs[i].prompt_ids + trajs[i].token_ids for i in active]
        plist = [dataclasses.replace(params, n=1, stop=stop,
                                     max_new_tokens=min(per_turn, budget - len(trajs[i].token_ids)))
                 for i in active]
        keys = [turn_key(positions[trajs[i].prompt_index], trajs[i].sample_index, k, turn) for i in active]
        outs = engine.generate(contexts, plist, prompt_keys=keys)
    return trajs


def _run_steps(envs: list[ToolEnv], texts: list[str]) -> list[EnvStep]:
    """Each environment's answer to its turn; several at once (python runs are processes)."""
    if len(envs) <= 1:
        return [e.step(t) for e, t in zip(envs, texts)]
    from posttrain.evaluation.sandbox import default_workers

    with ThreadPoolExecutor(max_workers=min(len(envs), default_workers())) as pool:
        return list(pool.map(lambda et: et[0].step(et[1]), zip(envs, texts)))
