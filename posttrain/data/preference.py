"""Preference pairs: one format (`PreferencePair`: a shared prompt and two responses), converters
from the common row shapes, validation with the SFT error policy, tokenization with response-only
labels, and packing of both responses of a pair into one padding-free row.

Row shapes read (`data.format`):
- ``chosen_rejected``: ``{"chosen": [messages], "rejected": [messages]}``; the prompt is the
  longest common message prefix (open-instruct / UltraFeedback style);
- ``prompt_chosen_rejected``: ``{"prompt": str | [messages], "chosen": str | [messages],
  "rejected": ...}``; a response list that repeats the prompt (the Tülu 3 files do) is stripped;
- ``hh_rlhf``: ``{"chosen": str, "rejected": str}`` transcripts ``\\n\\nHuman: ...\\n\\nAssistant: ...``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterable, Literal, Sequence

import torch

from posttrain.config import field as cfg_field
from posttrain.data.chat import (LoadStats, OnError, TokenizedExample, assistant_char_spans, span_labels,
                                 validate_messages)
from posttrain.data.io import DataError, DataFiles, load_rows
from posttrain.data.packing import PackedBatch, pack

TooLong = Literal["raise", "skip", "truncate"]


@dataclass(frozen=True)
class PreferencePair:
    prompt: list[dict]  # the shared conversation before the responses (ends with a user turn)
    chosen: list[dict]  # the preferred response turns (usually one assistant message)
    rejected: list[dict]
    origin: str = field(default="", compare=False)  # "file:line", for error messages

    @property
    def chosen_messages(self) -> list[dict]:
        return self.prompt + self.chosen

    @property
    def rejected_messages(self) -> list[dict]:
        return self.prompt + self.rejected


# ---------------------------------------------------------------- converters (record -> pair)

_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict]:
    """``"\\n\\nHuman: hi\\n\\nAssistant: hello"`` -> messages; surrounding whitespace of each turn
    is stripped."""
    if not isinstance(text, str):
        raise DataError(f"hh-rlhf transcript must be a string, got {type(text).__name__}")
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"text before the first '\\n\\nHuman:' turn: {parts[0][:40]!r}")
    if len(parts) < 3:
        raise DataError("no '\\n\\nHuman:' / '\\n\\nAssistant:' turns in the transcript")
    return [{"role": _HH_ROLES[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def _clean(messages) -> list[dict]:
    return validate_messages(messages, require_assistant=False)


def split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """(prompt, chosen response, rejected response): the prompt is the longest common message prefix."""
    n = 0
    while n < min(len(chosen), len(rejected)) and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def from_chosen_rejected(rec: dict) -> PreferencePair:
    for k in ("chosen", "rejected"):
        if not isinstance(rec.get(k), list):
            raise DataError(f"field '{k}' must be a list of messages (fields present: {sorted(rec)})")
    prompt, chosen, rejected = split_shared_prefix(_clean(rec["chosen"]), _clean(rec["rejected"]))
    return PreferencePair(prompt, chosen, rejected)


def _turns(value, role: str, name: str) -> list[dict]:
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if isinstance(value, list):
        return _clean(value)
    raise DataError(f"field '{name}' must be a string or a list of messages, got {type(value).__name__}")


def from_prompt_chosen_rejected(rec: dict) -> PreferencePair:
    for k in ("prompt", "chosen", "rejected"):
        if k not in rec:
            raise DataError(f"missing field '{k}' (fields present: {sorted(rec)})")
    prompt = _turns(rec["prompt"], "user", "prompt")
    responses = []
    for k in ("chosen", "rejected"):
        turns = _turns(rec[k], "assistant", k)
        if turns and turns[0]["role"] != "assistant":
            # The Tülu 3 files repeat the prompt inside each response list.
            if turns[:len(prompt)] != prompt:
                raise DataError(f"'{k}' starts with a {turns[0]['role']} turn that does not repeat 'prompt'")
            turns = turns[len(prompt):]
        responses.append(turns)
    return PreferencePair(prompt, responses[0], responses[1])


def from_hh_rlhf(rec: dict) -> PreferencePair:
    for k in ("chosen", "rejected"):
        if k not in rec:
            raise DataError(f"missing field '{k}' (fields present: {sorted(rec)})")
    prompt, chosen, rejected = split_shared_prefix(parse_hh_transcript(rec["chosen"]),
                                                   parse_hh_transcript(rec["rejected"]))
    return PreferencePair(prompt, chosen, rejected)


PREFERENCE_FORMATS: dict[str, Callable[[dict], PreferencePair]] = {
    "chosen_rejected": from_chosen_rejected,
    "prompt_chosen_rejected": from_prompt_chosen_rejected,
    "hh_rlhf": from_hh_rlhf,
}


def detect_preference_format(rec: dict) -> str:
    if "chosen" in rec and "rejected" in rec:
        if "prompt" in rec:
            return "prompt_chosen_rejected"
        if isinstance(rec["chosen"], list):
            return "chosen_rejected"
        if isinstance(rec["chosen"], str) and "Human:" in rec["chosen"]:
            return "hh_rlhf"
    raise DataError(f"cannot tell the preference format from fields {sorted(rec)}; expected "
                    f"'chosen'+'rejected' message lists, 'prompt'+'chosen'+'rejected', or hh-rlhf transcripts")


def validate_pair(pair: PreferencePair) -> PreferencePair:
    """A pair needs a prompt, two different responses, and each response must open with an
    assistant turn and end with a non-empty assistant turn."""
    if not pair.prompt:
        raise DataError("chosen and rejected share no prompt (their first messages differ)")
    if not any(m["role"] == "user" for m in pair.prompt):
        raise DataError("the prompt has no user turn")
    if pair.chosen == pair.rejected:
        raise DataError("chosen and rejected are identical")
    for name, resp in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        if not resp:
            raise DataError(f"{name} response is empty (it is a prefix of the other response)")
        if resp[0]["role"] != "assistant" or resp[-1]["role"] != "assistant":
            raise DataError(f"{name} response must start and end with an assistant turn, "
                            f"got roles {[m['role'] for m in resp]}")
        if not resp[-1]["content"].strip():
            raise DataError(f"{name} response is empty")
    return pair


def to_pair(rec: dict, fmt: str = "auto") -> PreferencePair:
    if fmt == "auto":
        fmt = detect_preference_format(rec)
    if fmt not in PREFERENCE_FORMATS:
        raise DataError(f"unknown preference format {fmt!r}; valid: auto, {', '.join(PREFERENCE_FORMATS)}")
    return validate_pair(PREFERENCE_FORMATS[fmt](rec))


def load_preferences(source: str, fmt: str = "auto", on_error: OnError = "raise", stats: LoadStats | None = None,
                     limit: int | None = None) -> list[PreferencePair]:
    """Read, convert and validate preference rows; a bad row raises naming file:line, or with
    on_error='skip' is dropped and counted in `stats`."""
    return load_rows(source, lambda rec, where: dataclasses.replace(to_pair(rec, fmt), origin=where),
                     on_error, stats, limit)


# ---------------------------------------------------------------- tokenization

@dataclass(frozen=True)
class TokenizedPair:
    chosen: TokenizedExample  # labels only on the chosen response's assistant tokens
    rejected: TokenizedExample

    @property
    def num_tokens(self) -> int:
        return len(self.chosen.input_ids) + len(self.rejected.input_ids)


def encode_conversation(tokenizer, messages: list[dict]) -> tuple[str, list[int], list[tuple[int, int]]]:
    """(rendered text, token ids, character offsets): the one tokenization every preference path
    uses (training, reference pass, reward scoring), so rewards and log-probs see the same tokens."""
    text = tokenizer.apply_chat_template(messages, tokenize=False)
    return (text, *_encode_text(tokenizer, text))


def _encode_text(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return enc["input_ids"], enc["offset_mapping"]


def _response_example(tokenizer, prompt: list[dict], response: list[dict]) -> TokenizedExample:
    messages = prompt + response
    text, spans = assistant_char_spans(tokenizer, messages)
    spans = spans[sum(m["role"] == "assistant" for m in prompt):]  # earlier assistant turns are context
    ids, offsets = _encode_text(tokenizer, text)
    return TokenizedExample(ids, span_labels(ids, offsets, spans))


def tokenize_pair(tokenizer, pair: PreferencePair, max_length: int | None = None,
                  too_long: TooLong = "raise") -> TokenizedPair | None:
    """Both full conversations, labels on the response tokens only. A side longer than
    `max_length` raises, returns None ('skip'), or is cut on the right ('truncate')."""
    sides = []
    for name, resp in (("chosen", pair.chosen), ("rejected", pair.rejected)):
        ex = _response_example(tokenizer, pair.prompt, resp)
        if max_length is not None and len(ex.input_ids) > max_length:
            if too_long == "raise":
                raise DataError(f"{name}: {len(ex.input_ids)} tokens, longer than max_length={max_length}")
            if too_long == "skip":
                return None
            ex = TokenizedExample(ex.input_ids[:max_length], ex.labels[:max_length])
        if ex.num_trainable == 0:
            raise DataError(f"{name}: no response token left (prompt fills max_length, or empty response)")
        sides.append(ex)
    return TokenizedPair(sides[0], sides[1])


def tokenize_pairs(tokenizer, pairs: Iterable[PreferencePair], max_length: int, too_long: TooLong = "raise",
                   on_error: OnError = "raise", stats: LoadStats | None = None) -> list[TokenizedPair]:
    stats = stats if stats is not None else LoadStats()
    out = []
    for i, pair in enumerate(pairs):
        where = pair.origin or f"pair {i + 1}"
        try:
            tp = tokenize_pair(tokenizer, pair, max_length, too_long)
        except DataError as e:
            too = "longer than max_length" in str(e)
            if (too and too_long == "raise") or (not too and on_error == "raise"):
                hint = "data.too_long=skip or truncate" if too else "data.on_error=skip"
                raise DataError(f"{where}: {e}  (set {hint} to drop such pairs and count them)") from None
            stats.drop("too long" if too else "no response tokens", f"{where}: {e}", _source(pair))
            continue
        if tp is None:
            stats.drop("too long", f"{where}: longer than max_length={max_length}", _source(pair))
            continue
        out.append(tp)
    return out


def _source(pair: PreferencePair) -> str | None:
    return pair.origin.rsplit(":", 1)[0] if pair.origin else None


def split_heldout(items: Sequence, n: int, seed: int) -> tuple[list, list]:
    """(train, held-out): `n` items chosen by a seeded permutation, the rest kept in order."""
    if n <= 0:
        return list(items), []
    if n >= len(items):
        raise ValueError(f"cannot hold out {n} of {len(items)} pairs: nothing would be left to train on")
    perm = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    held = set(perm[:n])
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]


def fingerprint_pairs(pairs: Sequence[TokenizedPair]) -> str:
    """sha256 over every token id and label in order: changes with the data, template, tokenizer
    and max length."""
    h = hashlib.sha256()
    for p in pairs:
        for ex in (p.chosen, p.rejected):
            h.update(len(ex.input_ids).to_bytes(4, "little"))
            h.update(torch.tensor(ex.input_ids, dtype=torch.int64).numpy().tobytes())
            h.update(torch.tensor(ex.labels, dtype=torch.int64).numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- packing

def pack_pairs(pairs: Sequence[TokenizedPair]) -> PackedBatch:
    """One packed row: chosen_0, rejected_0, chosen_1, rejected_1, ... (document i // 2 is pair i)."""
    docs = []
    for p in pairs:
        docs += [(p.chosen.input_ids, p.chosen.labels), (p.rejected.input_ids, p.rejected.labels)]
    return pack(docs)


def last_non_pad_positions(batch: PackedBatch, pad_token_id: int | None) -> torch.Tensor:
    """[D] index of each document's last token that is not padding: where a sequence-classification
    head is read, matching `AutoModelForSequenceClassification` on a right-padded batch."""
    ids = batch.input_ids[0]
    ends = torch.tensor(batch.seq_lens).cumsum(0) - 1
    if pad_token_id is None:
        return ends
    starts = ends - torch.tensor(batch.seq_lens) + 1
    out = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        keep = (ids[s:e + 1] != pad_token_id).nonzero()
        if keep.numel() == 0:
            raise ValueError(f"a document of {e - s + 1} tokens is all padding (pad_token_id={pad_token_id})")
        out.append(s + int(keep[-1]))
    return torch.tensor(out)


# ---------------------------------------------------------------- config and loading for recipes

@dataclasses.dataclass
class PreferenceData(DataFiles):
    format: str = cfg_field("auto", "auto, chosen_rejected, prompt_chosen_rejected, hh_rlhf")
    eval_paths: list[str] = cfg_field([], "held-out preference files for evaluation")
    eval_size: int = cfg_field(0, "hold out this many training pairs (seeded) for evaluation")

    def validate(self):
        if not self.paths:
            raise ValueError("data.paths is empty: give at least one preference file")
        if self.format != "auto" and self.format not in PREFERENCE_FORMATS:
            raise ValueError(f"data.format: unknown {self.format!r}; valid: auto, {', '.join(PREFERENCE_FORMATS)}")
        if self.max_length < 2 or self.eval_size < 0:
            raise ValueError("data.max_length must be >= 2 and data.eval_size >= 0")


def build_preference_splits(cfg: PreferenceData, tokenizer, seed: int,
                            log: Callable[[str], None] = print) -> tuple[list[TokenizedPair], list[TokenizedPair]]:
    """(train pairs, eval pairs), tokenized; every drop is counted and the first few are logged."""
    def load(paths: list[str], name: str) -> tuple[list[TokenizedPair], LoadStats]:
        stats, pairs = LoadStats(), []
        for path in paths:
            rows = load_preferences(path, cfg.format, cfg.on_error, stats, cfg.limit)
            pairs += tokenize_pairs(tokenizer, rows, cfg.max_length, cfg.too_long, cfg.on_error, stats)
        stats.report(log, f"{name}: {stats.summary()}; {len(pairs)} pairs after tokenization",
                     len(pairs) if name == "train" else None, "training pairs")
        return pairs, stats

    train, stats = load(cfg.paths, "train")
    train, held = split_heldout(train, cfg.eval_size, seed)
    evals = held + (load(cfg.eval_paths, "eval")[0] if cfg.eval_paths else [])
    if held:
        log(f"[data] held out {len(held)} training pairs for evaluation")
    return train, evals
