"""Conversations: one format (`{"messages": [{"role", "content"}, ...]}`), converters from the
common variants, validation with a clear error policy, and tokenization with assistant-only labels.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Literal

# LoadStats and OnError are imported from here by the recipes; they live with the row loader.
from posttrain.data.io import DataError, LoadStats, OnError, load_rows  # noqa: F401

ROLES = ("system", "user", "assistant")
IGNORE_INDEX = -100

_SHAREGPT_ROLES = {
    "human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
    "chatgpt": "assistant", "bard": "assistant", "bing": "assistant", "model": "assistant",
    "system": "system",
}


# ---------------------------------------------------------------- converters (record -> messages)

def from_messages(rec: dict) -> list[dict]:
    if "messages" not in rec:
        raise DataError(f"missing field 'messages' (fields present: {sorted(rec)})")
    return rec["messages"]


def from_sharegpt(rec: dict) -> list[dict]:
    conv = rec.get("conversations")
    if not isinstance(conv, list):
        raise DataError(f"missing list field 'conversations' (fields present: {sorted(rec)})")
    out = []
    for i, turn in enumerate(conv):
        if not isinstance(turn, dict) or "from" not in turn or "value" not in turn:
            raise DataError(f"conversations[{i}]: expected an object with 'from' and 'value'")
        role = _SHAREGPT_ROLES.get(str(turn["from"]).lower())
        if role is None:
            raise DataError(f"conversations[{i}]: unknown speaker {turn['from']!r}; "
                            f"known: {sorted(_SHAREGPT_ROLES)}")
        out.append({"role": role, "content": turn["value"]})
    return out


def _as_turns(value, role: str, name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return value
    raise DataError(f"field '{name}' must be a string or a list of messages, got {type(value).__name__}")


def from_prompt_completion(rec: dict) -> list[dict]:
    for k in ("prompt", "completion"):
        if k not in rec:
            raise DataError(f"missing field '{k}' (fields present: {sorted(rec)})")
    return _as_turns(rec["prompt"], "user", "prompt") + _as_turns(rec["completion"], "assistant", "completion")


def detect_format(rec: dict) -> str:
    if "messages" in rec:
        return "messages"
    if "conversations" in rec:
        return "sharegpt"
    if "prompt" in rec and "completion" in rec:
        return "prompt_completion"
    raise DataError(f"missing field 'messages' (or 'conversations', or 'prompt'+'completion'); "
                    f"fields present: {sorted(rec)}")


CONVERTERS: dict[str, Callable[[dict], list[dict]]] = {
    "messages": from_messages,
    "sharegpt": from_sharegpt,
    "prompt_completion": from_prompt_completion,
}


def to_messages(rec: dict, fmt: str = "auto") -> list[dict]:
    if fmt == "auto":
        fmt = detect_format(rec)
    if fmt not in CONVERTERS:
        raise DataError(f"unknown conversation format {fmt!r}; valid: auto, {', '.join(CONVERTERS)}")
    return CONVERTERS[fmt](rec)


def validate_messages(messages, require_assistant: bool = True) -> list[dict]:
    """Check roles and content types; return clean `{"role", "content"}` dicts."""
    if not isinstance(messages, list) or not messages:
        raise DataError("'messages' must be a non-empty list")
    clean = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            raise DataError(f"messages[{i}]: expected an object, got {type(m).__name__}")
        role = m.get("role")
        if role not in ROLES:
            raise DataError(f"messages[{i}]: unknown role {role!r}; valid roles: {', '.join(ROLES)}")
        content = m.get("content")
        if not isinstance(content, str):
            raise DataError(f"messages[{i}]: content must be a string, got {type(content).__name__}")
        clean.append({"role": role, "content": content})
    if require_assistant and not any(m["role"] == "assistant" for m in clean):
        raise DataError("no assistant turn: nothing to train on")
    return clean


# ---------------------------------------------------------------- loading with an error policy

def load_conversations(source: str, fmt: str = "auto", on_error: OnError = "raise",
                       stats: LoadStats | None = None, limit: int | None = None) -> list[list[dict]]:
    """Read conversations from a file/dataset, converting and validating each row."""
    return load_rows(source, lambda rec, where: validate_messages(to_messages(rec, fmt)), on_error, stats, limit)


# ---------------------------------------------------------------- tokenization with masks

@dataclass
class TokenizedExample:
    input_ids: list[int]
    labels: list[int]  # aligned with input_ids; IGNORE_INDEX where no loss

    @property
    def num_trainable(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE_INDEX)


def assistant_char_spans(tokenizer, messages: list[dict]) -> tuple[str, list[tuple[int, int]]]:
    """Render the conversation and find each assistant turn's trainable character span.

    The span runs from the end of the rendered generation prompt (`...<assistant header>`) through
    the end-of-turn token; whitespace the template adds after that token is not trained. This works
    for any chat template whose rendering of a prefix is a prefix of the full rendering.
    """
    full = tokenizer.apply_chat_template(messages, tokenize=False)
    eos = _turn_end_token(tokenizer)
    spans = []
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = tokenizer.apply_chat_template(messages[:i], tokenize=False, add_generation_prompt=True) if i else ""
        upto = tokenizer.apply_chat_template(messages[: i + 1], tokenize=False)
        if not full.startswith(upto) or not upto.startswith(before):
            raise DataError("the chat template does not render conversations prefix-consistently; "
                            "cannot locate assistant turns (try chat_template: tulu)")
        start, end = len(before), len(upto)
        cut = upto.rfind(eos, start) if eos else -1
        if cut >= 0:
            end = cut + len(eos)
        spans.append((start, end))
    return full, spans


def _turn_end_token(tokenizer) -> str | None:
    return tokenizer.eos_token


def span_labels(ids: list[int], offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> list[int]:
    """Labels = ids for tokens that start inside one of the (sorted) character spans, else ignored."""
    labels = [IGNORE_INDEX] * len(ids)
    j = 0
    for t, (s, e) in enumerate(offsets):
        while j < len(spans) and s >= spans[j][1]:
            j += 1
        if j < len(spans) and s >= spans[j][0] and e > s:
            labels[t] = ids[t]
    return labels


def tokenize_conversation(tokenizer, messages: list[dict], max_length: int | None = None,
                          too_long: Literal["raise", "skip", "truncate"] = "raise") -> TokenizedExample | None:
    """Input ids and labels with loss only on assistant content and its end token."""
    text, spans = assistant_char_spans(tokenizer, messages)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = enc["input_ids"], enc["offset_mapping"]
    labels = span_labels(ids, offsets, spans)
    if max_length is not None and len(ids) > max_length:
        if too_long == "raise":
            raise DataError(f"{len(ids)} tokens, longer than max_length={max_length}")
        if too_long == "skip":
            return None
        ids, labels = ids[:max_length], labels[:max_length]
    ex = TokenizedExample(ids, labels)
    if ex.num_trainable == 0:
        raise DataError("no trainable token after tokenization (assistant turns empty or truncated away)")
    return ex


def tokenize_dataset(tokenizer, conversations: Iterable[list[dict]], max_length: int,
                     too_long: str = "raise", on_error: OnError = "raise", stats: LoadStats | None = None,
                     source: str = "data") -> list[TokenizedExample]:
    stats = stats if stats is not None else LoadStats()
    out = []
    for i, msgs in enumerate(conversations):
        try:
            ex = tokenize_conversation(tokenizer, msgs, max_length, "raise" if too_long == "raise" else too_long)
        except DataError as e:
            msg = f"{source}: conversation {i + 1}: {e}"
            if on_error == "raise" and too_long == "raise":
                raise DataError(msg) from None
            stats.drop("too long" if "max_length" in str(e) else "no trainable tokens", msg, source)
            continue
        if ex is None:
            stats.drop("too long", f"{source}: conversation {i + 1}: longer than max_length={max_length}", source)
            continue
        out.append(ex)
    return out
