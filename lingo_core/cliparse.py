"""The one error format of every `lingo` command: a single line on stderr, exit status 2.

argparse prints the whole usage block before its error line; with a dozen flags that is several lines
in which the actual problem is easy to miss, and scripts that read stderr get a different shape from
each command. `ArgumentParser` here prints only "<prog>: error: <message> (see <prog> --help)".
"""

from __future__ import annotations

import argparse
import sys
from typing import NoReturn

EXIT_USER_ERROR = 2
"""Exit status of every user error (bad argument, file, spec or data), as argparse uses."""


def one_line(message: object) -> str:
    """`message` as one line: a multi-line library message would break the one-line-on-stderr rule."""
    return "; ".join(part.strip() for part in str(message).strip().splitlines() if part.strip())


def first_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): a short cause to quote."""
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0]


def fail(prog: str, message: object) -> int:
    """Print the error line for `prog` and return the exit status to return from main()."""
    print(f"{prog}: error: {one_line(message)}", file=sys.stderr)
    return EXIT_USER_ERROR


class ArgumentParser(argparse.ArgumentParser):
    """argparse with the one-line error format (help output is unchanged)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {one_line(message)} (see {self.prog} --help)\n")
