"""Unlabelled sequence files, the input of prediction: one reader for every format a user may hand over.

    read_sequences(path) -> pa.Table with columns id (string) and sequence (string, upper-case ACGTN)

Formats, by file name: ``.csv`` / ``.csv.gz`` (a ``sequence`` column, optional ``id``; other columns are
ignored), FASTA (``.fa`` / ``.fasta`` / ``.fna``, optionally ``.gz``; the header's first word is the id),
``.parquet`` (a string ``sequence`` column, optional ``id``) and ``.txt`` (one sequence per line). Without
an id column the id is the 1-based record number. Every
problem is one DataError "<file>:<line or row>: <problem>; expected <what>" (docs/reliability.md).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv
import pyarrow.parquet as pq

from lingo_core.data.errors import DataError, decode_utf8
from lingo_core.data.fasta import FastaRecords, is_fasta, read_fasta
from lingo_core.data.loading import ALPHABET, _read_bytes

FORMATS = ".csv, .csv.gz, .fa/.fasta/.fna[.gz], .parquet or .txt"


_UTF8 = "UTF-8 text (save the file as UTF-8)"  # what decode_utf8's error asks for


def _from_csv(path: Path) -> tuple[pa.Table, str]:
    data = _read_bytes(path)
    decode_utf8(path, data, _UTF8)  # pyarrow's own message would not say where
    if not data.strip():
        raise DataError(f"{path}:1: empty file; expected a header line with a 'sequence' column")
    try:
        table = pcsv.read_csv(pa.BufferReader(data), convert_options=pcsv.ConvertOptions(
            column_types={"sequence": pa.string(), "id": pa.string()}, strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a readable CSV ({str(exc).splitlines()[0]}); expected a header line "
                        "and rows with the same number of fields") from None
    return table, "line"


def _from_parquet(path: Path) -> tuple[pa.Table, str]:
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({str(exc).splitlines()[0]}); expected a "
                        "Parquet table with a string 'sequence' column") from None
    for name in ("sequence", "id"):
        if name in table.column_names and not pa.types.is_string(table.schema.field(name).type) \
                and not pa.types.is_large_string(table.schema.field(name).type):
            raise DataError(f"{path}: column {name!r} has type {table.schema.field(name).type}; expected string")
    return table, "row"


def _from_fasta(path: Path) -> tuple[pa.Table, str]:
    recs = read_fasta(path, FastaRecords(), fixed_label="")  # no labels to predict from
    if not recs.sequences:
        raise DataError(f"{path}:1: no FASTA records; expected '>id' header lines each followed by a sequence")
    # id: the header's first word (FastaRecords.ids)
    return pa.table({"sequence": recs.sequences, "id": recs.ids, "line": recs.lines}), "fasta"


def _from_text(path: Path) -> tuple[pa.Table, str]:
    text = decode_utf8(path, _read_bytes(path), _UTF8)
    rows = [(i, ln.strip()) for i, ln in enumerate(text.splitlines(), start=1) if ln.strip()]
    if not rows:
        raise DataError(f"{path}:1: empty file; expected one DNA sequence per line")
    return pa.table({"sequence": [s for _, s in rows], "line": [i for i, _ in rows]}), "fasta"


def _reader(path: Path):
    name = path.name.lower()
    if name.endswith((".csv", ".csv.gz")):
        return _from_csv
    if name.endswith(".parquet"):
        return _from_parquet
    if is_fasta(path):
        return _from_fasta
    if name.endswith((".txt", ".txt.gz")):
        return _from_text
    raise DataError(f"{path}: unknown sequence file type; expected {FORMATS}")


def read_sequences(path: str | Path) -> pa.Table:
    """Sequences to classify from `path` (see the module docstring); DataError names file and line/row."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file; expected a sequence file ({FORMATS})")
    table, where = _reader(path)(path)
    if "sequence" not in table.column_names:
        raise DataError(f"{path}:1: no 'sequence' column (found {table.column_names}); expected a column "
                        "named 'sequence'")
    if table.num_rows == 0:
        raise DataError(f"{path}: no sequences; expected at least one row")

    def locate(i: int) -> str:
        if where == "line":  # CSV: header on line 1; pyarrow skips blank lines, so count them out
            lines = [n for n, ln in enumerate(_read_bytes(path).split(b"\n"), start=1) if ln.strip()]
            return f"{path}:{lines[i + 1]}"
        if where == "row":
            return f"{path}: row {i + 1}"
        return f"{path}:{table.column('line')[i].as_py()}"

    raw = table.column("sequence")
    if raw.null_count:
        i = pc.index(pc.is_null(raw), True).as_py()
        raise DataError(f"{locate(i)}: missing sequence (null); expected a string of A, C, G, T or N")
    seq = pc.utf8_upper(raw)
    empty = pc.equal(pc.utf8_length(seq), 0)
    bad = pc.invert(pc.match_substring_regex(seq, f"^[{ALPHABET}]*$"))
    if pc.any(empty).as_py():
        i = pc.index(empty, True).as_py()
        raise DataError(f"{locate(i)}: empty sequence; expected a non-empty string of A, C, G, T or N")
    if pc.any(bad).as_py():
        i = pc.index(bad, True).as_py()
        s = raw[i].as_py()
        pos = next(k for k, ch in enumerate(s.upper()) if ch not in ALPHABET)
        raise DataError(f"{locate(i)}: letter {s[pos]!r} at position {pos + 1} of the sequence; expected only "
                        "A, C, G, T or N")
    ids = table.column("id") if "id" in table.column_names else pa.array([str(i + 1) for i in range(table.num_rows)])
    return pa.table({"id": pc.cast(ids, pa.string()), "sequence": seq})
