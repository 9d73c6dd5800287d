"""Data mixtures: sample several sources, convert, drop exact duplicates, write one JSONL + a manifest.

A mixture YAML lists sources (a file, a `save_to_disk` directory or an HF hub name), each with a
`count` or a `fraction` of its rows and a converter (`format`) that maps a record to a record. The
result is deterministic given `seed`: each source is sampled with its own generator seeded by
(seed, source name), so adding a source does not change what the others contribute.

    seed: 42
    output: outputs/sft_mix.jsonl
    sources:
      - path: ../shared/data/sft/open_instruct_sft_sample.jsonl
        fraction: 0.5
        format: messages
      - path: ../shared/data/sft/fastchat_dummy_conversation.jsonl
        name: fastchat
        count: 100
        format: sharegpt
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

from posttrain.config import ConfigError, field, load_config
from posttrain.data.chat import from_messages, from_prompt_completion, from_sharegpt, to_messages, validate_messages
from posttrain.data.io import DataError, read_records, write_json_atomic, write_jsonl_atomic

# ---------------------------------------------------------------------------------------------
# Converters: record -> record
# ---------------------------------------------------------------------------------------------

Converter = Callable[[dict], dict]
_KEEP_KEYS = ("id", "source")  # metadata that chat converters carry over


def _chat(to_msgs: Callable[[dict], list[dict]]) -> Converter:
    def convert(rec: dict) -> dict:
        out = {"messages": validate_messages(to_msgs(rec), require_assistant=False)}
        out.update({k: rec[k] for k in _KEEP_KEYS if k in rec})
        return out

    return convert


def _requires(*keys: str) -> Converter:
    def check(rec: dict) -> dict:
        missing = [k for k in keys if k not in rec]
        if missing:
            raise DataError(f"missing field {missing[0]!r} (fields present: {sorted(rec)})")
        return rec

    return check


CONVERTERS: dict[str, Converter] = {
    "passthrough": lambda rec: rec,
    "messages": _chat(from_messages),
    "sharegpt": _chat(from_sharegpt),
    "prompt_completion": _chat(from_prompt_completion),
    "auto": _chat(lambda rec: to_messages(rec, "auto")),
    "preference": _requires("chosen", "rejected"),  # passthrough, checked
    "rlvr": _requires("messages", "ground_truth"),  # passthrough, checked
}


def register_converter(name: str, fn: Converter) -> None:
    """Make `format: name` available in mixture configs."""
    if name in CONVERTERS:
        raise ValueError(f"converter {name!r} is already registered")
    CONVERTERS[name] = fn


# ---------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceConfig:
    path: str = field(doc="a .jsonl/.json/.parquet file, a save_to_disk directory, or an HF hub dataset name")
    name: str | None = field(None, doc="label in the manifest; default: file stem or dataset name")
    count: int | None = field(None, doc="rows to take (give count or fraction; neither = all rows)")
    fraction: float | None = field(None, doc="fraction of this source's rows to take, in (0, 1]")
    format: str = field("passthrough", doc="converter: passthrough, messages, sharegpt, prompt_completion, "
                                           "auto, preference, rlvr, or a registered name")
    split: str = field("train", doc="split for HF datasets and DatasetDict directories")
    allow_fewer: bool = field(False, doc="if count > available rows, take them all instead of failing")

    def label(self) -> str:
        if self.name:
            return self.name
        p = Path(self.path)
        return p.stem if p.suffix else self.path.rstrip("/").split("/")[-1]

    def validate(self) -> None:
        if self.count is not None and self.fraction is not None:
            raise ConfigError(f"source {self.label()!r}: give count or fraction, not both")
        if self.count is not None and self.count < 0:
            raise ConfigError(f"source {self.label()!r}: count must be >= 0, got {self.count}")
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"source {self.label()!r}: fraction must be in (0, 1], got {self.fraction}")
        if self.format not in CONVERTERS:
            raise ConfigError(f"source {self.label()!r}: unknown format {self.format!r}; "
                             f"valid: {', '.join(CONVERTERS)}")


@dataclass
class MixtureConfig:
    """`posttrain mixture`: sample, convert and deduplicate sources into one JSONL."""

    sources: list[SourceConfig] = field([], doc="the sources, in order (see SourceConfig)")
    output: str = field("outputs/mixture.jsonl", doc="the mixed dataset (JSONL)")
    manifest: str | None = field(None, doc="manifest JSON; default: <output without .jsonl>.manifest.json")
    seed: int = field(42, doc="seed for sampling and shuffling")
    dedup: Literal["none", "content", "prompt"] = field(
        "content", doc="drop exact duplicates: content = whole record (whitespace-normalised, metadata "
                       "fields ignored), prompt = user prompts only, none = keep all")
    dedup_ignore: list[str] = field(["id", "source"], doc="fields ignored by dedup=content")
    shuffle: bool = field(True, doc="shuffle the mixed rows (else: source order, file order within)")
    source_field: str | None = field(None, doc="if set, write each row's source name into this field")
    force: bool = field(False, doc="rebuild even if the manifest says the output is up to date")

    def validate(self) -> None:
        if not self.sources:
            raise ConfigError("mixture: `sources` is empty")
        labels = [s.label() for s in self.sources]
        dupes = sorted({x for x in labels if labels.count(x) > 1})
        if dupes:
            raise ConfigError(f"mixture: source names must be unique; repeated: {dupes} (set `name`)")
        for s in self.sources:
            s.validate()

    def manifest_path(self) -> Path:
        if self.manifest:
            return Path(self.manifest)
        out = Path(self.output)
        return out.with_name(out.name.removesuffix(".jsonl") + ".manifest.json")


def load_mixture_config(path: str | os.PathLike, overrides: list[str] | None = None) -> MixtureConfig:
    """Read a mixture YAML; unknown keys and bad values raise errors naming the file and key."""
    return load_config(MixtureConfig, path, overrides)


# ---------------------------------------------------------------------------------------------
# Manifest
# ---------------------------------------------------------------------------------------------

@dataclass
class SourceManifest:
    name: str
    path: str
    split: str
    format: str
    sha256: str | None  # of the file (or of a directory's files); None for hub datasets
    available: int
    requested: int  # count, or fraction resolved to rows: int(fraction * available)
    taken: int
    duplicates_removed: int  # rows of this source dropped as duplicates of an earlier row
    kept: int


@dataclass
class Manifest:
    output: str
    output_sha256: str
    n_rows: int
    seed: int
    dedup: str
    duplicates_removed: int
    sources: list[SourceManifest]
    config: dict

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Manifest:
        return cls(**{**d, "sources": [SourceManifest(**s) for s in d["sources"]]})


# ---------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------

def sha256_of(path: str | os.PathLike) -> str | None:
    """sha256 of a file; of (relative path, file sha256) lines for a directory; None otherwise."""
    p = Path(path)
    if p.is_file():
        h = hashlib.sha256()
        with open(p, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        return h.hexdigest()
    if p.is_dir():
        lines = [f"{f.relative_to(p).as_posix()}\0{sha256_of(f)}\n" for f in sorted(p.rglob("*")) if f.is_file()]
        return hashlib.sha256("".join(lines).encode()).hexdigest()
    return None


def _is_jsonl(path: str) -> bool:
    return path.lower().endswith((".jsonl", ".ndjson")) and Path(path).is_file()


def _count_records(src: SourceConfig) -> int:
    if _is_jsonl(src.path):  # no parsing: rows are non-blank lines, as read_records yields them
        with open(src.path, "rb") as fh:
            return sum(1 for line in fh if line.strip())
    return sum(1 for _ in read_records(src.path, src.split))


def _check_exists(src: SourceConfig) -> None:
    p = Path(src.path)
    looks_local = p.suffix or src.path.startswith((".", "/")) or "/" not in src.path
    if looks_local and not p.exists():
        raise ValueError(f"source {src.label()!r}: file not found: {src.path}")


def _resolve_take(src: SourceConfig, available: int) -> tuple[int, int]:
    """-> (requested, taken)."""
    if src.count is not None:
        requested = src.count
    elif src.fraction is not None:
        requested = int(src.fraction * available)
    else:
        requested = available
    if requested > available and not src.allow_fewer:
        raise ValueError(f"source {src.label()!r} ({src.path}): count {requested} is more than the "
                         f"{available} rows available; lower it or set allow_fewer: true")
    return requested, min(requested, available)


def _sample(src: SourceConfig, seed: int, available: int, take: int) -> Iterator[tuple[int, dict]]:
    """The chosen records (in file order) with their line/row numbers."""
    rng = random.Random(f"{seed}/{src.label()}")
    chosen = set(rng.sample(range(available), take))
    for k, (lineno, rec) in enumerate(read_records(src.path, src.split)):
        if k in chosen:
            yield lineno, rec


_SPACES = re.compile(r"\s+")


def _normalise(value):
    if isinstance(value, str):
        return _SPACES.sub(" ", value).strip()
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


def dedup_key(record: dict, mode: str, ignore: tuple[str, ...] = ("id", "source")) -> str:
    """Hash of a record's content with whitespace runs collapsed (case and punctuation are kept)."""
    if mode == "prompt":
        from posttrain.data.text import extract_prompts

        content = [_normalise(p) for p in extract_prompts(record, None)]
    else:
        content = _normalise({k: v for k, v in record.items() if k not in ignore})
    blob = json.dumps(content, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def _up_to_date(cfg: MixtureConfig, config_dict: dict, input_hashes: list[str | None]) -> Manifest | None:
    path = cfg.manifest_path()
    if cfg.force or not path.is_file() or not Path(cfg.output).is_file():
        return None
    try:
        old = Manifest.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError, KeyError):
        return None
    same_inputs = [s.sha256 for s in old.sources] == input_hashes and None not in input_hashes
    same_config = {k: v for k, v in old.config.items() if k != "force"} == \
        {k: v for k, v in config_dict.items() if k != "force"}
    if same_inputs and same_config and old.output_sha256 == sha256_of(cfg.output):
        return old
    return None


def build_mixture(cfg: MixtureConfig) -> Manifest:
    """Build the mixture described by `cfg`; returns (and writes) its manifest."""
    cfg.validate()
    for src in cfg.sources:
        _check_exists(src)
    config_dict = asdict(cfg)
    hashes = [sha256_of(s.path) for s in cfg.sources]
    previous = _up_to_date(cfg, config_dict, hashes)
    if previous is not None:
        print(f"mixture: {cfg.output} is up to date ({previous.n_rows} rows); set force=true to rebuild")
        return previous

    rows: list[dict] = []
    origin: list[int] = []  # source index of each row
    stats = []
    for i, src in enumerate(cfg.sources):
        available = _count_records(src)
        requested, take = _resolve_take(src, available)
        convert = CONVERTERS[src.format]
        for lineno, rec in _sample(src, cfg.seed, available, take):
            try:
                out = convert(rec)
            except DataError as e:
                raise DataError(f"{src.path}:{lineno}: format {src.format!r}: {e}") from None
            if cfg.source_field:
                out = {**out, cfg.source_field: src.label()}
            rows.append(out)
            origin.append(i)
        stats.append([available, requested, take])

    dupes = [0] * len(cfg.sources)
    if cfg.dedup != "none":
        seen: set[str] = set()
        keep_rows, keep_origin = [], []
        ignore = tuple(cfg.dedup_ignore) + ((cfg.source_field,) if cfg.source_field else ())
        for rec, i in zip(rows, origin):
            try:
                key = dedup_key(rec, cfg.dedup, ignore)
            except ValueError as e:
                raise ValueError(f"source {cfg.sources[i].label()!r}: dedup={cfg.dedup}: {e}") from None
            if key in seen:
                dupes[i] += 1
                continue
            seen.add(key)
            keep_rows.append(rec)
            keep_origin.append(i)
        rows, origin = keep_rows, keep_origin
    if cfg.shuffle:
        random.Random(cfg.seed).shuffle(rows)

    write_jsonl_atomic(cfg.output, rows)
    sources = [
        SourceManifest(src.label(), src.path, src.split, src.format, h, available, requested, taken, d, taken - d)
        for src, h, (available, requested, taken), d in zip(cfg.sources, hashes, stats, dupes)
    ]
    manifest = Manifest(cfg.output, sha256_of(cfg.output) or "", len(rows), cfg.seed, cfg.dedup, sum(dupes),
                        sources, config_dict)
    write_json_atomic(cfg.manifest_path(), manifest.to_dict())
    print(f"mixture: wrote {len(rows)} rows to {cfg.output} ({sum(dupes)} duplicates removed); "
          f"manifest {cfg.manifest_path()}")
    return manifest
