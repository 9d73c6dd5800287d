"""Write the calculator-tool task: GSM8K-style word problems whose arithmetic (2–3 digit products,
sums of products) a 135M model gets wrong in its head but can hand to the `calculator` tool.

- data/rlvr/calc_train.jsonl (256) and calc_eval.jsonl (64): RLVR rows (`dataset: gsm8k`, the
  answer as `ground_truth`), graded by the GSM8K verifier on the model's own turns;
- data/sft/calc_tool_sft.jsonl (64): a warm start, conversations (the tools' system turn, as RLVR
  gives it, then the problem) whose assistant turn calls the
  calculator once in the Hermes format and states the answer, with the tool's answer written
  exactly as `rl.env.ToolEnv` appends it. Drawn from the first TEMPLATES_SFT templates only, so
  the RL stage has templates the warm start never showed.

Problems are seeded draws; no problem is in two files. Answers are computed by the calculator
tool itself (`rl/tools.py`), the one the policy calls.

    python scripts/make_calc_tool_data.py [--out-dir data] [--force]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

from posttrain.rl.env import RESPONSE_TEMPLATE, TOOL_CALL_END, TOOL_CALL_START, tool_instructions
from posttrain.rl.tools import build_tools

INSTRUCTION = "Use the calculator for the arithmetic, then end with \"The answer is N.\""

# (question with {a} {b} {c}, expression over a b c, number ranges for a, b, c); answers are whole numbers
TEMPLATES = [
    ("A bakery sells {a} boxes of cookies every day. Each box holds {b} cookies. How many cookies does it sell "
     "in {c} days?", "{a} * {b} * {c}", (12, 99), (6, 48), (3, 9)),
    ("Maria earns {a} dollars an hour and works {b} hours a week. How many dollars does she earn in {c} weeks?",
     "{a} * {b} * {c}", (15, 60), (20, 45), (2, 8)),
    ("A store had {a} shirts. It sold {b} shirts on each of {c} days. How many shirts are left?",
     "{a} - {b} * {c}", (600, 999), (13, 49), (3, 9)),
    ("A farm has {a} rows of apple trees with {b} trees in each row. Then {c} more trees are planted. How many "
     "trees are there now?", "{a} * {b} + {c}", (14, 60), (12, 40), (25, 300)),
    ("A train travels {a} kilometers each hour for {b} hours, and then {c} kilometers more. How many kilometers "
     "does it travel in all?", "{a} * {b} + {c}", (45, 120), (3, 9), (15, 95)),
    # the warm start never shows these
    ("A school buys {a} packs of pencils with {b} pencils in each pack, and gives away {c} pencils. How many "
     "pencils does it keep?", "{a} * {b} - {c}", (16, 80), (12, 36), (20, 150)),
    ("Tickets cost {a} dollars for adults and {b} dollars for children. A group of {c} adults and {c} children "
     "buys tickets. How many dollars do they pay?", "{a} * {c} + {b} * {c}", (18, 45), (7, 17), (11, 38)),
    ("A tank holds {a} liters of water. Every hour {b} liters flow out. How many liters are left after {c} "
     "hours?", "{a} - {b} * {c}", (900, 2000), (17, 60), (4, 12)),
]
TEMPLATES_SFT = 5
SIZES = {"train": 256, "eval": 64, "sft": 64}


CALCULATOR = build_tools(["calculator"], 5.0)["calculator"]
# the system turn `posttrain rlvr rollout.tools=[calculator]` gives prompts (rollout.tool_prompt)
SYSTEM = tool_instructions(build_tools(["calculator"], 5.0))


def draw(rng: random.Random, template: tuple) -> tuple[str, str, int]:
    question, expr, *ranges = template
    while True:
        a, b, c = (rng.randint(lo, hi) for lo, hi in ranges)
        expression = expr.format(a=a, b=b, c=c)
        answer = int(CALCULATOR({"expression": expression}))
        if answer > 0:
            return question.format(a=a, b=b, c=c), expression, answer


def problems(n: int, templates: list[tuple], rng: random.Random, seen: set) -> list[tuple[str, str, int]]:
    out = []
    while len(out) < n:
        q, expression, answer = draw(rng, templates[len(out) % len(templates)])
        if q not in seen:
            seen.add(q)
            out.append((q, expression, answer))
    return out


def rlvr_row(q: str, answer: int) -> dict:
    return {"messages": [{"role": "user", "content": f"{q}\n{INSTRUCTION}"}], "ground_truth": str(answer),
            "dataset": "gsm8k"}


def sft_row(q: str, expression: str, answer: int) -> dict:
    result = str(answer)
    call = json.dumps({"name": "calculator", "arguments": {"expression": expression}})
    reply = f"{TOOL_CALL_START}{call}{TOOL_CALL_END}{RESPONSE_TEMPLATE.format(result=result)}The answer is {answer}."
    return {"messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"{q}\n{INSTRUCTION}"},
                         {"role": "assistant", "content": reply}]}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out-dir", default="data")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    rng, seen = random.Random(args.seed), set()
    eval_rows = problems(SIZES["eval"], TEMPLATES, rng, seen)
    train_rows = problems(SIZES["train"], TEMPLATES, rng, seen)
    sft_rows = problems(SIZES["sft"], TEMPLATES[:TEMPLATES_SFT], rng, seen)
    out = Path(args.out_dir)
    files = {out / "rlvr" / "calc_eval.jsonl": [rlvr_row(q, a) for q, _, a in eval_rows],
             out / "rlvr" / "calc_train.jsonl": [rlvr_row(q, a) for q, _, a in train_rows],
             out / "sft" / "calc_tool_sft.jsonl": [sft_row(q, e, a) for q, e, a in sft_rows]}
    for path, rows in files.items():
        if path.exists() and not args.force:
            print(f"{path} exists (use --force)", file=sys.stderr)
            return 1
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        print(f"wrote {len(rows)} rows to {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
