"""Text pieces shared by decontamination, dedup and held-out splits: the word tokenizer the n-gram
matching uses, and which texts of a training record are its prompts (user turns).

They sit in data/ (not curation/) because dataset tools below curation need them too:
`data/mixture.py` deduplicates by prompt and `data/rlvr.py` keeps held-out splits n-gram-disjoint.
"""

from __future__ import annotations

import re

# ---------------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------------

# open-instruct's `tulu_analyzer` lowercases and splits on `[ ,.?!:;()"-]|\n|\\`; math operators stay
# inside tokens. We split on the same characters plus every Unicode whitespace and fold typographic
# quotes and dashes, so retyping an apostrophe or a tab does not break a match. Tokens are UTF-8
# bytes: bytes.translate/split are ~3x faster than their str versions on this hot path.
_DELIMITERS = ',.?!:;()"-\\'
# Exactly the characters str.split() treats as whitespace (a test checks the list).
UNICODE_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005"
                      "\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")
# Non-ASCII folding uses regexes: str.translate with a dict is ~5x slower on non-ASCII text.
_TO_QUOTE = re.compile("[\u2018\u2019]")
_TO_SPACE = re.compile("[" + "".join(c for c in UNICODE_WHITESPACE if not c.isascii()) + "\u201c\u201d\u2013\u2014]")
_SPLIT_BYTES = {ord(c) for c in _DELIMITERS + UNICODE_WHITESPACE if c.isascii()}
_BYTE_TABLE = bytes(32 if i in _SPLIT_BYTES else i for i in range(256))
_DIGITS = re.compile(r"\d+")
TOKENIZER_DESCRIPTION = ("lowercase; split on [ ,.?!:;()\"-\\\\], Unicode whitespace and \u201c\u201d\u2013\u2014; "
                         "\u2018\u2019 -> '")


def tokenize(text: str, mask_numbers: bool = False) -> list[bytes]:
    """Lowercased word tokens (tulu_analyzer-style) as UTF-8 bytes; empty tokens are dropped.

    `mask_numbers` replaces every digit run by "0" first, so problems that differ only in their
    numbers share all their n-grams (off by default: Tülu 3 does not do it).
    """
    if mask_numbers:
        text = _DIGITS.sub("0", text)
    text = text.lower()
    if not text.isascii():
        text = _TO_SPACE.sub(" ", _TO_QUOTE.sub("'", text))
    return text.encode("utf-8", "surrogatepass").translate(_BYTE_TABLE).split()


# ---------------------------------------------------------------------------------------------
# Training side: which texts of a record are prompts
# ---------------------------------------------------------------------------------------------

_USER_ROLES = ("user", "human")


def _user_turns(turns: list, where: str) -> list[str]:
    out = []
    for t in turns:  # hot loop: plain lookups, no eager fallback arguments
        if not isinstance(t, dict):
            raise ValueError(f"{where}: expected a list of message objects")
        role = t.get("role")
        if role is None:
            role = t.get("from")
        if role in _USER_ROLES:
            content = t.get("content")
            if content is None:
                content = t.get("value")
            if isinstance(content, str):
                out.append(content)
    return out


def extract_prompts(record: dict, prompt_field: str | None, where: str = "record") -> list[str]:
    """The training prompts of one record: user turns of `messages`/`conversations`, or a field.

    With `prompt_field` set, that field is used (a string, or a message list whose user turns are
    taken). Without it the format is detected: messages, ShareGPT conversations, `prompt`,
    `instruction` (+ `input`), `question`, `problem`.
    """
    if prompt_field is not None:
        value = record.get(prompt_field)
        if isinstance(value, str):
            return [value]
        if isinstance(value, list):
            return _user_turns(value, f"{where}: field {prompt_field!r}")
        raise ValueError(f"{where}: prompt field {prompt_field!r} is missing or not a string/message list")
    for key in ("messages", "conversations"):
        value = record.get(key)
        if isinstance(value, list):
            return _user_turns(value, f"{where}: field {key!r}")
    prompt = record.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list):
        return _user_turns(prompt, f"{where}: field 'prompt'")
    instruction = record.get("instruction")
    if isinstance(instruction, str):
        extra = record.get("input")
        return [f"{instruction}\n{extra}" if isinstance(extra, str) and extra else instruction]
    for key in ("question", "problem"):
        if isinstance(record.get(key), str):
            return [record[key]]
    raise ValueError(
        f"{where}: cannot find the prompt (no messages/conversations/prompt/instruction/question/problem;"
        f" keys: {sorted(record)[:10]}); set prompt_field"
    )
