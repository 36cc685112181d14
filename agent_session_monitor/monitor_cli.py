"""``main.py``: parse Higress access logs into the session store (spec: interfaces.md)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Iterator, TextIO

from .argtypes import (
    Parser, non_negative_float as _non_negative_float, non_negative_int as _non_negative,
    parse, positive_float as _positive_float, positive_int as _positive, prog_name,
)
from . import __version__
from .otel import options as otel_options
from .finops import monitor_hooks
from .config import (
    DEFAULT_LOG_PATH, ENV_DATA_DIR, ENV_PRICING, HIGRESS_LOG_PATH, allowed_log_dirs,
    check_log_path_allowed, data_dir,
)
from .errors import (EXIT_OK, EXIT_RUNTIME, MonitorError, Terminated, silence_stdout,
                     stop_status)
from .fmt import plural, safe_text
from .stop import StopRequest
from .ingest.forgery import parse_log_format
from .ingest.monitor import AlreadyRunning, Monitor, MonitorConfig
from .ingest.pass_report import summary

EXIT_ALREADY_RUNNING = 3


def build_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog=prog_name("main.py"),
        description="Read Higress access logs (ai-statistics ai_log) and keep one JSON file "
                    "per agent session with its rounds, tokens and cost.",
        epilog="One pass and exit by default (for cron); --follow keeps polling.")
    p.add_argument("--version", action="version", version=f"agent-session-monitor {__version__}")
    p.add_argument("--log-path", action="append", metavar="PATH",
                   help=f"access log to read, with its rotations PATH.1..N and .gz; repeatable, "
                        f"globs allowed (default {DEFAULT_LOG_PATH}, or {HIGRESS_LOG_PATH} "
                        "when only that exists)")
    p.add_argument("--output-dir", metavar="DIR",
                   help=f"session store (default ${ENV_DATA_DIR} or ./sessions)")
    p.add_argument("--session-key", metavar="ID", help="only record this session id")
    p.add_argument("--max-rotate", type=_non_negative, default=5, metavar="N",
                   help="how many rotated files PATH.1..N to read (default 5)")
    p.add_argument("--state-file", metavar="FILE",
                   help="read offsets and counters (default OUTPUT_DIR/.state.json)")
    p.add_argument("--refresh-interval", type=_positive_float, default=1.0, metavar="SECONDS",
                   help="seconds between polls with --follow (default 1)")
    p.add_argument("--follow", action="store_true",
                   help="keep polling until interrupted; a live table on a terminal")
    p.add_argument("--pricing", metavar="FILE",
                   help=f"price overrides, JSON model -> prices per 1M tokens (or ${ENV_PRICING})")
    p.add_argument("--no-content", action="store_true",
                   help="privacy mode: store tokens and costs only, no messages, questions, "
                        "answers, reasoning or tool arguments")
    p.add_argument("--allow-log-dir", action="append", metavar="DIR",
                   help="directory logs may be read from; repeatable (default /var/log and "
                        "the current directory, or $AGENT_SESSION_MONITOR_LOG_DIRS)")
    p.add_argument("--rotate-wait", type=_non_negative_float, default=30.0, metavar="SECONDS",
                   help="how long a rotated file must be quiet before its unterminated last "
                        "line is taken as final (default 30)")
    p.add_argument("--max-line-bytes", type=_positive, default=64 * 2**20, metavar="N",
                   help="longer lines are skipped and counted (default 64 MiB)")
    p.add_argument("--checkpoint-bytes", type=_positive, default=256 * 2**20, metavar="N",
                   help="during a long catch-up, commit sessions and offsets every N bytes "
                        "read (default 256 MiB): bounds memory and what a crash re-reads")
    p.add_argument("--reset-from", choices=("beginning", "end"),
                   help="when the state file is unreadable: re-read everything (safe, nothing "
                        "is counted twice) or start at the end of the logs")
    p.add_argument("--reprice", action="store_true",
                   help="recompute every stored round's cost with the current price table and "
                        "--pricing overrides, without re-reading the logs, then exit")
    p.add_argument("--rebuild-index", action="store_true",
                   help="rebuild the derived index from the session files, then exit")
    p.add_argument("--keep", type=_duration, metavar="DURATION",
                   help="retention: remove session files whose last round is older than "
                        "DURATION (90d, 12w, 36h); their totals stay in the index and "
                        "reports (checked after each pass, hourly with --follow)")
    p.add_argument("--log-format", action="append", type=_log_format, metavar="FORMAT",
                   default=[],
                   help="a custom access-log format whose ai_log comes after a request "
                        "header: its keys in order, comma-separated, or the format itself "
                        "as in the gateway's config (JSON); repeatable")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="errors only: no summary, warnings, notes or progress")
    monitor_hooks.add_arguments(p)
    otel_options.add_arguments(p)
    return p






def _duration(text: str):
    from .store.retention import parse_duration

    try:
        return parse_duration(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


PRUNE_EVERY = 3600.0   # seconds between prunes in follow mode


def _prune(monitor: Monitor, args: argparse.Namespace, out: TextIO) -> None:
    from .fmt import fmt_bytes, fmt_usd
    import math

    result = monitor.prune(args.keep)
    if result.sessions and not args.quiet:
        print(f"Pruned {plural(result.sessions, 'session')} ({plural(result.rounds, 'round')}, "
              f"{fmt_usd(math.fsum(result.cost))}, {fmt_bytes(result.bytes_freed)} freed) whose "
              f"last round is older than {_keep_text(args.keep)}; their totals stay in the "
              "index and reports.", file=out, flush=True)


def _keep_text(keep) -> str:
    seconds = int(keep.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def config_from_args(args: argparse.Namespace, err: TextIO) -> MonitorConfig:
    reads_logs = not (args.reprice or args.rebuild_index)   # maintenance reads no log
    paths = args.log_path
    if not paths:
        paths = [DEFAULT_LOG_PATH]
        if (reads_logs and not os.path.exists(DEFAULT_LOG_PATH)
                and os.path.exists(HIGRESS_LOG_PATH)):
            paths = [HIGRESS_LOG_PATH]
            if not args.quiet:
                print(f"note: {DEFAULT_LOG_PATH} does not exist; reading {HIGRESS_LOG_PATH}, "
                      "where Higress writes its access log", file=err)
    allowed = allowed_log_dirs(args.allow_log_dir)
    for path in paths if reads_logs else ():
        if path != "-":   # standard input: whatever the caller pipes in
            check_log_path_allowed(path, allowed)
            if os.path.isdir(path):
                # Read as a log that is not there yet, it passed for "Nothing new" for ever.
                raise MonitorError(f"--log-path {path} is a directory: give the access log "
                                   f"in it (for example {os.path.join(path, 'access.log')})")
            _refuse_directories_only(path)
    out = data_dir(args.output_dir)
    return MonitorConfig(
        log_paths=paths, output_dir=out,
        state_file=Path(args.state_file) if args.state_file else None,
        session_key=args.session_key, max_rotate=args.max_rotate,
        store_content=not args.no_content, pricing=args.pricing, follow=args.follow,
        refresh_interval=args.refresh_interval, rotate_wait=args.rotate_wait,
        max_line_bytes=args.max_line_bytes, reset_from=args.reset_from,
        checkpoint_bytes=args.checkpoint_bytes, allowed_log_dirs=allowed,
        log_formats=list(args.log_format))


def _log_format(text: str) -> tuple:
    try:
        return parse_log_format(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not a log format: {e}") from None


def main(argv: list[str] | None = None, out: TextIO | None = None,
         err: TextIO | None = None) -> int:
    # A stream closed at start (``main.py >&-``, ``2>&-`` in a cron line) is None in sys:
    # the run still stores everything, and says nothing where nothing can be read.
    out = out or sys.stdout or open(os.devnull, "w", encoding="utf-8")
    err = err or sys.stderr or open(os.devnull, "w", encoding="utf-8")
    try:
        with _terminate_as_interrupt():
            args = parse(build_parser(), argv, err, out)
            if isinstance(args, int):
                return args
            return _main(args, out, err)
    except KeyboardInterrupt as stop:   # 130 on Ctrl-C, 143 on SIGTERM
        # Wherever it came (start-up, a pass, the follow loop, the exit), every write
        # before it was atomic and the state describes what is on disk: the next run
        # goes on from there. A stop mid-pass first saved the state of its last
        # checkpoint (_follow).
        print("stopped; state saved.", file=err)
        return stop_status(stop)


def _main(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    try:
        config = config_from_args(args, err)
        # Usage errors before the store opens; a one-pass run without a budget or alert
        # flag has none to check and no watch (monitor_hooks.given).
        args.finops = (monitor_hooks.config_from_args(args)
                       if args.follow or monitor_hooks.given(args) else None)
        if args.reprice or args.rebuild_index:
            return _maintenance(config, args, out, err)
        return _run(config, args, out, err)
    except AlreadyRunning as e:
        # Under cron a second copy is normal: quiet, status 0. A service (--follow) that
        # cannot start must fail visibly.
        if args.follow or err.isatty():
            print(f"main.py: {e}", file=err)
        return EXIT_ALREADY_RUNNING if args.follow else EXIT_OK
    except MonitorError as e:
        print(f"main.py: error: {safe_text(e)}", file=err)
        return e.exit_code
    except BrokenPipeError:
        silence_stdout()
        return EXIT_OK
    except Exception as e:  # a bug: still one line, with a way to get the details
        if _stop is not None and _stop.requested and not os.environ.get(
                "AGENT_SESSION_MONITOR_DEBUG"):
            # The stop cut code that then failed in its own clean-up (CPython's
            # Thread.join interrupted between its lock's check and release raises
            # "release unlocked lock" in place of the stop): every write was atomic, so
            # this ends as the stop the user asked for.
            raise Terminated from e
        if os.environ.get("AGENT_SESSION_MONITOR_DEBUG"):
            raise
        print(f"main.py: internal error: {type(e).__name__}: {safe_text(e)} (set "
              "AGENT_SESSION_MONITOR_DEBUG=1 for the traceback, and please report it)", file=err)
        return EXIT_RUNTIME


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (systemd stop, kill) ends the monitor like Ctrl-C: state saved first,
    then exit 143 (Ctrl-C: 130), within ASM_STOP_TIMEOUT seconds even if the exception
    is swallowed or the stop hangs (stop.py). The caller's handler is back when main()
    returns: main() may be called by a program (a test runner, a wrapper) whose own
    handler must keep working."""
    global _stop
    stop = StopRequest()

    def handler(signum, frame):
        stop.request()   # first: the exception below may be dropped (stop.py)
        raise Terminated

    def unraisable(info) -> None:
        # The stop's exception dropped where Python cannot raise it (a finaliser, a
        # garbage-collector callback) is raised again by stop.check(); it is not a
        # bug to print with a traceback.
        if isinstance(info.exc_value, Terminated) and stop.requested:
            return
        previous_hook(info)
    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:   # not the main thread (tests calling main() from a thread)
        yield
        return
    _stop = stop
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        _stop = None
        stop.finish()
        sys.unraisablehook = previous_hook
        signal.signal(signal.SIGTERM, previous)


# The SIGTERM request of the main() running in this process, if any: the follow loop
# checks it after every pass.
_stop: StopRequest | None = None


def _run(config: MonitorConfig, args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    if not config.follow and not _any_log_exists(config.log_paths):
        shown = ", ".join(config.log_paths)
        raise MonitorError(f"no access log at {shown} yet: nothing to read (check --log-path; "
                           "with --follow the monitor waits for it)")
    # -q: no summary, no warnings, no notes; errors always (Monitor(quiet=...)).
    with Monitor(config, err=err, quiet=args.quiet) as monitor:
        for note in monitor.problems + (monitor.notes if not args.quiet else []):
            print(f"note: {note}", file=err)
        fin = monitor_hooks.attach_for_pass(monitor, args.finops, config.follow)
        exporter = None
        if otel_options.config_from_args(args) is not None:
            # Imported only when exporting: HTTP and OTLP encoding cost a cron pass
            # ~70 ms of start-up otherwise.
            from .otel import outbox

            exporter = outbox.attach(monitor, args)
        try:
            if not config.follow:
                stats = monitor.poll_once()
                if _stop is not None:
                    _stop.check()   # a SIGTERM whose exception a finaliser swallowed
                if exporter is not None:
                    exporter.close()        # sends for up to --otlp-flush-seconds
                if not args.quiet:
                    print(summary(stats), file=out)
                    if exporter is not None:
                        print(exporter.summary(), file=out)
                if args.keep:
                    _prune(monitor, args, out)
                # An unreadable or refused log was reported on stderr; the exit status
                # makes cron say so.
                failed = stats.tail_events.get("unreadable") or stats.tail_events.get("refused")
                return EXIT_RUNTIME if failed else EXIT_OK
            return _follow(monitor, config, args, out, err, fin)
        finally:
            # Inside the with: pending alerts and spans get a moment, the state is saved.
            if exporter is not None and not exporter.closed:
                exporter.close()
            fin.close()


def _follow(monitor: Monitor, config: MonitorConfig, args: argparse.Namespace,
            out: TextIO, err: TextIO, fin: "monitor_hooks.FinOps") -> int:
    from .reports.live import live_rows, render_live   # a follower's view only

    live = out.isatty() and not args.quiet
    waiting_said = False
    backoff = config.refresh_interval
    last_prune = -PRUNE_EVERY
    try:
        while True:
            if _stop is not None:
                _stop.check()   # a SIGTERM whose exception a finaliser swallowed
            if not _any_log_exists(config.log_paths):
                if not waiting_said and not args.quiet:
                    print(f"waiting for {', '.join(config.log_paths)} to appear...", file=err)
                    waiting_said = True
            else:
                waiting_said = False
            try:
                stats = monitor.poll_once()
                fin.tick()
                if args.keep and time.monotonic() - last_prune >= PRUNE_EVERY:
                    _prune(monitor, args, out)
                    last_prune = time.monotonic()
                backoff = config.refresh_interval
            except MonitorError as e:
                # Disk full, unreadable directory: say so, back off, try again.
                print(f"main.py: error: {safe_text(e)} (retrying in {backoff:.0f}s)", file=err)
                time.sleep(backoff)
                backoff = min(backoff * 2, 60.0)
                continue
            if live:
                totals, rows = live_rows(monitor.index.db)
                render_live(out, totals, rows, last_pass=summary(stats),
                            budget_line=fin.live_text())
            elif (stats.lines or stats.bad) and not args.quiet:
                print(summary(stats), file=out, flush=True)
            if monitor.stream is not None and monitor.stream.eof and config.log_paths == ["-"]:
                monitor.checkpoint(idle_save=True)   # with the idle polls' pass count
                return EXIT_OK     # the pipe closed and there is nothing else to follow
            time.sleep(config.refresh_interval)
    except KeyboardInterrupt:
        monitor.checkpoint(idle_save=True)   # saves the pass count of idle polls too
        if live:
            out.write("\n")
        raise   # main() says "stopped; state saved." and exits 130 or 143


def _refuse_directories_only(pattern: str) -> None:
    """A glob whose every match is a directory reads nothing, as a directory given as
    the log does: one line and exit 1, not "Nothing new" for ever."""
    import glob

    if not glob.has_magic(pattern):
        return
    matches = sorted(glob.glob(pattern))
    if matches and all(os.path.isdir(m) for m in matches):
        shown = ", ".join(matches[:3]) + (f" and {len(matches) - 3} more" if len(matches) > 3
                                          else "")
        raise MonitorError(f"--log-path {pattern} matches only directories ({shown}): give "
                           "the access log in them (for example "
                           f"{os.path.join(matches[0], 'access.log')})")


def _any_log_exists(patterns: list[str]) -> bool:
    import glob

    return any(p == "-" or (any(not os.path.isdir(m) for m in glob.glob(p))
                            if glob.has_magic(p) else os.path.exists(p))
               for p in patterns)


def _maintenance(config: MonitorConfig, args: argparse.Namespace, out: TextIO,
                 err: TextIO) -> int:
    from .ingest.maintenance import rebuild_index, reprice_store

    skipped: list[tuple[str, str]] = []
    with Monitor(config, err=err) as monitor:
        directory = config.output_dir
        if args.reprice:
            n_sessions, n_rounds, delta = reprice_store(monitor, skipped)
            _name_skipped(err, directory, skipped, "not repriced")
            print(f"Repriced {plural(n_rounds, 'round')} in {plural(n_sessions, 'session')} with "
                  f"{monitor.table.source}; total cost changed by {delta:+.6f} USD"
                  + (f"; {len(skipped):,} unreadable session files left as they are "
                     "(listed on stderr)." if skipped else "."), file=out)
        if args.rebuild_index:
            n, left_out = rebuild_index(monitor)
            _name_skipped(err, directory, left_out, "left out of the index")
            if left_out:
                print(f"Rebuilt the index from {n:,} of {n + len(left_out):,} session files; "
                      f"{len(left_out):,} unreadable (listed on stderr, kept as they are): "
                      "their sessions are missing from every total.", file=out)
            else:
                print(f"Rebuilt the index from {n:,} session files.", file=out)
            skipped += left_out
    return EXIT_RUNTIME if skipped else EXIT_OK


def _name_skipped(err: TextIO, directory: Path, skipped: list[tuple[str, str]],
                  what: str) -> None:
    for name, why in skipped:
        print(f"main.py: error: session file {safe_text(directory / name)} is corrupt or "
              f"unreadable ({safe_text(why)}); {what}, kept as it is", file=err)
