"""Environments for multi-turn rollouts: the model writes, the environment answers, until done.

The protocol is `reset(row)` at the start of a trajectory, then `step(text)` after every model
turn: `text` is what the model wrote in that turn (a turn that called a tool ends with the closing
tag). The answer is an `EnvStep`: the observation to append as the next turn's prefix, or done.

`ToolEnv` is the one we ship: tool calls in the Hermes / Qwen format

    <tool_call>{"name": "calculator", "arguments": {"expression": "12 * 7"}}</tool_call>

are parsed, run (`rl/tools.py`), and answered with the result inside `<tool_response>` tags. A
malformed call (bad JSON, not an object, no name, unknown tool) or a failing tool is answered with
"Error: ..." so the model can recover; `EnvStep.error` counts it. A turn without a closed call ends
the trajectory; the reward is the row's verifier, as in single-turn rollouts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Mapping, Protocol

from posttrain.rl.tools import Tool, ToolError

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
# The tool's answer, appended in the assistant's turn (no role switch, so any chat template works).
RESPONSE_TEMPLATE = "\n<tool_response>\n{result}\n</tool_response>\n"


class ToolCallError(ValueError):
    """A call the environment cannot run; the message is shown to the model."""


@dataclass(frozen=True)
class ToolCall:
    name: str
    arguments: dict[str, Any]


@dataclass(frozen=True)
class EnvStep:
    observation: str | None  # text appended before the next model turn; None when done
    done: bool
    tool: str | None = None  # the tool called (None: no call, or one that could not be parsed)
    error: bool = False  # the call was malformed, named an unknown tool, or the tool failed


class Environment(Protocol):
    def reset(self, row: Any = None) -> None: ...

    def step(self, text: str) -> EnvStep: ...


def has_tool_call(text: str) -> bool:
    """Did the model's turn end on a tool call's closing tag (where its generation stops)?"""
    return text.rstrip().endswith(TOOL_CALL_END)


def parse_tool_call(text: str) -> ToolCall:
    """The last call in `text`: the JSON object between <tool_call> and </tool_call>, with a string
    "name" and an object "arguments" (or a JSON string of one, as some models write)."""
    end = text.rfind(TOOL_CALL_END)
    end = len(text) if end < 0 else end
    start = text.rfind(TOOL_CALL_START, 0, end)
    if start < 0:
        raise ToolCallError(f"{TOOL_CALL_END} without {TOOL_CALL_START}")
    body = text[start + len(TOOL_CALL_START):end].strip()
    try:
        call = json.loads(body)
    except ValueError as e:
        raise ToolCallError(f"the tool call is not valid JSON ({getattr(e, 'msg', e)})") from None
    if not isinstance(call, dict) or not isinstance(call.get("name"), str):
        raise ToolCallError('a tool call is a JSON object {"name": ..., "arguments": {...}}')
    arguments = call.get("arguments", {})
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments)
        except ValueError:
            pass
    if not isinstance(arguments, dict):
        raise ToolCallError('"arguments" must be a JSON object')
    return ToolCall(call["name"], arguments)


def tool_instructions(tools: Mapping[str, Tool]) -> str:
    """A system-prompt paragraph that tells a model which tools it has and how to call them."""
    lines = [f"- {t.name}: {t.description}" for t in tools.values()]
    return ("You can call tools. To call one, write <tool_call>{\"name\": NAME, \"arguments\": {...}}</tool_call>; "
            "its answer comes back inside <tool_response> tags. Tools:\n" + "\n".join(lines))


class ToolEnv:
    """Runs the tool calls a model writes (module docstring); one instance per trajectory."""

    def __init__(self, tools: Mapping[str, Tool], response_template: str = RESPONSE_TEMPLATE):
        self.tools = dict(tools)
        self.response_template = response_template
        self.calls = 0

    def reset(self, row: Any = None) -> None:
        self.calls = 0

    def step(self, text: str) -> EnvStep:
        if not has_tool_call(text):
            return EnvStep(None, True)
        self.calls += 1
        name, error = None, False
        try:
            call = parse_tool_call(text)
            name = call.name
            if name not in self.tools:
                raise ToolCallError(f"unknown tool {name!r}; available: {', '.join(sorted(self.tools))}")
            result = self.tools[name](call.arguments)
        except (ToolCallError, ToolError) as e:
            result, error = f"Error: {e}", True
        return EnvStep(self.response_template.format(result=result), False, name, error)
