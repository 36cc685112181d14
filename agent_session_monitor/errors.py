"""The one exception type of the core, and the exit codes it maps to."""

import os
import sys

EXIT_OK = 0
EXIT_RUNTIME = 1
EXIT_USAGE = 2
# A stop exits as the shell reports a process a signal ended: 128 + its number.
EXIT_INTERRUPTED = 130    # SIGINT (Ctrl-C)
EXIT_TERMINATED = 143     # SIGTERM (systemctl stop, docker stop, kill)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program was, so it stops as on Ctrl-C (state saved)."""


def stop_status(stop: BaseException) -> int:
    return EXIT_TERMINATED if isinstance(stop, Terminated) else EXIT_INTERRUPTED


class MonitorError(Exception):
    """A user-facing failure: its message is one line that names the path and the fix.

    Entry points print it to stderr and exit with ``exit_code``; nothing else in the
    package prints tracebacks at users.
    """

    def __init__(self, message: str, exit_code: int = EXIT_RUNTIME) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def silence_stdout() -> None:
    """After a closed pipe (``cli.py list | head``): point stdout at /dev/null so the
    interpreter's final flush does not print a BrokenPipeError at exit."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def leave(status: int) -> int:
    """End the process with ``status`` once what it printed is out, without tearing the
    interpreter down: a catch-up leaves its caches (millions of small objects: decoded
    messages, history) that the interpreter would free one by one for nothing, ~1.5% of
    a small catch-up's instructions. Every file is written, synced and closed by now and
    every child reaped; the threads left are daemons, which an exit never waits for. A
    reader gone from stdout (``main.py | head``) is no error, as in the commands. Under
    a profiler or a tracer (``python3 -m cProfile main.py``, coverage) it returns
    ``status`` for the usual exit: they write their results after the script ends."""
    if sys.getprofile() is not None or sys.gettrace() is not None:
        return status
    for stream in (sys.stdout, sys.stderr):
        if stream is None:   # closed when the process started (``>&-``): nothing to flush
            continue
        try:
            stream.flush()
        except BrokenPipeError:
            pass
        except (OSError, ValueError) as e:   # a full disk under a redirection: say so
            if stream is sys.stdout:
                status = status or EXIT_RUNTIME
                try:
                    os.write(2, f"main.py: error: cannot write the output: {e}\n".encode())
                except OSError:
                    pass
    os._exit(status)
