"""Ctrl-C and SIGTERM at any moment of `kandinsky inpaint` and `kandinsky prior`: exit code 130, one line, no partial
output, never a traceback, a core dump or a Python fatal error.

Each command is stopped a few times early, run once to the end to learn how long it takes here, then again and
again with the signal sent at moments spread over that time: during the imports, the model loading, the graph
compilation, the step loops and the writing of the outputs.
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

FIXTURE = Path(__file__).parent / "fixtures" / "kandinsky21-tiny"
MODELS = ["--prior-model", str(FIXTURE / "prior"), "--decoder-model", str(FIXTURE / "inpaint")]
EARLY = (0.4, 0.8, 1.5)   # seconds: our imports and the start of loading (the interpreter's own start-up, before
#                                any of our code runs, is out of reach: a signal there gets Python's default)
SPREAD = (0.25, 0.5, 0.75, 0.95)      # fractions of a whole run


def kandinsky():
    script = Path(sys.executable).with_name("kandinsky")
    return [str(script)] if script.exists() else [sys.executable, "-m", "kandinsky_cli"]


def start(args, cwd):
    # a terminal's Ctrl-C reaches a process whose SIGINT is not ignored: do not inherit an ignored one
    return subprocess.Popen([*kandinsky(), *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def check_stopped(proc, out_dir: Path, complete: set, what: str):
    stdout, stderr = proc.communicate(timeout=300)
    files = {p.name for p in out_dir.iterdir()}
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and "Fatal Python error" not in stderr, (what, stderr[-2000:])
    if proc.returncode == 0:        # the run ended before the signal: complete outputs only
        assert files == complete, (what, files)
        return "finished"
    assert proc.returncode == 130, (what, proc.returncode, stderr[-2000:])
    assert len(lines) == 1 and lines[0].startswith("interrupted"), (what, stderr[-2000:])
    if lines[0] == "interrupted; nothing was written":
        assert files == set(), (what, files)
    else:
        assert files == complete, (what, files)
    return "interrupted"


def sweep(args, tmp_path, complete, signals):
    """The signals in turn, one run each, at each moment (both get the same handling; see docs/behaviour.md).

    The early moments come first (they also warm the disk cache), then one whole run fills the compile cache, so
    that the whole run timed next takes as long as the later ones (a run that compiles, slower than the rest, put
    the late signals after their end).
    """
    work = tmp_path / "work"
    work.mkdir()
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(work / "in.png")
    out = work / "out"
    out.mkdir()
    outcomes = []

    def clear_outputs():
        for p in out.iterdir():
            p.unlink()

    def run_and_signal(i, delay, whole=None):
        clear_outputs()
        sig = signals[i % len(signals)]
        proc = start(args, work)
        time.sleep(delay)
        proc.send_signal(sig)
        of = "" if whole is None else f" of {whole:.1f} s"
        outcomes.append(check_stopped(proc, out, complete, f"{sig.name} after {delay:.2f} s{of}"))

    for i, delay in enumerate(EARLY):
        run_and_signal(i, delay)
    clear_outputs()
    assert check_stopped(start(args, work), out, complete, "first whole run") == "finished"
    clear_outputs()
    t0 = time.perf_counter()
    assert check_stopped(start(args, work), out, complete, "whole run") == "finished"
    whole = time.perf_counter() - t0
    for i, fraction in enumerate(SPREAD, start=len(EARLY)):
        run_and_signal(i, fraction * whole, whole)
    assert outcomes.count("interrupted") >= len(EARLY) + 2, (whole, outcomes)


def test_inpaint_stops_cleanly_at_any_moment(tmp_path):
    args = ["inpaint", "in.png", "--mask-rect", "0:30,0:30", "--prompt", "a hat", *MODELS, "--height", "64",
            "--width", "64", "--steps", "6", "--prior-steps", "6", "--seed", "1", "--num-images", "2",
            "--save-grid", "--out", "out/o.png"]
    sweep(args, tmp_path, {"o-1.png", "o-2.png", "o-grid.png"}, (signal.SIGINT, signal.SIGTERM))


def test_prior_stops_cleanly_at_any_moment(tmp_path):
    args = ["prior", "a hat", "--prior-model", str(FIXTURE / "prior"), "--prior-steps", "8", "--seed", "1",
            "--out-dir", "out", "--name", "p"]
    sweep(args, tmp_path, {"p.image_embeds.npy", "p.negative_image_embeds.npy", "p.json"},
          (signal.SIGTERM, signal.SIGINT))
