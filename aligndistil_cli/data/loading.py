"""Reading rows from local files, ``datasets.save_to_disk`` folders, or the Hugging Face Hub.

Formats: JSON (a list of objects, or ``{"data": [...]}`` / ``{"<split>": [...]}``), JSONL (also
``.jsonl.gz``), Parquet, CSV/TSV, a ``save_to_disk`` folder (Dataset or DatasetDict), any other
folder ``datasets.load_dataset`` understands, or a hub dataset name. Nothing is ever unpickled:
JSON/CSV go through the standard library, Parquet and Arrow through pyarrow.

Every row gets its position in the file as its row id (``ROW_ID_KEY``), so reports and caches
point at the same row even after rows are dropped or shuffled.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import os
from pathlib import Path
from typing import Any

from aligndistil_cli.errors import AlignDistilError

ROW_ID_KEY = "_row_id"
MAX_LISTED_LINES = 10
JSON_SUFFIXES = (".json",)
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
CSV_SUFFIXES = (".csv", ".tsv")
KNOWN_SUFFIXES = JSON_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES + CSV_SUFFIXES


def load_rows(path: str, *, split: str = "train") -> list[dict]:
    """Read every row of a data file, folder or hub dataset, each tagged with its row id.

    Raises:
        AlignDistilError: missing/unreadable/malformed file, unknown split, unreachable hub.
    """
    local = Path(os.path.expanduser(str(path)))
    if local.is_dir():
        rows = _read_folder(local, split)
    elif local.exists():
        rows = _read_file(local, split)
    elif _looks_local(str(path)):
        raise AlignDistilError(f"data file {path} does not exist",
                               "check the path (relative paths start at the current folder)")
    else:
        rows = _read_hub(str(path), split)
    if not rows:
        raise AlignDistilError(f"{path} contains no rows", "pass a file with at least one example")
    return [_tag(row, i) for i, row in enumerate(rows)]


def _tag(row: Any, index: int) -> Any:
    # Non-dict rows are kept as they are: validation reports them instead of crashing here.
    return {**row, ROW_ID_KEY: index} if isinstance(row, dict) else row


def _looks_local(path: str) -> bool:
    """A path that cannot be a hub name ("owner/name" or "name") is reported as a missing file."""
    p = path.lower()
    return (p.startswith((".", "/", "~")) or p.endswith(KNOWN_SUFFIXES + (".gz", ".arrow"))
            or path.count("/") > 1 or "\\" in path)


def _read_file(path: Path, split: str) -> list:
    name = path.name.lower().removesuffix(".gz")
    if not name.endswith(KNOWN_SUFFIXES):
        raise AlignDistilError(f"unsupported data file type: {path.name}",
                               "use .json, .jsonl, .parquet, .csv/.tsv or a save_to_disk folder")
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return _read_parquet(path)
        text = _read_text(path)
        if name.endswith(JSONL_SUFFIXES):
            return _parse_jsonl(text, path)
        if name.endswith(JSON_SUFFIXES):
            return _parse_json(text, path, split)
        return _parse_csv(text, delimiter="\t" if name.endswith(".tsv") else ",")
    except (OSError, EOFError, csv.Error) as exc:  # EOFError: a truncated .gz
        raise AlignDistilError(f"cannot read {path}: {getattr(exc, 'strerror', None) or exc}",
                               "check the file's permissions and that it is complete") from exc


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    if path.name.lower().endswith(".gz"):
        raw = gzip.decompress(raw)
    try:
        return raw.decode("utf-8-sig")  # -sig: tolerate a byte-order mark from spreadsheet tools
    except UnicodeDecodeError as exc:
        raise AlignDistilError(f"{path} is not UTF-8 text (byte {exc.start} is invalid)",
                               "re-save the file as UTF-8") from exc


def _parse_jsonl(text: str, path: Path) -> list:
    rows, bad = [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append(number)
    if bad:
        listed = ", ".join(map(str, bad[:MAX_LISTED_LINES]))
        more = f" and {len(bad) - MAX_LISTED_LINES} more" if len(bad) > MAX_LISTED_LINES else ""
        raise AlignDistilError(f"{path.name}: malformed JSON on line(s) {listed}{more}",
                               "fix or delete those lines (one JSON object per line)")
    return rows


def _parse_json(text: str, path: Path, split: str) -> list:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        if exc.msg == "Extra data":  # several documents: a JSONL file named .json
            return _parse_jsonl(text, path)
        raise AlignDistilError(f"{path.name}: malformed JSON at line {exc.lineno}, column "
                               f"{exc.colno}: {exc.msg}", "fix the syntax") from exc
    if isinstance(data, list):
        return data
    if isinstance(data, dict):
        for key in (split, "data"):
            if isinstance(data.get(key), list):
                return data[key]
        lists = sorted(k for k, v in data.items() if isinstance(v, list))
        raise AlignDistilError(
            f"{path.name}: no list of rows under '{split}' or 'data'"
            + (f" (lists found under: {', '.join(lists)})" if lists else ""),
            "pass --split with one of those keys, or store the rows as a top-level JSON list")
    raise AlignDistilError(f"{path.name}: expected a JSON list of objects",
                           "store the rows as a JSON list or as JSONL")


def _parse_csv(text: str, delimiter: str) -> list:
    return list(csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter))


def _read_parquet(path: Path) -> list:
    import pyarrow
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pylist()
    except (pyarrow.ArrowException, ValueError) as exc:
        raise AlignDistilError(f"{path.name} is not a readable Parquet file: "
                               f"{str(exc).splitlines()[0]}", "re-export the file") from exc


def _pick_split(splits: dict[str, Any], split: str, where: str) -> Any:
    if split not in splits:
        raise AlignDistilError(f"{where} has no split '{split}' (available: "
                               f"{', '.join(sorted(splits)) or 'none'})",
                               "pass --split with one of the available splits")
    return splits[split]


def _read_folder(path: Path, split: str) -> list:
    """A ``save_to_disk`` folder (Arrow files, no pickle) or a folder of data files."""
    import datasets

    saved_dict = (path / "dataset_dict.json").is_file()
    saved_one = (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    try:
        if saved_dict or saved_one:
            loaded = datasets.load_from_disk(str(path))
            if isinstance(loaded, datasets.DatasetDict):
                loaded = _pick_split(dict(loaded), split, str(path))
            return loaded.to_list()
        loaded = datasets.load_dataset(str(path))
        return _pick_split(dict(loaded), split, str(path)).to_list()
    except AlignDistilError:
        raise
    except (OSError, ValueError, datasets.exceptions.DatasetGenerationError) as exc:
        raise AlignDistilError(f"cannot read the dataset folder {path}: "
                               f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}",
                               "pass a save_to_disk folder or a folder of .jsonl/.parquet/.csv "
                               "files") from exc


def _read_hub(name: str, split: str) -> list:
    import datasets

    try:
        return datasets.load_dataset(name, split=split).to_list()
    except ConnectionError as exc:
        raise AlignDistilError(f"'{name}' is not a local file or folder, and the Hugging Face "
                               "Hub is unreachable to load it as a dataset",
                               "download it elsewhere and pass a local file/folder") from exc
    except datasets.exceptions.DatasetNotFoundError as exc:
        raise AlignDistilError(f"'{name}' is neither a local file nor a dataset on the hub",
                               "check the path or the dataset name") from exc
    except ValueError as exc:
        if "split" not in str(exc).lower():
            raise
        # datasets says: Unknown split "x". Should be one of ['train', 'test'].
        raise AlignDistilError(f"hub dataset '{name}': {str(exc).splitlines()[0]}",
                               "pass --split with one of the available splits") from exc
