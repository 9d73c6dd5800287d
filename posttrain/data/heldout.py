"""Hold out rows of a training stage's data for evaluation: the pipeline's way of measuring what a
stage did on data it never trained on (SFT: held-out NLL of the assistant turn; DPO: held-out
preference accuracy and margin).

`split_files(paths, n, seed, out_dir, kind)` reads every row of `paths` (in order), picks `n` of
them with a seeded permutation, and writes `out_dir/train.jsonl` (the rest, in order, exactly as
read) and `out_dir/heldout.jsonl`. Held-out rows are written in the one shape the evaluation task
reads: chat rows keep their `messages`; preference rows of any shape `data.preference` reads
(chosen/rejected message lists, prompt/chosen/rejected, hh-rlhf transcripts) become
`{"chosen": [messages], "rejected": [messages]}`. Rows the evaluation task could not score (no
assistant turn, a two-turn response) are never held out; they stay in the training file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal, Sequence

from posttrain.data.io import DataError, read_records, write_json_atomic, write_jsonl_atomic

Kind = Literal["chat", "preference"]


def _chat_row(rec: dict, where: str) -> dict:
    from posttrain.evaluation.tasks.chat_nll import parse_chat_row

    msgs = rec.get("messages")
    if not isinstance(msgs, list) or not any(isinstance(m, dict) and m.get("role") == "assistant" for m in msgs):
        raise DataError(f"{where}: a held-out chat row needs a 'messages' list with an assistant turn")
    try:
        parse_chat_row(rec, where)  # what eval's chat_nll would refuse, refused before training
    except ValueError as e:
        raise DataError(str(e)) from None
    return {"messages": msgs, **({"id": rec["id"]} if "id" in rec else {})}


def _preference_row(rec: dict, where: str) -> dict:
    from posttrain.data.preference import to_pair

    from posttrain.evaluation.tasks.preference import parse_preference_row

    try:
        pair = to_pair(rec)
    except (DataError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{where}: {e}") from None
    row = {"chosen": pair.chosen_messages, "rejected": pair.rejected_messages}
    try:
        parse_preference_row(row, where)  # e.g. a two-turn response: eval's preference task refuses it
    except ValueError as e:
        raise DataError(str(e)) from None
    return row


def split_files(paths: Sequence[str], n: int, seed: int, out_dir: str | Path, kind: Kind,
                max_chars: int | None = None) -> tuple[Path, Path]:
    """-> (train file, held-out file) under `out_dir`; see the module docstring. `max_chars` keeps
    rows longer than that (as JSON) out of the held-out set: scoring cost grows with length, and a
    stage that drops long rows itself (`too_long: skip`) is best measured on rows like its own."""
    import random

    if kind not in ("chat", "preference"):
        raise ValueError(f"held-out kind must be chat or preference, got {kind!r}")
    rows: list[tuple[str, dict]] = [(f"{p}:{line}", rec) for p in paths for line, rec in read_records(p)]
    convert = _chat_row if kind == "chat" else _preference_row
    # Only rows the eval task can score are candidates (e.g. an hh-rlhf pair whose response is two
    # assistant turns stays in training); the first refusal is kept to explain a shortfall.
    scorable, why = {}, None
    for i, (where, rec) in enumerate(rows):
        if max_chars is not None and len(json.dumps(rec, ensure_ascii=False)) > max_chars:
            continue
        try:
            scorable[i] = convert(rec, where)
        except DataError as e:
            why = why or str(e)
    if n <= 0 or n >= len(scorable):
        raise ValueError(f"cannot hold out {n} of the {len(scorable)} scorable rows (of {len(rows)}) in "
                         f"{', '.join(map(str, paths))}: need 0 < heldout < scorable rows"
                         + (f"; first unscorable row: {why}" if why else ""))
    held = set(random.Random(seed).sample(sorted(scorable), n))
    heldout = [scorable[i] for i in sorted(held)]
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    train_path, held_path = out / "train.jsonl", out / "heldout.jsonl"
    write_jsonl_atomic(train_path, (rec for i, (_, rec) in enumerate(rows) if i not in held))
    write_jsonl_atomic(held_path, heldout)
    write_json_atomic(out / "split.json", {"sources": list(map(str, paths)), "rows": len(rows), "heldout": n,
                                           "seed": seed, "kind": kind, "max_chars": max_chars,
                                           "heldout_origins": [w for i, (w, _) in enumerate(rows) if i in held]})
    return train_path, held_path

