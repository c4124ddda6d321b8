"""``kandinsky`` and ``python -m kandinsky_cli``: signal handling first, then the command line."""
import os
import sys

from . import interrupts


def main() -> None:
    os.environ.setdefault("GLOG_v", "3")   # MindSpore's native log: errors only (its warnings are noise here)
    interrupts.silence_native_stderr = True
    with interrupts.Interrupts():   # before Typer, Rich or MindSpore are imported: Ctrl-C is handled from the start
        try:
            from .cli import app

            app()
        except SystemExit as e:
            if e.code == interrupts.EXIT_INTERRUPTED:
                interrupts.leave(interrupts.EXIT_INTERRUPTED)
            raise
        except BaseException:
            if interrupts.received is None and not isinstance(sys.exc_info()[1], KeyboardInterrupt):
                raise
            try:   # interrupted outside the command (e.g. an import that the signal broke off)
                interrupts.exit_interrupted()
            except SystemExit:
                interrupts.leave(interrupts.EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
