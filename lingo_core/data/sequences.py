"""Unlabelled sequences to predict on: one FASTA, CSV or Parquet file -> a table (id, sequence).

  FASTA    .fa .fasta .fna (each optionally .gz)   id = first word of the header
  CSV      .csv .csv.gz                            a `sequence` column; `id` optional (else the row number)
  Parquet  .parquet                                the same columns

Other columns (a `label`, say) are ignored. Sequences are upper-cased; any letter outside ACGTN is a
DataError naming the file and the line (FASTA: the record's header line; Parquet: the row).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from lingo_core.data.fasta import FastaRecords, is_fasta, read_fasta
from lingo_core.data.loading import DataError, _data_lines, _read_bytes, invalid_letter

INPUT_FORMATS = ".fa, .fasta, .fna (optionally .gz), .csv, .csv.gz, .parquet"


def input_format(path: Path) -> str:
    """"fasta" | "csv" | "parquet" from the file name; DataError for anything else."""
    name = path.name.lower()
    if is_fasta(Path(name)):
        return "fasta"
    if name.endswith((".csv", ".csv.gz")):
        return "csv"
    if name.endswith(".parquet"):
        return "parquet"
    raise DataError(f"{path}: unknown input format; expected one of {INPUT_FORMATS}")


def read_sequences(path: str | Path) -> pa.Table:
    """The file's records as a table with `id` (string) and `sequence` (string, upper-case ACGTN)."""
    path = Path(path)
    kind = input_format(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found; expected an input file ({INPUT_FORMATS})")
    if kind == "fasta":
        ids, seqs, locate = _fasta(path)
    elif kind == "csv":
        ids, seqs, locate = _csv(path)
    else:
        ids, seqs, locate = _parquet(path)
    if len(seqs) == 0:
        raise DataError(f"{path}: no sequences; expected at least one record")
    if (i := _first_empty(seqs)) is not None:
        raise DataError(f"{locate(i)}: empty sequence; expected a non-empty string of A, C, G, T or N")
    if (bad := invalid_letter(seqs)) is not None:
        raise DataError(f"{locate(bad[0])}: {bad[1]}")
    if ids is None:  # no ids given: 1-based record numbers, stable across re-runs of the same file
        ids = pa.array([str(i + 1) for i in range(len(seqs))], pa.string())
    return pa.table({"id": pc.cast(ids, pa.string()), "sequence": pc.utf8_upper(seqs)})


def _first_empty(seqs: pa.ChunkedArray | pa.Array) -> int | None:
    empty = pc.fill_null(pc.equal(pc.utf8_length(seqs), 0), True)  # null = missing = empty
    return pc.index(empty, True).as_py() if pc.any(empty).as_py() else None


Located = tuple[pa.Array | pa.ChunkedArray | None, pa.Array | pa.ChunkedArray, Callable[[int], str]]


def _fasta(path: Path) -> Located:
    recs = read_fasta(path, FastaRecords(), fixed_label="")  # no labels to read: every header is fine
    return (pa.array(recs.ids, pa.string()), pa.array(recs.sequences, pa.string()),
            lambda i: f"{path}:{recs.lines[i]}")


def _csv(path: Path) -> Located:
    data = _read_bytes(path)
    try:
        table = pcsv.read_csv(pa.BufferReader(data), convert_options=pcsv.ConvertOptions(
            column_types={"sequence": pa.string(), "id": pa.string()}, strings_can_be_null=False))
    except pa.ArrowInvalid as exc:
        raise DataError(f"{path}: not a readable CSV ({exc}); expected a header with a 'sequence' column") from exc
    _require_sequence(path, table.column_names, "1")

    def locate(row: int) -> str:  # only on error: splitting into lines costs as much as parsing
        return f"{path}:{_data_lines(data)[row + 1][0]}"  # +1 skips the header

    ids = table.column("id") if "id" in table.column_names else None
    return ids, table.column("sequence"), locate


def _parquet(path: Path) -> Located:
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)
        _require_sequence(path, schema.names, None)
        table = pq.read_table(path, columns=[c for c in ("id", "sequence") if c in schema.names])
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({exc}); expected a 'sequence' column") from exc
    if not pa.types.is_string(table.schema.field("sequence").type) and not pa.types.is_large_string(
            table.schema.field("sequence").type):
        raise DataError(f"{path}: column 'sequence' has type {table.schema.field('sequence').type}; expected string")
    ids = table.column("id") if "id" in table.column_names else None
    return ids, table.column("sequence"), lambda i: f"{path}: row {i + 1}"


def _require_sequence(path: Path, columns: list[str], line: str | None) -> None:
    if "sequence" not in columns:
        where = f"{path}:{line}" if line else str(path)
        raise DataError(f"{where}: no 'sequence' column (found {columns}); expected 'sequence' and optionally 'id'")
