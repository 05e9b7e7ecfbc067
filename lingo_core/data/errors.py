"""The data package's error, and the one UTF-8 decoder whose error says where (a leaf: no project imports).

Every reader (loading.py for CSV splits, fasta.py, sequences.py, task.py for tasks.json) raises DataError
with the message shape "<file>[:<line>]: <problem>; expected <what>" (docs/reliability.md). It lives here,
below all of them, so no reader has to import another one just to raise it.
"""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. Message: "<file>:<line>: <problem>; expected <what>"."""


def decode_utf8(path: Path, data: bytes, expected: str) -> str:
    """`data` as text; DataError "<path>:<line>: not UTF-8 text (byte 0x..); expected <expected>" names the
    line of the first bad byte, which neither Python's nor pyarrow's own message would."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        bad = data[exc.start]
        raise DataError(f"{path}:{line}: not UTF-8 text (byte 0x{bad:02x}); expected {expected}") from None
