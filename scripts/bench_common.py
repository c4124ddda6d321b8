"""What every row of scripts/bench.py is measured with: timing with RSS sampling, the row record, run settings,
and running one whole command in a child process (wall time, the child's peak RSS, its --json output)."""
from __future__ import annotations

import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

REPO = Path(__file__).resolve().parents[1]
GB = 1024 ** 3
SEED = 0


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    first = next((line for line in text if line.strip()), "")
    return f"{type(exc).__name__}: {first[:200]}"


# --------------------------------------------------------------------------------------------------------------
# memory
# --------------------------------------------------------------------------------------------------------------
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def current_rss() -> Optional[int]:
    """Resident set size of this process in bytes (None where /proc is missing)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * _PAGE
    except (OSError, IndexError, ValueError):
        return None


def _reset_hwm() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _read_hwm() -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


class RssSampler:
    """Max RSS seen by a background thread polling /proc/self/statm every ``interval`` seconds.

    The kernel's own high-water mark (VmHWM, reset on entry) is read on exit too: it also catches transients
    shorter than the polling interval or during calls that hold the GIL.
    """

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.start = self.peak = self.hwm = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self):
        rss = current_rss()
        if rss is not None:
            self.peak = rss if self.peak is None else max(self.peak, rss)
            self.samples += 1

    def _run(self):
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self):
        self._hwm_ok = _reset_hwm()
        self.start = current_rss()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self._sample()
        if self._hwm_ok:
            self.hwm = _read_hwm()
        return False


def free_memory() -> None:
    gc.collect()
    try:  # give freed heap pages back to the OS so the next row's RSS starts low
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# --------------------------------------------------------------------------------------------------------------
# results
# --------------------------------------------------------------------------------------------------------------
@dataclass
class Row:
    workload: str
    impl: str
    dtype: str
    times: List[float] = field(default_factory=list)
    first_call_s: Optional[float] = None
    peak_rss: Optional[int] = None
    start_rss: Optional[int] = None
    hwm: Optional[int] = None
    skipped: Optional[str] = None
    ratio: Optional[float] = None
    extra: dict = field(default_factory=dict)

    @property
    def median(self) -> Optional[float]:
        return statistics.median(self.times) if self.times else None

    def as_json(self) -> dict:
        gb = (lambda b: None if b is None else round(b / GB, 3))
        out = {"workload": self.workload, "impl": self.impl, "dtype": self.dtype,
               "median_s": self.median, "min_s": min(self.times) if self.times else None,
               "max_s": max(self.times) if self.times else None, "peak_rss_gb": gb(self.peak_rss),
               "repeats": len(self.times), "first_call_s": self.first_call_s, "rss_start_gb": gb(self.start_rss),
               "peak_rss_hwm_gb": gb(self.hwm)}
        if self.impl == "mindspore":
            out["ratio"] = self.ratio
        if self.skipped:
            out["skipped"] = self.skipped
        out.update(self.extra)
        return out


def measure(workload: str, impl: str, dtype: str, run: Callable[[], object], warmup: int, repeats: int,
            extra: dict) -> Row:
    """``warmup`` untimed calls, then ``repeats`` timed ones, with this process's RSS sampled throughout."""
    row = Row(workload, impl, dtype, extra=dict(extra))
    with RssSampler() as mem:
        for i in range(warmup):
            t0 = time.perf_counter()
            run()
            if i == 0:
                row.first_call_s = time.perf_counter() - t0
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            row.times.append(time.perf_counter() - t0)
    row.peak_rss, row.start_rss, row.hwm = mem.peak, mem.start, mem.hwm
    return row


# --------------------------------------------------------------------------------------------------------------
# run settings
# --------------------------------------------------------------------------------------------------------------
class Ctx:
    """Run-wide settings handed to every workload."""

    def __init__(self, args, torch_ok: bool):
        self.configs: Path = args.configs
        self.fixture: Path = args.fixture
        self.mode: str = args.mode
        self.torch: bool = torch_ok
        self.tmpdir = args.tmpdir
        self.threads: Optional[int] = args.threads
        self.pipeline_dir: Optional[Path] = args.pipeline_dir
        self.scheduler: Optional[str] = args.scheduler
        self.steps: Optional[int] = args.steps
        self.prior_steps: Optional[int] = args.prior_steps

    def config(self, name: str) -> dict:
        return json.loads((self.configs / name).read_text(encoding="utf-8"))


class Group:
    """Workloads run together, once per dtype; ``run`` emits one Row per workload and implementation."""

    isolated = True  # the default driver runs each (group, dtype) in a fresh process

    def __init__(self, key: str):
        self.key = key

    def run(self, ctx: Ctx, workloads: list, dtype: str, args, emit: Callable[[Row], None]) -> None:
        raise NotImplementedError


# --------------------------------------------------------------------------------------------------------------
# one whole command in a child process
# --------------------------------------------------------------------------------------------------------------
@dataclass
class CommandRun:
    seconds: float
    peak_rss: Optional[int]      # the child's own peak RSS (the kernel's count, read when it is reaped)
    output: Optional[dict]       # its stdout parsed as one JSON document
    error: Optional[str]         # why it failed: its last stderr line and exit code


# A small launcher between this (possibly large) process and the command: the kernel counts the memory of the
# process a command is exec'ed from in the command's peak RSS, so the command is forked from the launcher (~10 MB),
# which waits for it alone (wait4) and writes its peak RSS (kilobytes) to the file named first.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status) % 256)
"""


def run_command(argv: Sequence[str], stderr_path: Path, env: Optional[dict] = None) -> CommandRun:
    """Run ``argv`` from the repository root; its stderr goes to ``stderr_path``; ``env`` adds variables."""
    peak_file = Path(stderr_path).with_suffix(".maxrss")
    with open(stderr_path, "w+") as err:
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _LAUNCHER, str(peak_file), *argv], cwd=REPO,
                                stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, **(env or {})})
        stdout, _ = proc.communicate()
        seconds = time.perf_counter() - t0
        err.seek(0)
        last = next((line.strip() for line in reversed(err.read().splitlines()) if line.strip()), "")
    try:
        peak = int(peak_file.read_text()) * 1024  # kilobytes on Linux
    except (OSError, ValueError):
        peak = None
    if proc.returncode != 0:
        return CommandRun(seconds, peak, None, f"exit code {proc.returncode}: {last[:300]}")
    try:
        return CommandRun(seconds, peak, json.loads(stdout), None)
    except ValueError:
        return CommandRun(seconds, peak, None, f"no JSON on stdout: {stdout.strip()[:200]!r}")
