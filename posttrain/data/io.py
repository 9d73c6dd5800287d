"""Reading and writing record files (JSONL, JSON arrays, parquet, HF datasets) with row numbers,
and the one row loader every training-data format uses (limit, error policy, per-file counts)."""

from __future__ import annotations

import gzip
import json
import os
import re
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal, TypeVar

from posttrain.config import field as cfg_field

T = TypeVar("T")
OnError = Literal["raise", "skip"]
SKIP_HINT = "  (set data.on_error=skip to drop such rows and count them)"
_BOM = b"\xef\xbb\xbf"


@dataclass
class DataFiles:
    """The data section SFT and preference stages share: which files, how long a sequence may be,
    and what happens to long or bad rows (each stage adds its own formats and fields)."""

    paths: list[str] = cfg_field([], "training files (.jsonl/.json/.parquet), dataset dirs or hub names")
    format: str = cfg_field("auto", "row format (auto: detected per file)")
    max_length: int = cfg_field(2048, "maximum tokens of one sequence (prompt + response)")
    too_long: Literal["raise", "skip", "truncate"] = cfg_field("raise", "longer rows: stop, drop and count, or cut")
    on_error: OnError = cfg_field("raise", "bad rows: stop with an error, or drop and count")
    limit: int | None = cfg_field(None, "use at most this many rows per source (for quick runs)")


class DataError(ValueError):
    """Bad input data; the message names the file and line/row."""


def read_records(source: str | os.PathLike, split: str = "train") -> Iterator[tuple[int, dict]]:
    """Yield (1-based line or row number, record) from a .jsonl/.json/.parquet file, a directory
    saved with `datasets.save_to_disk`, or an HF hub dataset name (needs network)."""
    src = str(source)
    path = Path(src)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson") or path.name.lower().endswith((".jsonl.gz", ".ndjson.gz")):
            yield from _read_jsonl(path)
        elif suffix == ".json":
            yield from _read_json(path)
        elif suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .jsonl.gz, .json or .parquet)")
        return
    if path.is_dir():
        yield from _read_hf(src, split, local=True)
        return
    if "/" in src and not src.startswith((".", "/")) and not path.suffix:
        yield from _read_hf(src, split, local=False)
        return
    raise DataError(f"{src}: no such file or directory")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    # utf-8-sig: editors on Windows write a byte-order mark that json.loads refuses. Undecodable
    # bytes are let through as surrogates and reported at their line, so the rows before a bad
    # byte are read in order and the error can name the line; newline="" keeps each line's bytes
    # intact for the byte offset while splitting lines exactly as the default text mode does.
    with _open_text(path) as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.isascii() and _SURROGATE.search(line):
                raise _utf8_error(path, lineno, line)
            if line.startswith("\ufeff"):  # files joined with `cat` keep each one's mark
                line = line[1:]
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


_SURROGATE = re.compile("[\udc80-\udcff]")


def _gzipped(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_text(path: Path):
    # utf-8-sig / surrogateescape / newline="": see _read_jsonl
    if _gzipped(path):
        return gzip.open(path, "rt", encoding="utf-8-sig", errors="surrogateescape", newline="")
    return open(path, encoding="utf-8-sig", errors="surrogateescape", newline="")


def _utf8_error(path: Path, lineno: int, line: str) -> DataError:
    """Where the first undecodable byte of `line` is: line, column and byte offset in the file."""
    raw = line.encode("utf-8", "surrogateescape")
    try:
        raw.decode("utf-8")
        start, reason = 0, "invalid byte"  # not reached: the line held an undecodable byte
    except UnicodeDecodeError as e:
        start, reason = e.start, e.reason
    with (gzip.open(path, "rb") if _gzipped(path) else open(path, "rb")) as fh:
        offset = start + (len(_BOM) if fh.read(len(_BOM)) == _BOM else 0)
    # The byte count of the lines before, read as _read_jsonl reads them; only on this error path.
    # (For a .gz file the offset counts the uncompressed bytes.)
    with _open_text(path) as fh:
        for _, before in zip(range(lineno - 1), fh):
            offset += len(before.encode("utf-8", "surrogateescape"))
    column = len(raw[:start].decode("utf-8", "replace")) + 1
    return DataError(f"{path}:{lineno}: invalid UTF-8: byte 0x{raw[start]:02x} at column {column} "
                     f"(byte offset {offset} in the file): {reason}; the file must be UTF-8 "
                     f"(re-encode it, e.g. iconv -f latin1 -t utf-8)")


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    raw = path.read_bytes()
    skipped = len(_BOM) if raw.startswith(_BOM) else 0  # a byte-order mark is not content
    try:
        text = raw[skipped:].decode("utf-8")
    except UnicodeDecodeError as e:
        lineno = raw[:skipped + e.start].count(b"\n") + 1  # counted as json counts its `lineno`
        raise DataError(f"{path}:{lineno}: invalid UTF-8: byte 0x{raw[skipped + e.start]:02x} "
                        f"(byte offset {skipped + e.start} in the file): {e.reason}; the file must be UTF-8 "
                        f"(re-encode it, e.g. iconv -f latin1 -t utf-8)") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: invalid JSON: {e.msg} (line {e.lineno})") from None
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a JSON array of objects")
    for i, rec in enumerate(data, 1):
        if not isinstance(rec, dict):
            raise DataError(f"{path}: item {i}: expected an object")
        yield i, rec


def _read_parquet(path: Path) -> Iterator[tuple[int, dict]]:
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    for i, rec in enumerate(table.to_pylist(), 1):
        yield i, rec


def _read_hf(name: str, split: str, local: bool) -> Iterator[tuple[int, dict]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a dependency
        raise DataError(f"{name}: reading HF datasets needs the `datasets` package") from None
    try:
        if local:
            ds = datasets.load_from_disk(name)
            if isinstance(ds, datasets.DatasetDict):
                ds = ds[split]
        else:
            ds = datasets.load_dataset(name, split=split)
    except Exception as e:  # the library raises many types; the user needs one clear line
        raise DataError(f"{name}: cannot load dataset (split {split!r}): {e}") from None
    for i, rec in enumerate(ds, 1):
        yield i, dict(rec)


# ---------------------------------------------------------------- the row loader

@dataclass
class FileStats:
    """One source's counts; `kept` is what is left of it after every stage that drops rows."""
    source: str
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)

    def summary(self) -> str:
        if not self.read:
            return f"{self.source}: no rows (empty file?)"
        return f"{self.source}: {_counts(self.read, self.kept, self.dropped)}"


@dataclass
class LoadStats:
    """What happened to each row: kept, or dropped with a reason (never silently), in total and
    per source file."""
    read: int = 0
    kept: int = 0
    dropped: Counter = field(default_factory=Counter)
    examples: list[str] = field(default_factory=list)  # first few drop messages, for the log
    files: list[FileStats] = field(default_factory=list)

    def begin(self, source: str | os.PathLike) -> FileStats:
        self.files.append(FileStats(str(source)))
        return self.files[-1]

    def drop(self, reason: str, message: str, source: str | os.PathLike | None = None) -> None:
        """Drop a row that had been kept (by a later stage: tokenization, a length limit)."""
        self._count_drop(reason, message, source)
        # A LoadStats that did not see the rows loaded (tokenize_dataset on its own) has nothing
        # to take back.
        self.kept = max(self.kept - 1, 0)
        fs = self._file(source)
        if fs is not None:
            fs.kept = max(fs.kept - 1, 0)

    def _count_drop(self, reason: str, message: str, source=None) -> None:
        self.dropped[reason] += 1
        fs = self._file(source)
        if fs is not None:
            fs.dropped[reason] += 1
        if len(self.examples) < 5:
            self.examples.append(message)

    def _file(self, source) -> FileStats | None:
        # The named source, else the one being loaded: recipes load and tokenize file by file.
        if source is not None:
            for fs in reversed(self.files):
                if fs.source == str(source):
                    return fs
        return self.files[-1] if self.files else None

    def summary(self) -> str:
        return _counts(self.read, self.kept, self.dropped)

    def by_file(self) -> str:
        """Every source's counts on one line, for errors."""
        return "; ".join(fs.summary() for fs in self.files)

    def report(self, log: Callable[[str], None], headline: str, kept: int | None = None, what: str = "") -> None:
        """Log the headline, per-file counts and the first dropped rows; with `kept` == 0, stop
        with an error that gives every file's counts (`what`: "training examples", "prompts", ...)."""
        log(f"[data] {headline}")
        self.log_files(log)
        for msg in self.examples:
            log(f"[data] dropped: {msg}")
        if kept == 0:
            raise DataError(f"no {what} left after loading and filtering ({self.by_file()})")

    def log_files(self, log: Callable[[str], None], tag: str = "[data]") -> None:
        """Per-file counts when there are several files, and a warning for each empty one: an
        empty file among others is most likely a wrong path or a failed export."""
        if len(self.files) > 1:
            for fs in self.files:
                log(f"{tag}   {fs.summary()}")
        for fs in self.files:
            if not fs.read:
                log(f"{tag} warning: {fs.source} has no rows (empty file?)")


def _counts(read: int, kept: int, dropped: Counter) -> str:
    parts = [f"read {read}", f"kept {kept}"]
    parts += [f"dropped {n} ({r})" for r, n in sorted(dropped.items())]
    return ", ".join(parts)


def first_clause(detail: str) -> str:
    """A drop reason from an error message: its text up to the first colon."""
    return detail.split(":")[0][:60]


def load_rows(source: str | os.PathLike, convert: Callable[[dict, str], T], on_error: OnError = "raise",
              stats: LoadStats | None = None, limit: int | None = None,
              reason: Callable[[str], str] = first_clause) -> list[T]:
    """`convert(record, "file:line")` over the records of one source, in order.

    A DataError from `convert` stops the load with a message naming file:line (with
    on_error='raise'), or drops the row and counts it under `reason(message)`. `limit` caps the
    rows kept. Errors in the file itself (bad JSON or UTF-8) stop the load either way: the rest
    of the file cannot be trusted to be rows.
    """
    stats = stats if stats is not None else LoadStats()
    fs = stats.begin(source)
    out: list[T] = []
    for lineno, rec in read_records(source):
        if limit is not None and len(out) >= limit:
            break
        where = f"{source}:{lineno}"
        stats.read += 1
        fs.read += 1
        try:
            item = convert(rec, where)
        except DataError as e:
            detail = str(e)
            if detail.startswith(where + ": "):  # converters that name the row themselves
                detail = detail[len(where) + 2:]
            msg = f"{where}: {detail}"
            if on_error == "raise":
                raise DataError(msg + SKIP_HINT) from None
            stats._count_drop(reason(detail), msg, source)
            continue
        out.append(item)
        stats.kept += 1
        fs.kept += 1
    return out


def write_jsonl_atomic(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Write records to `path` through a temporary file and rename, so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    n = 0
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            for rec in records:
                fh.write(json.dumps(rec, ensure_ascii=False) + "\n")
                n += 1
        os.chmod(tmp, 0o644)  # mkstemp files are private; data outputs are meant to be read
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return n


def write_json_atomic(path: str | os.PathLike, obj) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(obj, fh, indent=2, ensure_ascii=False)
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
