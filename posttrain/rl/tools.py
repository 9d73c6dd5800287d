"""Tools a policy can call in multi-turn rollouts (`rl/env.py`): each takes the call's JSON
arguments and returns the text shown to the model; a `ToolError`'s message is shown instead.

- calculator {"expression": "12 * (3 + 4)"}: arithmetic on int/float literals with + - * / // % **
  and unary signs, evaluated by walking the parsed AST (no eval(): names, attributes, calls,
  subscripts, comprehensions... are refused); bounded sizes, so "9 ** 9 ** 9" is an error, not a hang.
- python {"code": "print(2 ** 10)"}: the program runs in the evaluation sandbox
  (`evaluation/sandbox.py`: a fresh process, rlimits, a wall-clock timeout, no network, no
  subprocesses); the answer is its stdout, plus the error when it fails or times out.
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Protocol


class ToolError(Exception):
    """A failure the model is told about (its message becomes the tool's answer)."""


class Tool(Protocol):
    name: str
    description: str

    def __call__(self, arguments: Mapping[str, Any]) -> str: ...


def _text_argument(arguments: Mapping[str, Any], key: str, tool: str) -> str:
    value = arguments.get(key) if isinstance(arguments, Mapping) else None
    if not isinstance(value, str) or not value.strip():
        raise ToolError(f'{tool} needs a string argument "{key}"')
    return value


# ---------------------------------------------------------------- calculator

_BINARY: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow,
}
_UNARY: dict[type, Callable[[Any], Any]] = {ast.UAdd: operator.pos, ast.USub: operator.neg}
MAX_DIGITS = 100  # |values| below 10**100 at every step of an evaluation


def _check_size(x: int | float) -> int | float:
    if isinstance(x, float) and not math.isfinite(x):
        raise ToolError("the result is not a finite number")
    if abs(x) >= 10 ** MAX_DIGITS:
        raise ToolError(f"a number has more than {MAX_DIGITS} digits")
    return x


def _power(base: int | float, exp: int | float) -> int | float:
    # Bound the size before computing: log10|base^exp| = exp·log10|base|.
    if abs(base) > 1 and exp > 0 and exp * math.log10(abs(base)) >= MAX_DIGITS:
        raise ToolError(f"a number has more than {MAX_DIGITS} digits")
    if base == 0 and exp < 0:
        raise ToolError("division by zero")
    result = base ** exp
    if isinstance(result, complex):
        raise ToolError("the result is not a real number")
    return result


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check_size(node.value)
    if isinstance(node, ast.BinOp) and type(node.op) in _BINARY:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _check_size(_power(left, right))
        try:
            return _check_size(_BINARY[type(node.op)](left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.Name):
        raise ToolError(f"names are not allowed (got {node.id!r}): use numbers and + - * / // % **")
    if isinstance(node, ast.Attribute):
        raise ToolError("attributes are not allowed: use numbers and + - * / // % **")
    raise ToolError(f"{type(node).__name__} is not allowed: use numbers and + - * / // % **")


def calculate(expression: str, max_chars: int = 200) -> int | float:
    """The value of an arithmetic expression, without eval() (see the module docstring)."""
    if len(expression) > max_chars:
        raise ToolError(f"the expression is longer than {max_chars} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError:
        raise ToolError(f"not an arithmetic expression: {expression.strip()[:80]!r}") from None
    return _eval(tree)


def format_number(x: int | float) -> str:
    if isinstance(x, float):
        return str(int(x)) if x.is_integer() and abs(x) < 1e15 else f"{x:.12g}"
    return str(x)


@dataclass(frozen=True)
class Calculator:
    name: str = "calculator"
    description: str = 'Evaluate an arithmetic expression. Arguments: {"expression": "12 * (3 + 4)"}'
    max_chars: int = 200

    def __call__(self, arguments: Mapping[str, Any]) -> str:
        return format_number(calculate(_text_argument(arguments, "expression", self.name), self.max_chars))


# ---------------------------------------------------------------- python

@dataclass(frozen=True)
class PythonTool:
    name: str = "python"
    description: str = 'Run a Python program and see what it prints. Arguments: {"code": "print(2 ** 10)"}'
    timeout_s: float = 5.0
    memory_mb: int = 1024
    max_output_chars: int = 1000

    def __call__(self, arguments: Mapping[str, Any]) -> str:
        from posttrain.evaluation.sandbox import Limits, run_program

        code = _text_argument(arguments, "code", self.name)
        limits = Limits(timeout_s=self.timeout_s, memory_mb=self.memory_mb, allow_subprocess=False,
                        output_chars=self.max_output_chars)
        result = run_program(code, limits)
        out = result.stdout.rstrip()
        if result.status == "timeout":
            out += f"\nError: timed out after {self.timeout_s:g} s"
        elif not result.passed:
            out += f"\nError: {result.error or result.status}"
        return out.strip() or "(no output)"


# ---------------------------------------------------------------- registry

TOOLS: dict[str, Callable[..., Tool]] = {"calculator": Calculator, "python": PythonTool}


def build_tools(names: list[str] | tuple[str, ...], python_timeout_s: float = 5.0) -> dict[str, Tool]:
    """Tools by name (`rollout.tools`), each built once for a run."""
    unknown = [n for n in names if n not in TOOLS]
    if unknown:
        raise ValueError(f"unknown tool(s) {unknown}; known: {sorted(TOOLS)}")
    return {n: PythonTool(timeout_s=python_timeout_s) if n == "python" else TOOLS[n]() for n in names}
