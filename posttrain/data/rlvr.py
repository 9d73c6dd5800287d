"""RLVR prompts: Tülu 3 rows (`messages`, `ground_truth`, `dataset`), converters and builders.

A row is a prompt (chat turns ending with a user turn) plus what its verifier needs: `dataset`
names the grader in `posttrain.evaluation.tasks.verifiers` and `ground_truth` is its argument. Besides RLVR
files, `load_rlvr_rows` reads GSM8K files (`question`/`answer`) and IFEval files (`prompt`,
`instruction_id_list`, `kwargs`) directly. The builders make new rows: GSM8K train questions,
single IFEval-style constraints over generic prompts (held out from the eval prompts by an 8-gram
check), and small-number arithmetic. `python -m posttrain.data.rlvr --help` writes them to JSONL.
"""

from __future__ import annotations

import argparse
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

from posttrain.data.chat import LoadStats, validate_messages
from posttrain.data.io import DataError, load_rows, read_records, write_jsonl_atomic

GSM8K_INSTRUCTION = "Solve the problem step by step and give the final answer as a number."


@dataclass(frozen=True)
class RLVRRow:
    messages: list[dict]  # the prompt: chat turns ending with a user turn
    ground_truth: Any
    dataset: str | list[str]  # verifier name(s) in posttrain.evaluation.tasks.verifiers
    source: str = ""  # file:line, for error messages

    def to_record(self) -> dict:
        return {"messages": self.messages, "ground_truth": self.ground_truth, "dataset": self.dataset}

    @property
    def verifier_key(self) -> str:
        """Name used for per-verifier metrics ("gsm8k", "ifeval", "gsm8k+math" for mixed rows)."""
        from posttrain.evaluation.tasks.verifiers import ALIASES

        names = self.dataset if isinstance(self.dataset, list) else [self.dataset]
        return "+".join(ALIASES.get(str(d).strip().lower(), str(d).strip().lower()) for d in names)


# ---------------------------------------------------------------- record -> row

def _check_dataset(dataset: Any, where: str) -> None:
    from posttrain.evaluation.tasks.verifiers import get_verifier

    names = dataset if isinstance(dataset, list) else [dataset]
    if not names or not all(isinstance(d, str) for d in names):
        raise DataError(f"{where}: field 'dataset' must be a string or a list of strings, got {dataset!r:.80}")
    for d in names:
        try:
            get_verifier(d)
        except ValueError as e:
            raise DataError(f"{where}: {e}") from None


def from_rlvr_record(rec: dict, where: str) -> RLVRRow:
    for key in ("messages", "ground_truth", "dataset"):
        if key not in rec:
            raise DataError(f"{where}: missing field '{key}' (fields present: {sorted(rec)})")
    try:
        messages = validate_messages(rec["messages"], require_assistant=False)
    except DataError as e:
        raise DataError(f"{where}: {e}") from None
    # A trailing assistant turn is a reference answer; the policy writes its own.
    while messages and messages[-1]["role"] == "assistant":
        messages = messages[:-1]
    if not messages or messages[-1]["role"] != "user":
        raise DataError(f"{where}: the prompt must end with a user turn")
    _check_dataset(rec["dataset"], where)
    return RLVRRow(messages, rec["ground_truth"], rec["dataset"], where)


def from_gsm8k_record(rec: dict, where: str, instruction: str = GSM8K_INSTRUCTION) -> RLVRRow:
    from posttrain.evaluation.tasks.gsm8k import reward_label

    question, answer = rec.get("question"), rec.get("answer")
    if not isinstance(question, str) or not isinstance(answer, str) or "####" not in answer:
        raise DataError(f"{where}: a GSM8K row needs string fields 'question' and 'answer' (with '#### <answer>')")
    content = f"{question.strip()}\n{instruction}" if instruction else question.strip()
    return RLVRRow([{"role": "user", "content": content}], reward_label(answer), "gsm8k", where)


def from_ifeval_record(rec: dict, where: str) -> RLVRRow:
    prompt, ids, kwargs = rec.get("prompt"), rec.get("instruction_id_list"), rec.get("kwargs")
    if not isinstance(prompt, str) or not isinstance(ids, list) or not isinstance(kwargs, list):
        raise DataError(f"{where}: an IFEval row needs 'prompt' (string), 'instruction_id_list' and 'kwargs' (lists)")
    truth = {"instruction_id_list": ids, "kwargs": kwargs, "prompt": prompt}
    return RLVRRow([{"role": "user", "content": prompt}], truth, "ifeval", where)


# The fields a row's ground truth came from, per input format, for error messages.
_TRUTH_FIELDS = {"rlvr": "field 'ground_truth'", "gsm8k": "field 'answer'",
                 "ifeval": "fields 'instruction_id_list' and 'kwargs'"}


def row_from_record(rec: dict, where: str, gsm8k_instruction: str = GSM8K_INSTRUCTION) -> RLVRRow:
    """Detect the format from the fields: RLVR, GSM8K (question/answer) or IFEval. The ground
    truth is checked against its verifier here, so that a row the reward cannot grade stops the
    load (or is skipped and counted) instead of failing, or scoring 0, mid-run."""
    if "messages" in rec or "ground_truth" in rec:
        row, fmt = from_rlvr_record(rec, where), "rlvr"
    elif "question" in rec and "answer" in rec:
        row, fmt = from_gsm8k_record(rec, where, gsm8k_instruction), "gsm8k"
    elif "instruction_id_list" in rec:
        row, fmt = from_ifeval_record(rec, where), "ifeval"
    else:
        raise DataError(f"{where}: not an RLVR row: expected 'messages' + 'ground_truth' + 'dataset' "
                        f"(or GSM8K 'question'/'answer', or IFEval 'prompt'/'instruction_id_list'); "
                        f"fields present: {sorted(rec)}")
    from posttrain.evaluation.tasks.verifiers import validate_ground_truth

    try:
        validate_ground_truth(row.dataset, row.ground_truth)
    except (ValueError, TypeError) as e:
        raise DataError(f"{where}: {_TRUTH_FIELDS[fmt]} for {e}") from None
    return row


def _drop_reason(detail: str) -> str:
    # Ground-truth errors are counted per field and dataset, not per value.
    return detail.split(":")[0] if detail.startswith(tuple(_TRUTH_FIELDS.values())) else detail[:60]


def load_rlvr_rows(source: str, limit: int | None = None, on_error: Literal["raise", "skip"] = "raise",
                   stats: LoadStats | None = None, gsm8k_instruction: str = GSM8K_INSTRUCTION) -> list[RLVRRow]:
    """Rows of one file (any format `row_from_record` knows), with a clear error per bad row."""
    return load_rows(source, lambda rec, where: row_from_record(rec, where, gsm8k_instruction), on_error, stats,
                     limit, reason=_drop_reason)


# ---------------------------------------------------------------- held out from eval prompts

def word_ngrams(text: str, n: int = 8) -> set[tuple[bytes, ...]]:
    from posttrain.data.text import tokenize

    toks = tokenize(text)
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def drop_overlapping(rows: Sequence[RLVRRow], eval_prompts: Iterable[str], n: int = 8) -> tuple[list[RLVRRow], int]:
    """Rows whose user turns share no word n-gram with any eval prompt, and how many were dropped
    (the Tülu 3 decontamination unit, applied strictly: one shared n-gram drops the row)."""
    grams: set = set()
    for p in eval_prompts:
        grams |= word_ngrams(p, n)
    kept = []
    for r in rows:
        text = "\n".join(m["content"] for m in r.messages if m["role"] == "user")
        if word_ngrams(text, n) & grams:
            continue
        kept.append(r)
    return kept, len(rows) - len(kept)


# ---------------------------------------------------------------- builders

# IFEval-style single constraints in our own words (so that the 8-gram check against the IFEval
# prompts is meaningful), graded by the Tülu 3 constraint functions (`func_name`).
CONSTRAINTS: dict[str, tuple[str, dict]] = {
    "lowercase": ("Write your whole answer in lowercase letters only; do not use any capital letters.",
                  {"func_name": "validate_lowercase"}),
    "uppercase": ("Write your whole answer in capital letters only.", {"func_name": "validate_uppercase"}),
    "quotation": ("Put your whole answer inside double quotation marks.", {"func_name": "validate_quotation"}),
    "no_commas": ("Do not use any commas anywhere in your answer.", {"func_name": "validate_no_commas"}),
    "end_phrase": ('End your answer with the exact phrase "{end_phrase}" and write nothing after it.',
                   {"func_name": "validate_end", "end_phrase": "{end_phrase}"}),
    "postscript": ("Add a postscript at the end of your answer, starting with P.S.",
                   {"func_name": "verify_postscript", "postscript_marker": "P.S."}),
    "title": ("Start your answer with a title inside double angle brackets, for example <<my title>>.",
              {"func_name": "validate_title"}),
    "max_words": ("Use at most {N} words in your answer.", {"func_name": "validate_word_constraint", "N": "{N}",
                                                            "quantifier": "at most"}),
}
_END_PHRASES = ("That is my answer.", "Thanks for asking.", "I hope that was useful.", "That is all.")

_TOPICS = (
    "the moon", "a bicycle", "coffee", "rain", "a library", "the ocean", "a volcano", "bread", "a piano",
    "winter", "a lighthouse", "honey", "the desert", "a telescope", "chess", "a river", "tea", "a forest",
    "the sun", "an umbrella", "a garden", "snow", "a bridge", "a museum", "cheese", "a train", "the wind",
    "a mountain", "a candle", "a clock", "a violin", "a kite", "an island", "a castle", "a map", "a camera",
    "spring", "a bakery", "a robot", "a comet", "a whale", "an owl", "a tiger", "a penguin", "a dolphin",
    "a rainbow", "thunder", "a cactus", "a compass", "a sailboat", "a farm", "a market", "a school", "a zoo",
    "soup", "rice", "a lemon", "an apple", "a banana", "chocolate", "a carrot", "a pencil", "a notebook",
    "a bus", "an airplane", "a helmet", "a ladder", "a mirror", "a pillow", "a blanket", "a stadium",
    "a hospital", "a park", "a pond", "a glacier", "a cave", "a canyon", "a meadow", "a waterfall", "a beach",
)
_QUESTION_TEMPLATES = (
    "Describe {t} in one sentence.", "What is {t}?", "Write one sentence about {t}.", "Give one fact about {t}.",
    "Why do people like {t}?", "Name one thing you can do with {t}.", "What color is {t} usually?",
    "Where would you find {t}?",
)


def generic_prompts(topics: Sequence[str] = _TOPICS, templates: Sequence[str] = _QUESTION_TEMPLATES) -> list[str]:
    """Short open questions (topic × template) with short answers: base prompts for constraints."""
    return [tpl.format(t=t) for t in topics for tpl in templates]


def constraint_row(prompt: str, kind: str, rng: random.Random, where: str = "") -> RLVRRow:
    if kind not in CONSTRAINTS:
        raise ValueError(f"unknown constraint {kind!r}; known: {sorted(CONSTRAINTS)}")
    instruction, truth = CONSTRAINTS[kind]
    values = {"end_phrase": rng.choice(_END_PHRASES), "N": rng.choice((10, 15, 20, 30))}
    text = instruction.format(**values)
    gt = {k: (v.format(**values) if isinstance(v, str) else v) for k, v in truth.items()}
    if gt.get("N") is not None:
        gt["N"] = int(gt["N"])
    return RLVRRow([{"role": "user", "content": f"{prompt} {text}"}], json.dumps(gt), "ifeval", where)


def constraint_rows(prompts: Sequence[str], kinds: Sequence[str], n: int | None = None, seed: int = 0) -> list[RLVRRow]:
    """One row per (prompt, constraint kind) pair in a seeded order, or `n` of them."""
    rng = random.Random(seed)
    pairs = [(p, k) for p in prompts for k in kinds]
    rng.shuffle(pairs)
    pairs = pairs[:n] if n is not None else pairs
    return [constraint_row(p, k, rng, f"constraints:{i}") for i, (p, k) in enumerate(pairs)]


ARITHMETIC_TEMPLATE = "What is {a} {op} {b}? Answer with just the number."
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b}


def arithmetic_problems(lo: int, hi: int, ops: Sequence[str]) -> list[tuple[int, str, int]]:
    for op in ops:
        if op not in _OPS:
            raise ValueError(f"unknown operator {op!r}; known: {sorted(_OPS)}")
    return [(a, op, b) for op in ops for a in range(lo, hi + 1) for b in range(lo, hi + 1)]


def arithmetic_row(a: int, op: str, b: int, template: str = ARITHMETIC_TEMPLATE) -> RLVRRow:
    """Graded by the GSM8K verifier: the last number of the response must equal the result."""
    content = template.format(a=a, op=op, b=b)
    return RLVRRow([{"role": "user", "content": content}], str(_OPS[op](a, b)), "gsm8k", f"arithmetic:{a}{op}{b}")


def split_held_out(items: Sequence, n_eval: int, seed: int) -> tuple[list, list]:
    """(train, eval): a seeded shuffle, the first n_eval items held out; disjoint by construction."""
    if not 0 <= n_eval < len(items):
        raise ValueError(f"cannot hold out {n_eval} of {len(items)} items")
    order = list(items)
    random.Random(seed).shuffle(order)
    return order[n_eval:], order[:n_eval]


# ---------------------------------------------------------------- CLI: write row files

def _write(rows: list[RLVRRow], out: str, force: bool) -> None:
    if Path(out).exists() and not force:
        print(f"[rlvr-data] {out} exists; skipping (pass --force to rebuild)")
        return
    n = write_jsonl_atomic(out, (r.to_record() for r in rows))
    print(f"[rlvr-data] wrote {n} rows to {out}")


def _ifeval_prompts(path: str) -> list[str]:
    return [str(rec.get("prompt", "")) for _, rec in read_records(path)]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m posttrain.data.rlvr", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="kind", required=True)
    g = sub.add_parser("gsm8k", help="RLVR rows from a GSM8K file (question/answer)")
    g.add_argument("--input", required=True)
    g.add_argument("--limit", type=int)
    c = sub.add_parser("constraints", help="single IFEval-style constraints over generic prompts")
    c.add_argument("--kinds", default="lowercase", help=f"comma-separated, from {sorted(CONSTRAINTS)}")
    c.add_argument("--n", type=int, help="rows to keep (default: every prompt x kind)")
    c.add_argument("--ifeval", default="../shared/data/ifeval/input_data.jsonl",
                   help="eval prompts the rows must not overlap (8-gram check)")
    a = sub.add_parser("arithmetic", help="small-number arithmetic graded as GSM8K")
    a.add_argument("--lo", type=int, default=1)
    a.add_argument("--hi", type=int, default=20)
    a.add_argument("--ops", default="+")
    for p in (g, c, a):
        p.add_argument("--out", required=True, help="training rows (.jsonl)")
        p.add_argument("--eval-out", help="held-out rows (.jsonl); needs --eval-n")
        p.add_argument("--eval-n", type=int, default=0)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--force", action="store_true")
    args = ap.parse_args(argv)
    if bool(args.eval_out) != bool(args.eval_n):
        ap.error("--eval-out and --eval-n go together")

    if args.kind == "gsm8k":
        rows = load_rlvr_rows(args.input, args.limit)
        train, held = split_held_out(rows, args.eval_n, args.seed) if args.eval_n else (rows, [])
    elif args.kind == "constraints":
        # Held out by topic: eval prompts are about topics never seen in training.
        kinds = [k for k in args.kinds.split(",") if k]
        train_topics, eval_topics = split_held_out(_TOPICS, max(args.eval_n // len(_QUESTION_TEMPLATES), 1)
                                                   if args.eval_n else 0, args.seed)
        train = constraint_rows(generic_prompts(train_topics), kinds, args.n, args.seed)
        held = constraint_rows(generic_prompts(eval_topics), kinds, args.eval_n, args.seed + 1) if args.eval_n else []
        if Path(args.ifeval).is_file():
            train, dropped = drop_overlapping(train, _ifeval_prompts(args.ifeval))
            print(f"[rlvr-data] dropped {dropped} rows sharing an 8-gram with {args.ifeval}")
    else:
        problems = arithmetic_problems(args.lo, args.hi, [o for o in args.ops.split(",") if o])
        train_p, held_p = split_held_out(problems, args.eval_n, args.seed) if args.eval_n else (problems, [])
        train, held = [arithmetic_row(*p) for p in train_p], [arithmetic_row(*p) for p in held_p]
    _write(train, args.out, args.force)
    if args.eval_out:
        _write(held, args.eval_out, args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
