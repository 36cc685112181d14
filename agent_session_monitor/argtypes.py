"""argparse for every entry point: the value types (one message per kind of mistake) and
a parser whose usage errors are one line on the caller's stream, exit status 2."""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import re
import sys
from typing import TextIO

from .errors import EXIT_USAGE
from .fmt import safe_text

MAX_SHOWN = 200   # a 5,000-character bad value is not echoed whole


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError("must be a positive integer")
    return value


def non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not (value > 0 and math.isfinite(value)):   # also refuses NaN and infinity
        raise argparse.ArgumentTypeError("must be a positive number")
    return value


def non_negative_float(text: str) -> float:
    value = float(text)
    if not (value >= 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError("must be 0 or more")
    return value


def port(text: str) -> int:
    """A TCP port to listen on; 0 picks a free one."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text[:MAX_SHOWN]!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"{value} is not a port (0..65535; 0 picks a free one)")
    return value


class UsageError(Exception):
    """A usage mistake found by argparse, as one line (``prog: error: ...``)."""


class Parser(argparse.ArgumentParser):
    """Usage errors are raised, not printed as usage text plus a line and exited: every
    entry point writes them as one line to its own stream (:func:`parse`)."""

    def error(self, message: str):  # type: ignore[override]
        if len(message) > MAX_SHOWN:
            message = message[:MAX_SHOWN] + "..."
        raise UsageError(f"{self.prog}: error: {safe_text(message)} (see {self.prog} --help)")


def parse(parser: argparse.ArgumentParser, argv: list[str] | None, err: TextIO,
          out: TextIO | None = None) -> argparse.Namespace | int:
    """The parsed arguments, or the exit status to return: 2 after a usage error (one
    line on ``err``), 0 after --help or --version (written to ``out``)."""
    try:
        with contextlib.redirect_stdout(out or sys.stdout):
            return parser.parse_args(join_offsets(sys.argv[1:] if argv is None else list(argv)))
    except UsageError as e:
        err.write(f"{e}\n")
        return EXIT_USAGE
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 0


def prog_name(default: str) -> str:
    """The name the user typed: ``agent-session-web`` when installed, else the script's
    (``webserver.py``), which is what the docs show."""
    name = os.path.basename(sys.argv[0] or "")
    return name if name.startswith("agent-session") else default


def join_offsets(argv: list[str], options: tuple[str, ...] = ("--tz",)) -> list[str]:
    """``--tz -05:00`` as ``--tz=-05:00``: argparse takes a value starting with "-" for
    an option, and a negative offset is the natural way to write western zones."""
    joined: list[str] = []
    for arg in argv:
        if joined and joined[-1] in options and re.fullmatch(r"-\d{1,2}(:?\d{2})?", arg):
            joined[-1] = f"{joined[-1]}={arg}"
        else:
            joined.append(arg)
    return joined
