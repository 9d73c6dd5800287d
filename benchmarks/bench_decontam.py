"""Decontamination throughput: N synthetic training prompts against every shared eval set.

Prompts are recombined sentences of the shared SFT, self-instruct, GSM8K-train, persona and
hh-rlhf (helpful) text, so the vocabulary and n-gram statistics are natural. A few hundred rows are
planted copies of eval prompts (verbatim, case/whitespace/punctuation edits, GSM8K with changed
numbers, and embedded in surrounding text); the script reports how many of them are found.

    python benchmarks/bench_decontam.py                   # 1M prompts, default workers
    python benchmarks/bench_decontam.py --n 100000 --workers 1,2

Timing covers `decontaminate()` end to end: loading and indexing the evals, scanning the JSONL,
writing the filtered copy, report.json/md and matches.jsonl. Generating the input is not timed.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from posttrain.curation.decontam import decontaminate, default_eval_sets, load_eval_instances  # noqa: E402

_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.open(encoding="utf-8") if line.strip()]


def sentence_pool(data: Path) -> list[str]:
    texts = []
    for rec in _read(data / "sft" / "open_instruct_sft_sample.jsonl"):
        texts += [m["content"] for m in rec["messages"]]
    for name in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented_instructions.jsonl"):
        for rec in _read(data / "sft" / name):
            texts.append(rec["instruction"])
            texts += [i["input"] for i in rec["instances"]] + [i["output"] for i in rec["instances"]]
    texts += [r["question"] for r in _read(data / "gsm8k" / "train.jsonl")]
    texts += [r["persona"] for r in _read(data / "personas" / "persona_from_tool.jsonl")]
    for rec in _read(data / "preference" / "hh_rlhf_helpful_base_test.jsonl"):
        texts += [t.split("\n\nAssistant:")[0].strip() for t in rec["chosen"].split("\n\nHuman:")[1:]]
    pool = {s.strip() for t in texts for s in _SENTENCE_END.split(t) if 3 <= len(s.split()) <= 60}
    return sorted(pool)


def _edit(text: str, kind: str, rng: random.Random) -> str:
    if kind == "case":
        return text.upper() if rng.random() < 0.5 else text.title()
    if kind == "whitespace":
        return re.sub(r" ", lambda _: rng.choice(["  ", "\n", "\t", " "]), text)
    if kind == "punctuation":
        return text.replace(", ", " ").replace(". ", "! ").replace("?", " ?")
    if kind == "all_numbers":
        return re.sub(r"\d+", lambda m: str(int(m.group()) + rng.randint(1, 9)), text)
    if kind == "one_number":
        spans = [m.span() for m in re.finditer(r"\d+", text)]
        a, b = rng.choice(spans) if spans else (0, 0)
        return text[:a] + str(int(text[a:b] or 0) + 1) + text[b:]
    if kind == "embedded":
        return f"Please help me with my homework. {text} Explain each step and keep it short."
    return text


def write_prompts(path: Path, n: int, data: Path, n_planted: int, seed: int) -> list[tuple[int, str, int, str]]:
    """Write n rows in messages format; returns the planted (row, eval set, eval index, edit kind)."""
    rng = random.Random(seed)
    pool = sentence_pool(data)
    evals = {es.name: load_eval_instances(es) for es in default_eval_sets(data)}
    planted_rows = sorted(rng.sample(range(n), min(n_planted, n)))
    plants = {}
    kinds = ["verbatim", "case", "whitespace", "punctuation", "embedded"]
    for k, row in enumerate(planted_rows):
        name = ["gsm8k", "math500", "ifeval"][k % 3]
        options = kinds + ["one_number", "all_numbers"] if name == "gsm8k" else kinds
        kind = options[k // 3 % len(options)]
        inst = rng.choice(evals[name])
        plants[row] = (name, inst.index, kind, _edit(inst.text, kind, rng))
    choice, randint, rand = rng.choice, rng.randint, rng.random
    with path.open("w", encoding="utf-8") as fh:
        for i in range(n):
            user = plants[i][3] if i in plants else " ".join(choice(pool) for _ in range(randint(1, 5)))
            msgs = [{"role": "user", "content": user}, {"role": "assistant", "content": choice(pool)}]
            if rand() < 0.1:  # some multi-turn conversations
                msgs += [{"role": "user", "content": choice(pool)}, {"role": "assistant", "content": choice(pool)}]
            fh.write(json.dumps({"id": f"syn_{i}", "messages": msgs}) + "\n")
    return [(row, *plants[row][:3]) for row in planted_rows]


def _cpu_seconds() -> float:
    """User + system CPU of this process and its finished children (the worker pools)."""
    usage = [resource.getrusage(who) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(u.ru_utime + u.ru_stime for u in usage)


def _rss_mb(who: int) -> float:
    return resource.getrusage(who).ru_maxrss / 1024  # Linux reports KiB


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="training rows")
    p.add_argument("--planted", type=int, default=300)
    p.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    p.add_argument("--workers", default="auto", help="comma list of worker counts to run side by side, or auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--mask-numbers", action="store_true", help="decontaminate with mask_numbers=True")
    p.add_argument("--keep", help="keep the generated JSONL at this path (reused if it exists)")
    args = p.parse_args(argv)
    data = Path(args.data)

    tmp = tempfile.TemporaryDirectory(prefix="bench_decontam_")
    path = Path(args.keep) if args.keep else Path(tmp.name) / "train.jsonl"
    sidecar = path.with_name(path.name + ".planted.json")
    t0 = time.perf_counter()
    if args.keep and path.is_file() and sidecar.is_file():
        planted = [tuple(p) for p in json.loads(sidecar.read_text())]
        print(f"reusing {path} ({path.stat().st_size / 2**20:.0f} MiB, {len(planted)} planted)")
    else:
        planted = write_prompts(path, args.n, data, args.planted, args.seed)
        sidecar.write_text(json.dumps(planted))
        print(f"generated {args.n} rows ({path.stat().st_size / 2**20:.0f} MiB, {len(planted)} planted) "
              f"in {time.perf_counter() - t0:.1f} s")

    planted_rows = {row for row, *_ in planted}
    load0 = os.getloadavg()[0]
    rows = []
    for w in args.workers.split(","):
        workers = None if w == "auto" else int(w)
        cpu0 = _cpu_seconds()
        t = time.perf_counter()
        report = decontaminate({"synthetic": str(path)}, default_eval_sets(data), out_dir=Path(tmp.name) / f"out_{w}",
                               workers=workers, mask_numbers=args.mask_numbers)
        wall = time.perf_counter() - t
        rows.append((w, wall, _cpu_seconds() - cpu0, report))
    print(f"\npeak RSS: main process {_rss_mb(resource.RUSAGE_SELF):.0f} MiB, "
          f"largest worker {_rss_mb(resource.RUSAGE_CHILDREN):.0f} MiB")
    print(f"load average before/after: {load0:.1f} / {os.getloadavg()[0]:.1f} (other jobs share the CPUs)")
    print("\n| workers | rows | prompts | wall s | CPU s | prompts/s | planted found | other rows removed | speed vs first |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for w, wall, cpu, report in rows:
        ds = report.datasets[0]
        removed = set(report.removed_rows["synthetic"])
        flagged = {(m.eval_set, m.eval_index) for m in report.matches}
        found = [row in removed and (name, idx) in flagged for row, name, idx, _ in planted]
        print(f"| {w} | {ds.n_rows:,} | {ds.n_prompts:,} | {wall:.1f} | {cpu:.1f} | {ds.n_prompts / wall:,.0f} | "
              f"{sum(found)}/{len(planted)} | {len(removed - planted_rows)} | {rows[0][1] / wall:.2f}x |")
    print("\n| planted edit | found |\n|---|---:|")
    for kind in sorted({k for *_, k in planted}):
        hits = [f for f, (*_, k) in zip(found, planted) if k == kind]
        print(f"| {kind} | {sum(hits)}/{len(hits)} |")
    print()
    print(rows[-1][3].to_markdown())
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
