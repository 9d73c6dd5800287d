"""Reading and writing record files (JSONL, JSON arrays, parquet, HF datasets) with row numbers."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator


class DataError(ValueError):
    """Bad input data; the message names the file and line/row."""


def read_records(source: str | os.PathLike, split: str = "train") -> Iterator[tuple[int, dict]]:
    """Yield (1-based line or row number, record) from a .jsonl/.json/.parquet file, a directory
    saved with `datasets.save_to_disk`, or an HF hub dataset name (needs network)."""
    src = str(source)
    path = Path(src)
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".ndjson"):
            yield from _read_jsonl(path)
        elif suffix == ".json":
            yield from _read_json(path)
        elif suffix == ".parquet":
            yield from _read_parquet(path)
        else:
            raise DataError(f"{path}: unsupported file type '{suffix}' (use .jsonl, .json or .parquet)")
        return
    if path.is_dir():
        yield from _read_hf(src, split, local=True)
        return
    if "/" in src and not src.startswith((".", "/")) and not path.suffix:
        yield from _read_hf(src, split, local=False)
        return
    raise DataError(f"{src}: no such file or directory")


def _read_jsonl(path: Path) -> Iterator[tuple[int, dict]]:
    with open(path, encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: invalid JSON: {e.msg}") from None
            if not isinstance(rec, dict):
                raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _read_json(path: Path) -> Iterator[tuple[int, dict]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
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
