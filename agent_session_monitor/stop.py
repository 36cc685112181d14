"""Stopping on SIGTERM (``systemctl stop``, ``docker stop``, ``kill``) within a bound.

The monitor turns SIGTERM into an exception raised where the main thread is
(:class:`~agent_session_monitor.errors.Terminated`): the pass in hand is cut, its last
checkpoint is what the state keeps, and the program exits 143. Three things can keep
that exception from ending the program, and each is handled here:

* It can be swallowed. Python runs a signal handler between any two bytecodes of the
  main thread, also inside a finaliser (a ``__del__``, a generator closed by the garbage
  collector, a weakref callback), where an exception is printed as "Exception ignored"
  and dropped. So the handler records the request first (:meth:`StopRequest.request`)
  and the follow loop checks it after every pass (:meth:`StopRequest.check`).
* It can come late. The kernel delivers a process-directed signal to any thread that
  does not block it; one that lands on a helper thread does not interrupt the main
  thread's blocking call (a ``read``, a ``join``, a ``waitpid``), so the handler runs
  only when that call returns. Threads the monitor starts therefore block SIGINT and
  SIGTERM (:func:`start_thread`): the main thread is the one that receives them.
* The stop itself can hang: a commit in flight on a frozen mount, a child that does not
  answer. A watchdog armed by the first SIGTERM ends the process after
  ``ASM_STOP_TIMEOUT`` seconds (default 30, under systemd's 90 s and SIGKILL) with
  ``os._exit(143)``: as a SIGKILL would, which every write is made to survive (files
  replaced atomically, the state saved after the data it describes), so the next run
  reads again what was not committed and counts nothing twice.
"""

from __future__ import annotations

import _thread
import os
import signal
import threading

STOP_TIMEOUT_ENV = "ASM_STOP_TIMEOUT"
DEFAULT_STOP_TIMEOUT = 30.0
_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def stop_timeout() -> float:
    """Seconds a stop may take before the watchdog ends the process."""
    try:
        value = float(os.environ.get(STOP_TIMEOUT_ENV, DEFAULT_STOP_TIMEOUT))
    except ValueError:
        return DEFAULT_STOP_TIMEOUT
    return value if 0 < value < 1e7 else DEFAULT_STOP_TIMEOUT


class StopRequest:
    """A SIGTERM received: remembered (the exception raised for it may be dropped) and
    bounded in time (the watchdog)."""

    def __init__(self, timeout: float | None = None) -> None:
        self.timeout = stop_timeout() if timeout is None else timeout
        self.requested = False
        self._armed = False
        self._done = _thread.allocate_lock()   # held until the stop has ended
        self._done.acquire()

    def request(self) -> None:
        """Called by the signal handler before it raises."""
        self.requested = True
        if not self._armed:
            self._armed = True
            # A raw thread: threading.Thread.start() takes locks the interrupted main
            # thread may hold, and a threading.Thread would be counted by the checks
            # that refuse to fork beside other threads (the stop forks nothing).
            try:
                with signals_held():   # it inherits the mask: signals go to the main thread
                    _thread.start_new_thread(_watchdog, (self.timeout, self._done))
            except RuntimeError:   # no thread to spare: the stop is unbounded, as before
                self._armed = False

    def finish(self) -> None:
        """The stop ended (main() returns): the watchdog must not end the process (a
        program that called main() goes on)."""
        if self._done.locked():
            self._done.release()

    def check(self) -> None:
        """Raise the stop again if its exception was swallowed (see the module doc)."""
        if self.requested:
            from .errors import Terminated

            raise Terminated


def _watchdog(timeout: float, done: "_thread.LockType") -> None:
    if done.acquire(timeout=timeout):
        return   # the stop ended in time
    message = (f"main.py: the stop took more than {timeout:g} s ({STOP_TIMEOUT_ENV}); "
               "exiting now: what was not committed is read again by the next run\n")
    try:
        os.write(2, message.encode())   # not sys.stderr: the main thread may hold its lock
    finally:
        os._exit(143)


def hold_signals() -> object:
    """Block SIGINT and SIGTERM in this thread; what :func:`release_signals` restores
    (None where there is no pthread_sigmask)."""
    mask = getattr(signal, "pthread_sigmask", None)
    if mask is None:
        return None
    return mask(signal.SIG_BLOCK, _SIGNALS)


def release_signals(held: object) -> None:
    """Restore the mask :func:`hold_signals` returned; a signal that came meanwhile is
    handled now."""
    if held is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


class signals_held:
    """``with signals_held():`` SIGINT and SIGTERM wait until the end of the block (in
    the main thread; elsewhere it does nothing)."""

    def __enter__(self) -> None:
        self._held = (hold_signals() if threading.current_thread() is threading.main_thread()
                      else None)

    def __exit__(self, *exc: object) -> None:
        release_signals(self._held)


def start_thread(thread: threading.Thread) -> None:
    """``thread.start()`` with SIGINT and SIGTERM blocked in the new thread (it inherits
    the mask): the kernel then delivers them to the main thread, whose blocking call
    they interrupt, and never to a helper whose handler would wait for it."""
    with signals_held():
        thread.start()
