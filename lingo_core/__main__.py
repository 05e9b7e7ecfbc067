"""`python -m lingo_core train ...` (same as the `lingo train` console script)."""

from __future__ import annotations

import sys

from lingo_core.cliparse import fail

_USAGE = "usage: python -m lingo_core train [--help | flags | key=value ...]"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_USAGE)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "train":
        # training imports torch + transformers; `python -m lingo_core --help` needs neither
        from lingo_core.cli import train_main

        return train_main(rest)
    return fail("python -m lingo_core", f"unknown command {command!r}; expected train ({_USAGE})")


if __name__ == "__main__":
    sys.exit(main())
