"""Ctrl-C and SIGTERM, handled the same way by every command: one line, exit code 130, no partial output.

``__main__.main`` installs :class:`Interrupts` before anything heavy is imported, so a signal at any moment (during
the imports, loading, compiling, the step loop or writing) raises :class:`KeyboardInterrupt` in the main thread at
the next Python instruction (a running MindSpore kernel or compilation finishes first). The temporary files of
every output are removed as that exception unwinds (files.atomic_write / atomic_set), and the CLI then ends the
process with :func:`exit_interrupted`.

Two measured facts shape this:

* once MindSpore's runtime has run an operation it installs its own SIGINT handler, which turns Ctrl-C into a
  SIGTERM to the process: SIGINT and SIGTERM therefore get the same handling and the same exit code, 130;
* a signal that lands while MindSpore compiles a graph makes it print a long trace of the interrupted compilation
  on the native stderr: after the first signal the entry point's process sends native stderr to /dev/null and keeps
  Python's ``sys.stderr`` on the real one, so the one line (or the batch summary) is all that is seen;
* a process that has loaded MindSpore can abort in Python's own shutdown when it is interrupted mid-run (MindSpore's
  threads and atexit hooks), so the interrupted exit flushes stdout/stderr and leaves with ``os._exit``
  (:func:`leave`, called by the entry point only: in-process callers such as tests see ``SystemExit(130)``).
"""
from __future__ import annotations

import os
import signal
import sys
from typing import List, Optional

EXIT_INTERRUPTED = 130
#: The signal that stopped this process (None while none has come): set by the handler before it raises.
received: Optional[int] = None
#: Outputs already complete when an interrupt came (the exit line names them).
written: List[str] = []
#: True once a command has printed its own account of an interrupt (the batch summary): no second line.
reported = False
#: Set by the process entry point: on the first signal, what native code writes to stderr (MindSpore reports an
#: interrupted compilation with a long trace) goes to /dev/null; Python's ``sys.stderr`` keeps the real stderr.
silence_native_stderr = False


def _silence_native_stderr() -> None:
    global silence_native_stderr
    if not silence_native_stderr:
        return
    silence_native_stderr = False
    try:
        sys.stderr.flush()
        real = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        sys.stderr = os.fdopen(real, "w", buffering=1, encoding=getattr(sys.stderr, "encoding", None) or "utf-8",
                               errors="backslashreplace")
    except (OSError, ValueError):
        pass


class Interrupts:
    """Ctrl-C (SIGINT) and SIGTERM raise :class:`KeyboardInterrupt`, except while :meth:`defer` is on: then the
    signal is remembered and raised by :meth:`resume`. The batch runner defers from the last decoder step until the
    job's outputs and manifest lines are written, so an interrupt never leaves outputs without their manifest
    lines."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.deferring = False
        self.pending: Optional[int] = None
        self._previous: dict = {}

    def __enter__(self) -> "Interrupts":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:   # not the main thread: leave the signals alone
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        global received
        received = signum
        _silence_native_stderr()
        if self.deferring:
            self.pending = signum
            return
        raise KeyboardInterrupt(signal.Signals(signum).name)

    def defer(self) -> None:
        self.deferring = True

    def resume(self) -> None:
        self.deferring = False
        if self.pending is not None:
            signum, self.pending = self.pending, None
            raise KeyboardInterrupt(signal.Signals(signum).name)


def reset() -> None:
    """Forget what an earlier command in this process wrote or reported (each command's exit line is its own)."""
    global reported
    written.clear()
    reported = False


def note_written(paths) -> None:
    """Record outputs that are complete on disk (for the exit line, if an interrupt comes after them)."""
    written.extend(str(p) for p in paths)


#: How many written files the exit line names before it only counts the rest.
NAMED_FILES = 3


def written_text(paths: Optional[List[str]] = None) -> str:
    """``'nothing was written'`` or ``'wrote a.png, b.png, c.png and 7 more'`` (default: what was noted)."""
    paths = written if paths is None else list(paths)
    if not paths:
        return "nothing was written"
    more = f" and {len(paths) - NAMED_FILES} more" if len(paths) > NAMED_FILES else ""
    return f"wrote {', '.join(paths[:NAMED_FILES])}{more}"


def exit_interrupted(message: Optional[str] = None) -> None:
    """Print one line (``message``, or what was written) and raise ``SystemExit(130)``; the process entry point
    (:func:`leave`) turns that into an immediate exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)    # a second Ctrl-C while leaving changes nothing
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if message is None:
        message = f"interrupted; {written_text()}"
    if message:
        sys.stderr.write(message + "\n")
    raise SystemExit(EXIT_INTERRUPTED)


def leave(code: int) -> None:
    """End the process now with ``code`` (stdout and stderr flushed, Python's shutdown skipped)."""
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)
