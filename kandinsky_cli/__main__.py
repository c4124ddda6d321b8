"""``kandinsky`` and ``python -m kandinsky_cli``: signal handling first, then the command line."""
import os
import sys

from . import interrupts
from .cache import compile_cache


def main() -> None:
    os.environ.setdefault("GLOG_v", "3")   # MindSpore's native log: errors only (its warnings are noise here)
    interrupts.silence_native_stderr = True
    compile_cache.allowed = True            # every graph of a command goes through layers.compiled
    with interrupts.Interrupts():   # before Typer, Rich or MindSpore are imported: Ctrl-C is handled from the start
        try:
            from .cli import app

            app()
        except SystemExit as e:
            # leave at once, the handler still installed: a signal in Python's own shutdown would otherwise kill
            # the process without a word (and MindSpore's atexit hooks can abort it)
            interrupts.leave(exit_code(e.code))
        except BaseException:
            if interrupts.received is None and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
                raise
            try:   # interrupted outside the command (e.g. an import that the signal broke off)
                interrupts.exit_interrupted()
            except SystemExit:
                interrupts.leave(interrupts.EXIT_INTERRUPTED)


def exit_code(code) -> int:
    """The process exit code of ``SystemExit(code)``, as Python computes it (a message is printed, code 1)."""
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    sys.stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":
    main()
