"""FASTA task readers.

Two conventions are recognised in a task folder (FASTA suffixes: ``.fa``, ``.fasta``, ``.fna``, each
optionally ``.gz``):

1. **Labels in headers** ("headers"): one file per split, ``<split>.fa`` (e.g. ``train.fa``,
   ``dev.fasta``, ``test.fna.gz``). Each record header carries an integer label, either as a
   whitespace-separated ``label=<int>`` field (``>chr1:100-200 label=1``) or as the last ``|``-field
   of the identifier (``>seq17|1 free text``). ``label=`` wins when both are present.
2. **One file per class** ("per_class"): one folder per split, ``<split>/<class>.fa``
   (e.g. ``train/promoter.fa``, ``train/background.fa``). The class names are the file stems of the
   train folder, sorted (numerically when all are integers); label ``i`` is the ``i``-th class and
   the class names become the task's label names. Dev/test may only use train classes.

Sequences may span several lines; blank lines are ignored. Errors name the file and the 1-based
line of the offending record's header.
"""

from __future__ import annotations

import gzip
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from lingo_core.data.errors import DataError, decode_utf8

FASTA_SUFFIXES = (".fa", ".fasta", ".fna")


def _fasta_names(stem: str) -> list[str]:
    return [stem + s + gz for s in FASTA_SUFFIXES for gz in ("", ".gz")]


def is_fasta(path: Path) -> bool:
    return path.name.removesuffix(".gz").endswith(FASTA_SUFFIXES)


def class_name(path: Path) -> str:
    """File stem without FASTA and gzip suffixes ("promoter.fa.gz" -> "promoter")."""
    return path.name.removesuffix(".gz").rsplit(".", 1)[0]


def split_file(folder: Path, split: str) -> Path | None:
    """The headers-convention file for a split, or None."""
    hits = [folder / n for n in _fasta_names(split) if (folder / n).is_file()]
    if len(hits) > 1:
        raise DataError(f"{folder}: several files for split {split!r}: {[h.name for h in hits]}; keep one")
    return hits[0] if hits else None


def class_files(folder: Path, split: str) -> list[Path]:
    """The per-class-convention files of a split folder (may be empty)."""
    d = folder / split
    return sorted(p for p in d.iterdir() if p.is_file() and is_fasta(p)) if d.is_dir() else []


def detect_layout(folder: Path) -> str | None:
    """Layout of a folder, judged by its train split: "headers", "per_class" or None."""
    if split_file(folder, "train") is not None:
        return "headers"
    if class_files(folder, "train"):
        return "per_class"
    return None


def train_classes(folder: Path) -> tuple[str, ...]:
    """Class names of a per-class task, in label order."""
    names = [class_name(p) for p in class_files(folder, "train")]
    if all(n.lstrip("-").isdigit() for n in names):
        return tuple(sorted(names, key=int))  # "2" before "10"
    return tuple(sorted(names))


@dataclass
class FastaRecords:
    """Parsed records of one or more FASTA files, with where each came from (for error messages)."""

    sequences: list[str] = field(default_factory=list)
    labels: list[str] = field(default_factory=list)
    """Raw label text, validated by the loader."""
    files: list[Path] = field(default_factory=list)
    lines: list[int] = field(default_factory=list)
    """1-based header line of each record."""
    ids: list[str] = field(default_factory=list)
    """First word of each header (without '>'); what predictions are keyed by."""


def _open_text(path: Path) -> str:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror}); expected a readable FASTA file") from exc
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (EOFError, OSError, zlib.error) as exc:
            raise DataError(
                f"{path}: unreadable or truncated gzip ({exc}); expected a complete .gz file"
            ) from exc
    return decode_utf8(path, raw, "a FASTA text file")


def header_label(header: str) -> str | None:
    """Label text of a header (without '>'): ``label=<v>`` field, else last ``|`` field of the id."""
    fields = header.split()
    for f in fields:
        if f.startswith("label="):
            return f[len("label=") :]
    if fields and "|" in fields[0]:
        return fields[0].rsplit("|", 1)[1]
    return None


def read_fasta(path: Path, out: FastaRecords, fixed_label: str | None = None) -> FastaRecords:
    """Append the records of one file; ``fixed_label`` sets every label (per-class files)."""
    chunks: list[str] | None = None
    for lineno, line in enumerate(_open_text(path).splitlines(), start=1):
        line = line.strip()
        if not line:
            continue
        if line.startswith(">"):
            if chunks is not None:
                out.sequences.append("".join(chunks))
            chunks = []
            label = fixed_label if fixed_label is not None else header_label(line[1:])
            if label is None:
                raise DataError(
                    f"{path}:{lineno}: header {line[:60]!r} has no label; expected '>id label=K' or '>id|K'"
                )
            out.labels.append(label)
            out.ids.append(line[1:].split(maxsplit=1)[0] if line[1:].strip() else "")
            out.files.append(path)
            out.lines.append(lineno)
        elif chunks is None:
            raise DataError(
                f"{path}:{lineno}: sequence text before the first header; expected a '>' line first"
            )
        else:
            chunks.append(line)
    if chunks is not None:
        out.sequences.append("".join(chunks))
    return out


def read_split(folder: Path, split: str, classes: tuple[str, ...] | None = None) -> FastaRecords:
    """Records of one split in either convention. ``classes`` maps per-class stems to label ids
    (defaults to the train classes); a missing split raises DataError naming the expected path."""
    layout = detect_layout(folder)
    if layout == "headers":
        path = split_file(folder, split)
        if path is None:
            raise DataError(
                f"{folder / (split + '.fa')}: split file not found; expected one of {_fasta_names(split)}"
            )
        return read_fasta(path, FastaRecords())
    if layout == "per_class":
        files = class_files(folder, split)
        if not files:
            raise DataError(
                f"{folder / split}: split folder missing or without FASTA files; expected {split}/<class>.fa"
            )
        classes = classes if classes is not None else train_classes(folder)
        out = FastaRecords()
        for p in files:
            name = class_name(p)
            if name not in classes:
                raise DataError(f"{p}: class {name!r} is not a train class; expected one of {list(classes)}")
            read_fasta(p, out, fixed_label=str(classes.index(name)))
        return out
    raise DataError(
        f"{folder}: no FASTA task here; expected train.fa (labels in headers) or train/<class>.fa"
    )
