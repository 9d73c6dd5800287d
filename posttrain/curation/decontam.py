"""N-gram decontamination of training prompts against eval prompts (Tülu 3 §3.2, EVAL_SPEC.md §6).

A test instance is *flagged* when more than `threshold` of its word tokens are covered by n-grams it
shares with one single training prompt (a user turn). A training dataset is *contaminated* when it
flags more than `dataset_threshold` of the instances of any eval set. Filtering removes the training
rows that have such a match.

Design (see docs/DECONTAM.md): the eval side is small (a few thousand prompts), so it is indexed in
process as a dict from n-gram (a tuple of token bytes) to its (eval instance, start) postings.
Training prompts are streamed a chunk at a time: tokenized with C-level bytes ops, then their n-gram
hashes are checked against the eval hashes in numpy, so the ~99% of prompts that share nothing
never reach Python-level n-gram code. The rest get exact coverage: the set of covered test-token
positions per (eval instance, prompt). Large JSONL files are scanned by byte ranges in worker
processes; nothing leaves a worker but the matches.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import multiprocessing as mp
import os
import re
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from posttrain.config import ConfigError, field, load_config
from posttrain.curation.ngram_index import (EvalIndex, EvalInstance, EvalSet, _build_prefilter, build_index,
                                             candidate_docs, coverage, default_eval_sets, load_eval_instances,
                                             parse_eval_spec)
from posttrain.data.io import read_records
from posttrain.data.text import TOKENIZER_DESCRIPTION, extract_prompts, tokenize

try:  # optional: ~2-3x faster JSON parsing of training rows
    from orjson import loads as _json_loads
except ImportError:  # pragma: no cover - depends on the environment
    _json_loads = json.loads

# ---------------------------------------------------------------------------------------------
# Scanning (runs in worker processes for large inputs)
# ---------------------------------------------------------------------------------------------

_TEXT_CHARS = 300  # texts in matches.jsonl are truncated to this many characters
@dataclass
class _Chunk:
    n_records: int
    n_lines: int
    n_prompts: int
    # (record index in chunk, line in chunk (0-based), turn, gid, score, truncated prompt)
    matches: list[tuple[int, int, int, int, float, str]]
    error: tuple[int, str] | None = None  # (0-based line in chunk, message) for bad JSON/records


_STATE: dict[str, Any] = {}
_HERE = "\x00"  # placeholder for "file:line" in worker errors; the parent knows the global line


def _init_worker(index: EvalIndex, threshold: float, prompt_field: str | None) -> None:
    _STATE.update(index=index, prefilter=_build_prefilter(index), threshold=threshold, prompt_field=prompt_field)


def _init_pool_worker(index: EvalIndex, threshold: float, prompt_field: str | None) -> None:
    _init_worker(index, threshold, prompt_field)
    gc.freeze()  # the index lives as long as the worker: keep the collector from rescanning it


def _collect(rec: Any, row: int, line: int, where: str, docs: list) -> None:
    """Append (row, line, turn, text, tokens) for every prompt of one record."""
    if not isinstance(rec, dict):
        raise ValueError(f"{where}: expected a JSON object, got {type(rec).__name__}")
    mask = _STATE["index"].mask_numbers
    for turn, text in enumerate(extract_prompts(rec, _STATE["prompt_field"], where)):
        docs.append((row, line, turn, text, tokenize(text, mask)))


def _match(docs: list, out: _Chunk) -> None:
    index, threshold = _STATE["index"], _STATE["threshold"]
    out.n_prompts += len(docs)
    for k in candidate_docs([d[4] for d in docs], index, _STATE["prefilter"]):
        row, line, turn, text, toks = docs[k]
        for gid, score in coverage(toks, index).items():
            if score > threshold:
                out.matches.append((row, line, turn, gid, score, text[:_TEXT_CHARS]))


def _scan_jsonl_range(task: tuple[str, int, int]) -> _Chunk:
    path, start, end = task
    with open(path, "rb") as fh:
        fh.seek(start)
        data = fh.read(end - start)
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    out = _Chunk(0, len(lines), 0, [])
    docs: list = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            rec = _json_loads(raw)
        except ValueError as e:
            out.error = (i, f"{_HERE}: invalid JSON: {e}")
            return out
        try:
            _collect(rec, out.n_records, i, _HERE, docs)
        except ValueError as e:
            out.error = (i, str(e))
            return out
        out.n_records += 1
    _match(docs, out)
    return out


def _scan_records(task: tuple[str, list[tuple[int, dict]]]) -> _Chunk:
    name, numbered = task
    out = _Chunk(0, 0, 0, [])
    docs: list = []
    for lineno, rec in numbered:
        _collect(rec, out.n_records, lineno - 1, f"{name}: row {lineno}", docs)
        out.n_records += 1
    _match(docs, out)
    return out


def _jsonl_ranges(path: str, chunk_bytes: int) -> list[tuple[str, int, int]]:
    """Byte ranges of `path` that start and end on line boundaries."""
    size = os.path.getsize(path)
    bounds = [0]
    with open(path, "rb") as fh:
        while bounds[-1] + chunk_bytes < size:
            fh.seek(bounds[-1] + chunk_bytes)
            fh.readline()
            if fh.tell() >= size:
                break
            bounds.append(fh.tell())
    bounds.append(size)
    return [(path, a, b) for a, b in zip(bounds, bounds[1:])]


def _batched(it: Iterable, size: int) -> Iterator[list]:
    batch = []
    for x in it:
        batch.append(x)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

@dataclass
class PairResult:
    dataset: str
    eval_set: str
    n_eval: int
    flagged: int
    flagged_pct: float
    contaminated: bool


@dataclass
class DatasetResult:
    name: str
    source: str  # a path, or "<rows>"
    n_rows: int
    n_prompts: int
    rows_removed: int
    filtered_path: str | None


@dataclass
class Match:
    eval_set: str
    eval_index: int
    eval_id: Any
    dataset: str
    train_row: int  # 0-based record index in the training source
    train_line: int | None  # 1-based line/row number as the reader reports it
    turn: int  # which user turn of the row
    score: float
    eval_text: str
    train_text: str


@dataclass
class Report:
    ngram: int
    threshold: float
    dataset_threshold: float
    tokenizer: str
    mask_numbers: bool
    eval_sets: dict[str, int]  # name -> number of instances
    datasets: list[DatasetResult]
    results: list[PairResult]
    contaminated: list[tuple[str, str]]  # (dataset, eval set) above dataset_threshold
    matches: list[Match]
    removed_rows: dict[str, list[int]]  # dataset -> sorted 0-based rows removed by filtering
    seconds: float

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("matches")
        d.pop("removed_rows")
        d["n_matches"] = len(self.matches)
        return d

    def to_markdown(self) -> str:
        lines = [
            f"n-gram {self.ngram}, instance threshold > {self.threshold:g}, "
            f"dataset threshold > {self.dataset_threshold:.1%}"
            f"{', numbers masked' if self.mask_numbers else ''}; {self.seconds:.1f} s",
            "",
            "| training set | eval set | flagged | eval n | flagged % | contaminated |",
            "|---|---|---:|---:|---:|---|",
        ]
        for r in self.results:
            lines.append(f"| {r.dataset} | {r.eval_set} | {r.flagged} | {r.n_eval} | "
                         f"{r.flagged_pct:.2f} | {'**yes**' if r.contaminated else 'no'} |")
        lines += ["", "| training set | rows | prompts | rows removed | filtered file |", "|---|---:|---:|---:|---|"]
        for d in self.datasets:
            lines.append(f"| {d.name} | {d.n_rows} | {d.n_prompts} | {d.rows_removed} | {d.filtered_path or '-'} |")
        return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------

_PARALLEL_MIN_BYTES = 16 << 20  # below this a worker pool costs more than it saves
_CHUNK_BYTES = 8 << 20
_RECORD_BATCH = 20_000


def _scan_source(source: str | list[dict], name: str, chunk_bytes: int, pool) -> tuple[int, int, list]:
    """Scan one training source; returns (rows, prompts, [(row, line, turn, gid, score, text)])."""
    imap = pool.imap if pool is not None else map
    n_rows = n_prompts = 0
    found = []
    if isinstance(source, str) and source.lower().endswith((".jsonl", ".ndjson")) and Path(source).is_file():
        line_base = 0
        for chunk in imap(_scan_jsonl_range, _jsonl_ranges(source, chunk_bytes)):
            if chunk.error is not None:
                line, msg = chunk.error
                raise ValueError(msg.replace(_HERE, f"{source}:{line_base + line + 1}"))
            found += [(n_rows + r, line_base + ln + 1, t, g, s, x) for r, ln, t, g, s, x in chunk.matches]
            n_rows += chunk.n_records
            n_prompts += chunk.n_prompts
            line_base += chunk.n_lines
        return n_rows, n_prompts, found
    numbered = enumerate(source, 1) if isinstance(source, list) else read_records(source)
    label = source if isinstance(source, str) else name
    for chunk in imap(_scan_records, ((label, b) for b in _batched(numbered, _RECORD_BATCH))):
        found += [(n_rows + r, ln + 1, t, g, s, x) for r, ln, t, g, s, x in chunk.matches]
        n_rows += chunk.n_records
        n_prompts += chunk.n_prompts
    return n_rows, n_prompts, found


def _safe_name(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "dataset"


@contextlib.contextmanager
def _atomic_open(path: Path, binary: bool = False):
    """Open a temporary sibling of `path` and rename it over `path` only if the block succeeds."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with (open(tmp, "xb") if binary else open(tmp, "x", encoding="utf-8")) as fh:
            yield fh
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_filtered(source: str | list[dict], removed: set[int], path: Path) -> None:
    """Copy the training source without the removed rows (JSONL lines are copied byte for byte)."""
    with _atomic_open(path, binary=True) as out:
        if isinstance(source, str) and source.lower().endswith((".jsonl", ".ndjson")):
            row = 0
            with open(source, "rb") as fh:
                for raw in fh:
                    if not raw.strip():
                        continue
                    if row not in removed:
                        out.write(raw if raw.endswith(b"\n") else raw + b"\n")
                    row += 1
        else:
            records = (r for _, r in read_records(source)) if isinstance(source, str) else source
            for row, rec in enumerate(records):
                if row not in removed:
                    out.write((json.dumps(rec, ensure_ascii=False) + "\n").encode())


def _check_sources(train_sources: Mapping[str, str | os.PathLike | list[dict]]) -> dict[str, str | list[dict]]:
    sources: dict[str, str | list[dict]] = {}
    for name, src in train_sources.items():
        if isinstance(src, (str, os.PathLike)):
            src = str(src)
            if not Path(src).exists():
                raise ValueError(f"training set {name!r}: file not found: {src}")
        elif not isinstance(src, list):
            raise ValueError(f"training set {name!r}: expected a path or a list of records")
        sources[name] = src
    return sources


@contextlib.contextmanager
def _scanner(index: EvalIndex, threshold: float, prompt_field: str | None, workers: int):
    """A worker pool (or None for in-process scanning) with the index installed."""
    pool = None
    if workers > 1:
        ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
        pool = ctx.Pool(workers, initializer=_init_pool_worker, initargs=(index, threshold, prompt_field))
    else:
        _init_worker(index, threshold, prompt_field)
    try:
        yield pool
    finally:
        if pool is not None:
            pool.close()
            pool.join()
        _STATE.clear()


def _best_matches(name: str, found: list, instances: list[EvalInstance]) -> list[Match]:
    """One Match per (eval instance, training row): its best-scoring user turn."""
    best: dict[tuple[int, int], tuple] = {}
    for row, line, turn, gid, score, text in found:
        if (gid, row) not in best or score > best[gid, row][3]:
            best[gid, row] = (row, line, turn, score, text)
    out = []
    for (gid, _), (row, line, turn, score, text) in sorted(best.items()):
        inst = instances[gid]
        out.append(Match(inst.eval_set, inst.index, inst.eval_id, name, row, line, turn, round(score, 4),
                         inst.text[:_TEXT_CHARS], text))
    return out


def decontaminate(
    train_sources: Mapping[str, str | os.PathLike | list[dict]],
    eval_sets: list[EvalSet],
    ngram: int = 8,
    threshold: float = 0.5,
    dataset_threshold: float = 0.02,
    out_dir: str | os.PathLike | None = None,
    *,
    prompt_field: str | None = None,
    workers: int | None = None,
    write_filtered: bool = True,
    mask_numbers: bool = False,
    chunk_bytes: int = _CHUNK_BYTES,
) -> Report:
    """Match every training source against every eval set; optionally write outputs to `out_dir`.

    `train_sources` maps a dataset name to a file (.jsonl/.json/.parquet, an HF dir) or to a list of
    records. `workers=None` uses up to 2 processes when the JSONL input is larger than 16 MiB.
    Outputs: report.json, report.md, matches.jsonl and filtered/<name>.jsonl (written atomically).
    """
    if not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be in [0, 1), got {threshold}")
    if not 0.0 <= dataset_threshold <= 1.0:
        raise ValueError(f"dataset_threshold must be in [0, 1], got {dataset_threshold}")
    names = [es.name for es in eval_sets]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"give at least one eval set, with unique names; got {names}")
    sources = _check_sources(train_sources)
    t0 = time.perf_counter()
    instances = [inst for es in eval_sets for inst in load_eval_instances(es, mask_numbers)]
    index = build_index(instances, ngram, mask_numbers)
    eval_sizes = {name: sum(1 for i in instances if i.eval_set == name) for name in names}
    if workers is None:
        total = sum(os.path.getsize(s) for s in sources.values() if isinstance(s, str) and Path(s).is_file())
        workers = min(2, os.cpu_count() or 1) if total >= _PARALLEL_MIN_BYTES else 1

    datasets, results, contaminated, matches, removed_rows = [], [], [], [], {}
    with _scanner(index, threshold, prompt_field, workers) as pool:
        for name, src in sources.items():
            n_rows, n_prompts, found = _scan_source(src, name, chunk_bytes, pool)
            ds_matches = _best_matches(name, found, instances)
            matches += ds_matches
            removed_rows[name] = removed = sorted({m.train_row for m in ds_matches})
            for es_name in names:
                flagged = len({m.eval_index for m in ds_matches if m.eval_set == es_name})
                frac = flagged / eval_sizes[es_name] if eval_sizes[es_name] else 0.0
                results.append(PairResult(name, es_name, eval_sizes[es_name], flagged, round(100 * frac, 3),
                                          frac > dataset_threshold))
                if frac > dataset_threshold:
                    contaminated.append((name, es_name))
            filtered_path = None
            if out_dir is not None and write_filtered:
                filtered_path = Path(out_dir) / "filtered" / f"{_safe_name(name)}.jsonl"
                _write_filtered(src, set(removed), filtered_path)
            datasets.append(DatasetResult(name, src if isinstance(src, str) else "<rows>", n_rows, n_prompts,
                                          len(removed), filtered_path and str(filtered_path)))

    report = Report(ngram, threshold, dataset_threshold, TOKENIZER_DESCRIPTION, mask_numbers, eval_sizes, datasets,
                    results, contaminated, matches, removed_rows, round(time.perf_counter() - t0, 3))
    if out_dir is not None:
        write_report(report, out_dir)
    return report


def write_report(report: Report, out_dir: str | os.PathLike) -> None:
    out = Path(out_dir)
    with _atomic_open(out / "matches.jsonl") as fh:
        for m in report.matches:
            fh.write(json.dumps(asdict(m), ensure_ascii=False) + "\n")
    with _atomic_open(out / "report.md") as fh:
        fh.write(report.to_markdown())
    with _atomic_open(out / "report.json") as fh:  # last: its presence means the run finished
        json.dump(report.to_dict(), fh, indent=2, ensure_ascii=False)


# ---------------------------------------------------------------------------------------------
# Config and CLI
# ---------------------------------------------------------------------------------------------

@dataclass
class DecontamConfig:
    """`posttrain decontaminate`: training prompts against eval prompts (Tülu 3 §3.2)."""

    train: dict[str, str] = field({}, doc="training sets: name -> path (.jsonl/.json/.parquet or HF dir)")
    out_dir: str = field("outputs/decontam", doc="report.json, report.md, matches.jsonl, filtered/<name>.jsonl")
    data_root: str = field("../shared/data", doc="folder with gsm8k/, math500/, ifeval/ (the default evals)")
    default_evals: bool = field(True, doc="match against GSM8K test, MATH-500 and IFEval under data_root")
    math_path: str | None = field(None, doc="full MATH test JSONL (field `problem`), added as eval set `math`")
    evals: list[str] = field([], doc="extra eval sets as NAME=PATH:FIELD (FIELD may be f1+f2)")
    prompt_field: str | None = field(None, doc="training field to match; default: user turns (auto-detected)")
    ngram: int = field(8, doc="n-gram size in word tokens")
    threshold: float = field(0.5, doc="a test instance is flagged when MORE than this fraction is covered")
    dataset_threshold: float = field(0.02, doc="a training set is contaminated when it flags MORE than this "
                                               "fraction of an eval set")
    workers: int | None = field(None, doc="processes; default 2 for JSONL input >= 16 MiB, else 1")
    write_filtered: bool = field(True, doc="write the training sets without the matching rows")
    mask_numbers: bool = field(False, doc="replace digit runs by 0 on both sides, so problems that differ "
                                          "only in their numbers match (not in Tülu 3)")

    def validate(self) -> None:
        if self.ngram < 1:
            raise ConfigError(f"ngram must be >= 1, got {self.ngram}")
        if not 0.0 <= self.threshold < 1.0:
            raise ConfigError(f"threshold must be in [0, 1), got {self.threshold}")

    def eval_sets(self) -> list[EvalSet]:
        sets = default_eval_sets(self.data_root, self.math_path) if self.default_evals else []
        if not self.default_evals and self.math_path:
            sets.append(EvalSet("math", self.math_path, ("problem",)))
        return sets + [parse_eval_spec(s) for s in self.evals]


def run_decontaminate(cfg: DecontamConfig) -> Report:
    cfg.validate()
    if not cfg.train:
        raise ValueError("decontaminate: `train` is empty; give at least one training set (name: path)")
    report = decontaminate(cfg.train, cfg.eval_sets(), cfg.ngram, cfg.threshold, cfg.dataset_threshold,
                           cfg.out_dir, prompt_field=cfg.prompt_field, workers=cfg.workers,
                           write_filtered=cfg.write_filtered, mask_numbers=cfg.mask_numbers)
    print(report.to_markdown())
    print(f"decontaminate: wrote {cfg.out_dir}/report.json, report.md, matches.jsonl"
          f"{' and filtered/' if cfg.write_filtered else ''}")
    return report


def _parse_train_spec(spec: str) -> tuple[str, str]:
    name, sep, path = spec.partition("=")
    if not sep:
        return Path(spec).stem, spec
    return name, path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="posttrain decontaminate", description=__doc__.split("\n")[0])
    p.add_argument("--config", help="YAML with DecontamConfig keys")
    p.add_argument("--train", action="append", default=[], metavar="NAME=PATH")
    p.add_argument("--eval", action="append", default=[], metavar="NAME=PATH:FIELD")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="DecontamConfig overrides")
    args = p.parse_args(argv)
    overrides = list(args.overrides)
    cfg = load_config(DecontamConfig, args.config, overrides)
    cfg.train = {**cfg.train, **dict(_parse_train_spec(s) for s in args.train)}
    cfg.evals = cfg.evals + args.eval
    run_decontaminate(cfg)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
