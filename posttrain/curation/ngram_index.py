"""The eval side of decontamination: the eval sets and their instances, the in-memory n-gram
index with exact coverage, and the numpy hash prefilter that lets ~99% of training prompts skip
Python-level n-gram code (`curation/decontam.py` scans and filters; `data/text.py` holds the
tokenizer both sides share; docs/DECONTAM.md has the design)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from itertools import chain, repeat
from pathlib import Path
from typing import Any

import numpy as np

from posttrain.data.io import read_records
from posttrain.data.text import tokenize

# ---------------------------------------------------------------------------------------------
# Eval side
# ---------------------------------------------------------------------------------------------

_ID_FIELDS = ("id", "key", "unique_id", "task_id", "idx")


@dataclass(frozen=True)
class EvalSet:
    """An eval file whose prompt `fields` are matched (several fields are joined with a newline)."""

    name: str
    path: str
    fields: tuple[str, ...]
    limit: int | None = None


def parse_eval_spec(spec: str) -> EvalSet:
    """`name=path:field` (or `field1+field2`) -> EvalSet."""
    name, sep, rest = spec.partition("=")
    path, colon, fields = rest.rpartition(":")
    if not sep or not colon or not name or not path or not fields:
        raise ValueError(f"eval spec {spec!r}: expected NAME=PATH:FIELD (fields may be joined with '+')")
    return EvalSet(name=name.strip(), path=path.strip(), fields=tuple(f.strip() for f in fields.split("+")))


def default_eval_sets(data_root: str | os.PathLike, math_path: str | None = None) -> list[EvalSet]:
    """The eval prompts the project knows, under `data_root` (the shared data folder)."""
    root = Path(data_root)
    sets = [
        EvalSet("gsm8k", str(root / "gsm8k" / "test.jsonl"), ("question",)),
        EvalSet("math500", str(root / "math500" / "test.jsonl"), ("problem",)),
        EvalSet("ifeval", str(root / "ifeval" / "input_data.jsonl"), ("prompt",)),
    ]
    if math_path:
        sets.append(EvalSet("math", str(math_path), ("problem",)))
    return sets


@dataclass
class EvalInstance:
    eval_set: str
    index: int  # 0-based position in the eval file
    eval_id: Any  # the record's own id (`id`, `key`, `unique_id`, ...) or the index
    text: str
    n_tokens: int


def load_eval_instances(es: EvalSet, mask_numbers: bool = False) -> list[EvalInstance]:
    if not Path(es.path).is_file():
        raise ValueError(f"eval set {es.name!r}: file not found: {es.path}")
    out = []
    for lineno, rec in read_records(es.path):
        if es.limit is not None and len(out) >= es.limit:
            break
        parts = []
        for f in es.fields:
            value = rec.get(f)
            if not isinstance(value, str):
                raise ValueError(f"{es.path}:{lineno}: eval set {es.name!r}: field {f!r} is missing or not a string")
            parts.append(value)
        text = "\n".join(parts)
        eval_id = next((rec[k] for k in _ID_FIELDS if k in rec), len(out))
        out.append(EvalInstance(es.name, len(out), eval_id, text, len(tokenize(text, mask_numbers))))
    return out


@dataclass
class EvalIndex:
    """n-gram postings of all eval instances; instances are addressed by a global id (gid)."""

    n: int
    grams: dict[tuple[bytes, ...], list[tuple[int, int]]]  # n-gram -> [(gid, start position)]
    lengths: list[int]  # gid -> number of tokens
    # Test instances shorter than n tokens match when a prompt contains all their tokens in order:
    short: dict[int, dict[tuple[bytes, ...], list[int]]]  # length k -> k-gram -> [gid]
    anchors: frozenset[bytes]  # the longest token of each short instance: a cheap prefilter
    mask_numbers: bool = False  # how both sides are tokenized


def build_index(instances: list[EvalInstance], n: int, mask_numbers: bool = False) -> EvalIndex:
    if not 1 <= n <= len(_MIX):
        raise ValueError(f"ngram must be in [1, {len(_MIX)}], got {n}")
    grams: dict[tuple[bytes, ...], list[tuple[int, int]]] = {}
    short: dict[int, dict[tuple[bytes, ...], list[int]]] = {}
    anchors = set()
    for gid, inst in enumerate(instances):
        toks = tokenize(inst.text, mask_numbers)
        assert len(toks) == inst.n_tokens
        if len(toks) >= n:
            for start, gram in enumerate(zip(*(toks[i:] for i in range(n)))):
                grams.setdefault(gram, []).append((gid, start))
        elif toks:
            short.setdefault(len(toks), {}).setdefault(tuple(toks), []).append(gid)
            anchors.add(max(toks, key=len))
    return EvalIndex(n, grams, [i.n_tokens for i in instances], short, frozenset(anchors), mask_numbers)


def coverage(tokens: list[bytes], index: EvalIndex) -> dict[int, float]:
    """gid -> fraction of that eval instance's tokens covered by n-grams shared with `tokens`.

    Only instances with a non-zero coverage appear. Exact: a test token counts when at least one
    shared n-gram contains it, at any of the n-gram's positions in the test instance.
    """
    n = index.n
    scores: dict[int, float] = {}
    if len(tokens) >= n and not index.grams.keys().isdisjoint(zip(*(tokens[i:] for i in range(n)))):
        covered: dict[int, set[int]] = {}
        get = index.grams.get
        for gram in zip(*(tokens[i:] for i in range(n))):
            postings = get(gram)
            if postings is None:
                continue
            for gid, start in postings:
                s = covered.get(gid)
                if s is None:
                    covered[gid] = s = set()
                s.update(range(start, start + n))
        for gid, s in covered.items():
            scores[gid] = len(s) / index.lengths[gid]
    if index.short and not index.anchors.isdisjoint(tokens):
        for k, table in index.short.items():
            for gram in zip(*(tokens[i:] for i in range(k))):
                for gid in table.get(gram, ()):
                    scores[gid] = 1.0
    return scores


# ---------------------------------------------------------------------------------------------
# Prefilter
# ---------------------------------------------------------------------------------------------


# Prefilter: every token is hashed (Python's bytes hash), an n-gram hash is a fixed linear mix of its
# token hashes (numpy, uint64 wrap-around), and n-gram hashes are looked up in a 2^24-entry table and
# then a sorted array of the eval n-gram hashes. A collision only costs an exact check; identical
# n-grams always hash alike, so the prefilter never drops a true match.
_MIX = np.random.default_rng(20241122).integers(1, 2**63, size=256, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
_TABLE_BITS = 24


@dataclass
class _Prefilter:
    n: int
    table: np.ndarray  # bool[2**_TABLE_BITS]: some eval n-gram hash has these top bits
    hashes: np.ndarray  # sorted unique uint64 eval n-gram hashes


def _mix(token_hashes: np.ndarray, n: int) -> np.ndarray:
    """Hashes of the n-grams starting at 0..len-n of a flat uint64 array of token hashes."""
    m = len(token_hashes) - n + 1
    out = token_hashes[:m] * _MIX[0]
    for j in range(1, n):
        out += token_hashes[j:j + m] * _MIX[j]
    return out


def _build_prefilter(index: EvalIndex) -> _Prefilter:
    # Built in each process: Python's hash of bytes is salted per interpreter.
    n = index.n
    flat = np.fromiter((hash(t) for gram in index.grams for t in gram), np.int64, n * len(index.grams))
    rows = flat.view(np.uint64).reshape(-1, n)
    hashes = np.zeros(len(rows), np.uint64)
    for j in range(n):
        hashes += rows[:, j] * _MIX[j]
    hashes = np.unique(hashes)
    table = np.zeros(1 << _TABLE_BITS, np.bool_)
    table[(hashes >> np.uint64(64 - _TABLE_BITS)).astype(np.intp)] = True
    return _Prefilter(n, table, hashes)


def candidate_docs(docs: list[list[bytes]], index: EvalIndex, pre: _Prefilter) -> list[int]:
    """Indices of the token lists that may share an n-gram (or contain a short instance) with the evals.

    A superset of the true hits; `coverage` makes the exact decision.
    """
    n = pre.n
    lengths = np.fromiter(map(len, docs), np.int64, len(docs))
    total = int(lengths.sum())
    found: set[int] = set()
    if total >= n and len(pre.hashes):
        flat = np.fromiter(chain.from_iterable(map(map, repeat(hash), docs)), np.int64, total).view(np.uint64)
        grams = _mix(flat, n)
        doc_of = np.repeat(np.arange(len(docs)), lengths)
        inside = doc_of[: len(grams)] == doc_of[n - 1:]  # the n-gram does not cross a document boundary
        pos = np.flatnonzero(pre.table[(grams >> np.uint64(64 - _TABLE_BITS)).astype(np.intp)] & inside)
        if len(pos):
            at = np.minimum(np.searchsorted(pre.hashes, grams[pos]), len(pre.hashes) - 1)
            found.update(doc_of[pos[pre.hashes[at] == grams[pos]]].tolist())
    if index.short:
        anchors = index.anchors
        found.update(i for i, toks in enumerate(docs) if not anchors.isdisjoint(toks))
    return sorted(found)
