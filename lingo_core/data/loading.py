"""Load and validate task splits into pyarrow tables (``sequence`` upper-case ACGTN, ``label`` int64).

Checks are vectorised (pyarrow.compute); the file line of an offending row is only worked out once
an error is found, so clean files pay nothing for good error messages.
"""

from __future__ import annotations

import gzip
import warnings
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lingo_core.data.errors import DataError
from lingo_core.data.fasta import detect_layout, read_split, train_classes

if TYPE_CHECKING:
    from lingo_core.data.task import TaskSpec

COLUMNS = ("sequence", "label")
ALPHABET = "ACGTN"
_MAX_INVALID_ROWS = 64  # enough to find the first malformed row without keeping a whole broken file


class DataOverlapWarning(UserWarning):
    """Sequences shared between train and test (inflates test scores)."""


Locator = Callable[[int], str]  # 0-based data row -> "<file>:<line>"


def csv_path(folder: Path, split: str) -> Path:
    """``<split>.csv.gz`` or ``<split>.csv`` in a task folder; DataError names the expected path."""
    gz, plain = folder / f"{split}.csv.gz", folder / f"{split}.csv"
    if gz.is_file() and plain.is_file():
        raise DataError(
            f"{folder}: both {gz.name} and {plain.name} exist; keep one so the data is unambiguous"
        )
    if gz.is_file():
        return gz
    if plain.is_file():
        return plain
    raise DataError(f"{gz}: split file not found; expected {gz} or {plain}")


def _read_bytes(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc}); expected a readable CSV") from exc
    if path.name.endswith(".gz"):
        try:
            return gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{path}: unreadable or truncated gzip ({exc}); expected a complete .gz file (re-download it?)"
            ) from exc
    return raw


def _data_lines(data: bytes) -> list[tuple[int, bytes]]:
    """(1-based line number, text) of the non-blank lines; pyarrow skips blank lines too."""
    return [(i, ln.rstrip(b"\r")) for i, ln in enumerate(data.split(b"\n"), start=1) if ln.strip()]


def _read_csv(path: Path) -> tuple[pa.Table, Locator]:
    data = _read_bytes(path)
    bad_rows: list[str] = []

    def on_invalid(row) -> str:
        if len(bad_rows) < _MAX_INVALID_ROWS:
            bad_rows.append(row.text)
        return "skip"

    try:
        table = pcsv.read_csv(
            pa.BufferReader(data),
            parse_options=pcsv.ParseOptions(invalid_row_handler=on_invalid),
            # Both as strings: a non-integer label must become our error, not pyarrow's type guess.
            convert_options=pcsv.ConvertOptions(
                column_types={c: pa.string() for c in COLUMNS}, strings_can_be_null=False
            ),
        )
    except pa.ArrowInvalid as exc:
        if not data.strip():
            raise DataError(f"{path}:1: empty file; expected the header 'sequence,label'") from exc
        raise DataError(f"{path}: not a readable CSV ({exc}); expected 'sequence,label' rows") from exc
    if bad_rows:
        texts = {t.encode() for t in bad_rows}
        no, text = next((i, t) for i, t in _data_lines(data)[1:] if t in texts)
        n = len(text.split(b","))
        raise DataError(
            f"{path}:{no}: row has {n} fields ({text[:60].decode(errors='replace')!r}); "
            f"expected {len(COLUMNS)} fields: {','.join(COLUMNS)}"
        )
    found = table.column_names
    if sorted(found) != sorted(COLUMNS):
        missing = [c for c in COLUMNS if c not in found]
        extra = [c for c in found if c not in COLUMNS]
        what = "; ".join(f"{k} column {c}" for k, c in (("missing", missing), ("extra", extra)) if c)
        raise DataError(f"{path}:1: {what}; found columns {found}, expected exactly {list(COLUMNS)}")

    def locate(row: int) -> str:
        # Only called on error: splitting the file into lines costs as much as parsing it.
        return f"{path}:{_data_lines(data)[row + 1][0]}"  # +1 skips the header line

    return table.select(list(COLUMNS)), locate


def _read_fasta(folder: Path, split: str, task: TaskSpec | None) -> tuple[pa.Table, Locator, str]:
    classes = task.label_names if task is not None else None
    recs = read_split(folder, split, classes=classes)
    table = pa.table(
        {"sequence": pa.array(recs.sequences, pa.string()), "label": pa.array(recs.labels, pa.string())}
    )

    def locate(row: int) -> str:
        return f"{recs.files[row]}:{recs.lines[row]}"

    where = str(recs.files[0]) if recs.files else str(folder / split)
    return table, locate, where


def _first_false(mask: pa.ChunkedArray | pa.Array) -> int | None:
    """Index of the first False (null counts as False), or None when all are True."""
    mask = pc.fill_null(mask, False)
    if pc.all(mask).as_py():
        return None
    return pc.index(mask, False).as_py()


def invalid_letter(sequences: pa.ChunkedArray | pa.Array) -> tuple[int, str] | None:
    """(row, problem) of the first non-null sequence with a letter outside ACGTN (any case), else None."""
    upper = pc.utf8_upper(sequences)
    ok = pc.or_kleene(pc.is_null(upper), pc.match_substring_regex(upper, f"^[{ALPHABET}]*$"))
    if (i := _first_false(ok)) is None:
        return None
    pos = next(k for k, ch in enumerate(upper[i].as_py()) if ch not in ALPHABET)
    bad = sequences[i].as_py()[pos]
    return i, f"letter {bad!r} at position {pos + 1} of the sequence; expected only A, C, G, T or N"


def _validate(table: pa.Table, locate: Locator, where: str, num_labels: int | None) -> pa.Table:
    """Checks every row; raises one DataError for the earliest offending row."""
    if table.num_rows == 0:
        raise DataError(f"{where}: no data rows; expected at least one 'sequence,label' row per class")
    seq = pc.utf8_upper(table.column("sequence"))
    raw = pc.utf8_trim_whitespace(table.column("label"))
    is_int = pc.match_substring_regex(raw, r"^-?[0-9]{1,18}$")  # 18 digits always fit int64

    problems: list[tuple[int, str]] = []
    if (i := _first_false(pc.greater(pc.utf8_length(seq), 0))) is not None:
        problems.append((i, "empty sequence; expected a non-empty string of A, C, G, T or N"))
    if (bad := invalid_letter(table.column("sequence"))) is not None:
        problems.append(bad)
    if (i := _first_false(is_int)) is not None:
        problems.append(
            (i, f"label {table.column('label')[i].as_py()!r} is not an integer; expected a class id")
        )
        labels = None
    else:
        labels = pc.cast(raw, pa.int64())
        top = num_labels - 1 if num_labels is not None else None
        in_range = pc.greater_equal(labels, 0)
        if top is not None:
            in_range = pc.and_(in_range, pc.less_equal(labels, top))
        if (i := _first_false(in_range)) is not None:
            want = f"0..{top} ({num_labels} classes)" if top is not None else "a non-negative class id"
            problems.append((i, f"label {labels[i].as_py()} is out of range; expected {want}"))
    if problems:
        row, msg = min(problems)
        raise DataError(f"{locate(row)}: {msg}")
    assert labels is not None
    classes = pc.unique(labels)
    if len(classes) < 2:
        raise DataError(
            f"{where}: only one class (label {classes[0].as_py()}) in {table.num_rows} rows; "
            "expected at least 2 classes per split"
        )
    return pa.table({"sequence": seq, "label": labels})


def _load(folder: Path, source: str, split: str, task: TaskSpec | None) -> pa.Table:
    num_labels = task.num_labels if task is not None else None
    if source == "csv":
        path = csv_path(folder, split)
        table, locate = _read_csv(path)
        return _validate(table, locate, str(path), num_labels)
    table, locate, where = _read_fasta(folder, split, task)
    return _validate(table, locate, where, num_labels)


def load_split(task: TaskSpec, split: str) -> pa.Table:
    """One split as a table with ``sequence`` (string, upper-case ACGTN) and ``label`` (int64)."""
    table = _load(task.path, task.source, split, task)
    want = (task.sizes or {}).get(split)
    if want is not None and want != table.num_rows:
        raise DataError(
            f"{task.path}: split {split!r} has {table.num_rows} rows; expected {want} as listed in tasks.json "
            "(a cut or replaced file, or a stale tasks.json)"
        )
    return table


def train_test_overlap(tables: dict[str, pa.Table]) -> int:
    """How many test sequences also occur in train (the data report's column, load_task's warning)."""
    train, test = tables["train"].column("sequence"), tables["test"].column("sequence")
    return pc.sum(pc.is_in(test, value_set=pc.unique(train))).as_py() or 0


def load_task(task: TaskSpec, splits: Sequence[str] = ("train", "dev", "test")) -> dict[str, pa.Table]:
    """All requested splits; warns (DataOverlapWarning) when test sequences also occur in train."""
    out = {s: load_split(task, s) for s in splits}
    if "train" in out and "test" in out:
        n = train_test_overlap(out)
        if n:
            warnings.warn(
                f"{task.name}: {n} of {out['test'].num_rows} test sequences also occur in train; "
                "test scores on this task are optimistic",
                DataOverlapWarning,
                stacklevel=2,
            )
    return out


def infer_task_stats(folder: Path, source: str) -> tuple[int, int, int, tuple[str, ...] | None]:
    """(num_labels, median length in bp, train rows, class names or None) from a task's train split,
    for folders without a tasks.json entry."""
    classes = None
    if source == "fasta":
        if detect_layout(folder) == "per_class":
            classes = train_classes(folder)
    table = _load(folder, source, "train", None)
    num_labels = len(classes) if classes else int(pc.max(table.column("label")).as_py()) + 1
    median = int(np.median(pc.utf8_length(table.column("sequence")).to_numpy()))
    return num_labels, median, table.num_rows, classes
