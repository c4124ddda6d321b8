"""The prior in a child process: compiled (fast), and all its memory is returned when the child exits.

MindSpore never frees a compiled network's parameters, so an engine that must free the prior before the decoder
loads would otherwise run it eagerly (about 2.3x slower per step at real size). A spawned child loads the prior,
compiles it, makes every requested embedding and exits; the parent receives the arrays through a pipe.

The child ignores SIGINT: Ctrl-C reaches the whole process group, and the parent, which handles it, kills the child
before it exits.
"""
from __future__ import annotations

import multiprocessing
import signal
import traceback
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from .cache import compile_cache
from .errors import UserError

Embeddings = Tuple[np.ndarray, np.ndarray]


def _child(conn, root: str, dtype: str, mode: str, device: Optional[str], device_id: Optional[int],
           requests: list, compile_cache_allowed: bool) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        from .cache import compile_cache
        from .core import Kandinsky, PriorRequest

        compile_cache.allowed = compile_cache_allowed

        engine = Kandinsky(prior_model=root, dtype=dtype, mode=mode, device=device, device_id=device_id)
        for n, values in enumerate(requests):
            def progress(stage: str, i: int, total: int, n=n) -> None:
                conn.send(("progress", n, i, total))
            emb, neg = engine.run_prior(PriorRequest(values), progress, keep=True)
            conn.send(("result", n, emb, neg))
        conn.send(("done", engine.counters["prior_loads"]))
    except UserError as e:
        conn.send(("user_error", str(e)))
    except BaseException:   # a bug in the child: hand its traceback to the parent
        conn.send(("crash", traceback.format_exc()))
    finally:
        conn.close()


def run_prior_in_child(root: Path, dtype: str, mode: str, device: Optional[str], device_id: Optional[int],
                       requests: Sequence, progress: Optional[Callable[[int, int, int], None]] = None
                       ) -> List[Embeddings]:
    """The embeddings of ``requests`` (PriorRequest objects, seeds set), made by a spawned child process.
    ``progress(request_index, step, total)`` is called as the child reports its steps."""
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe(duplex=False)
    process = context.Process(target=_child, name="kandinsky-prior", daemon=True,
                              args=(child, str(root), dtype, mode, device, device_id,
                                    [r.values() for r in requests], compile_cache.allowed))
    process.start()
    child.close()
    results: List[Optional[Embeddings]] = [None] * len(requests)
    try:
        while True:
            try:
                message = parent.recv()
            except EOFError:
                process.join()
                raise RuntimeError(f"the prior process ended without its results (exit code {process.exitcode})")
            kind = message[0]
            if kind == "progress" and progress is not None:
                progress(*message[1:])
            elif kind == "result":
                results[message[1]] = (message[2], message[3])
            elif kind == "user_error":
                raise UserError(message[1])
            elif kind == "crash":
                raise RuntimeError(f"the prior process failed:\n{message[1]}")
            elif kind == "done":
                break
        process.join()
        return results   # type: ignore[return-value]
    finally:
        if process.is_alive():
            process.kill()
            process.join()
        parent.close()
