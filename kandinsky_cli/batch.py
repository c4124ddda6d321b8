"""Running a batch of inpainting jobs: one engine per process, resumable, shardable, with a JSONL manifest.

The jobs come from a batch file (:func:`batchfile.load_batch`) or a folder (:func:`batchfile.folder_jobs`);
both give :class:`batchfile.Job` objects and run through :class:`BatchRunner`:

* a shard keeps the jobs with ``index % size == rank`` (:class:`Shard`; ``--shard K/N`` or ``--shard auto``
  from msrun's environment), so the split does not depend on which shards already ran;
* the jobs run sorted (stably) by working size, so that the compiled graphs of one size are reused;
* a job whose outputs all exist is skipped (unless ``overwrite``); the models are loaded once, only when
  some job is left to run;
* a job without a seed gets :func:`derive_seed` ``(base_seed, index)``, so a rerun reproduces it;
* each job is one :meth:`core.Kandinsky.inpaint` call (the same pixels as ``kandinsky inpaint`` with the
  same seed); the engine computes the prior once per distinct prompt/negative prompt/steps/guidance/number
  of images/seed;
* a job that fails (unreadable image, bad mask, any error) is recorded with its reason and the batch goes
  on;
* every written output gets one line in ``manifest.jsonl`` (:class:`Manifest`), a failed job one line
  with ``"status": "failed"``; skipped jobs add nothing.

Nothing here prints: the caller passes a :class:`Reporter`.
"""
from __future__ import annotations

import datetime
import fcntl
import os
import re
import signal
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional, Sequence

import numpy as np

from . import __version__
from .batchfile import Job, in_job, prepare_job
from .requests import Prepared
from .errors import UserError
from .files import to_json
from .options import Conflict
from .system import DEVICE_ID_VARIABLE
from .interrupts import Interrupts, note_written  # the runner defers interrupts while writing

MANIFEST_NAME = "manifest.jsonl"
DONE, SKIPPED, FAILED = "done", "skipped", "failed"

#: Environment variables read by ``--shard auto``, in order of preference (msrun sets all of them on a
#: worker: RANK_ID/RANK_SIZE for rank-table compatibility, MS_NODE_ID/MS_WORKER_NUM for its own cluster).
RANK_VARIABLES = ("RANK_ID", "MS_NODE_ID")
SIZE_VARIABLES = ("RANK_SIZE", "MS_WORKER_NUM")



# ------------------------------------------------------------------------------------------ seeds and order

def derive_seed(base_seed: int, index: int) -> int:
    """The seed of job ``index`` when the job gives none: deterministic, independent of sharding."""
    return int(np.random.SeedSequence([int(base_seed), int(index)]).generate_state(1)[0])


def job_seed(job: Job, base_seed: int) -> tuple:
    """``(seed, "job" | "derived")``."""
    return (job.seed, "job") if job.seed is not None else (derive_seed(base_seed, job.index), "derived")


def run_order(jobs: Sequence[Job]) -> List[Job]:
    """The jobs sorted stably by working size (height, width): jobs of one size run one after another."""
    return sorted(jobs, key=lambda job: (job.height or 0, job.width or 0, job.resolution))


def outputs_exist(job: Job) -> bool:
    return all(path.is_file() for path in job.outputs)


# ------------------------------------------------------------------------------------------ shards

@dataclass(frozen=True)
class Shard:
    """This process's part of the batch: the jobs with ``index % size == rank``."""

    rank: int = 0
    size: int = 1
    source: str = "all"          # "all", "--shard" or the environment variables it came from
    device_id: Optional[int] = None

    def owns(self, job: Job) -> bool:
        return job.index % self.size == self.rank

    def select(self, jobs: Iterable[Job]) -> List[Job]:
        return [job for job in jobs if self.owns(job)]

    @property
    def label(self) -> str:
        return f"{self.rank}/{self.size}"

    def as_dict(self) -> dict:
        return {"rank": self.rank, "size": self.size, "source": self.source, "device_id": self.device_id}


def is_msrun_scheduler(environ: Optional[Mapping[str, str]] = None) -> bool:
    """True in the scheduler process that msrun starts beside the workers (it runs the same command)."""
    return (os.environ if environ is None else environ).get("MS_ROLE") == "MS_SCHED"


def parse_shard(text: Optional[str], environ: Optional[Mapping[str, str]] = None) -> Shard:
    """``None`` (everything), ``'K/N'`` with 0 <= K < N, or ``'auto'`` (:func:`shard_from_env`)."""
    if text is None:
        return Shard()
    if text.strip().lower() == "auto":
        return shard_from_env(os.environ if environ is None else environ)
    m = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", text)
    if not m:
        raise UserError(f"bad --shard {text!r}: expected K/N with 0 <= K < N (e.g. 0/4), or auto")
    rank, size = int(m.group(1)), int(m.group(2))
    if size < 1 or rank >= size:
        raise UserError(f"bad --shard {text!r}: K must be from 0 to N-1 and N at least 1 (e.g. 0/{max(size, 2)})")
    return Shard(rank, size, "--shard")


def _env_int(environ: Mapping[str, str], names: Sequence[str]) -> Optional[tuple]:
    for name in names:
        value = environ.get(name, "").strip()
        if value:
            try:
                return int(value), name
            except ValueError:
                raise UserError(f"--shard auto: {name}={value!r} is not an integer") from None
    return None


def shard_from_env(environ: Mapping[str, str]) -> Shard:
    """The shard of an msrun worker: rank from RANK_ID (else MS_NODE_ID), size from RANK_SIZE (else
    MS_WORKER_NUM), device from DEVICE_ID."""
    rank, size = _env_int(environ, RANK_VARIABLES), _env_int(environ, SIZE_VARIABLES)
    if rank is None or size is None:
        if environ.get("MS_ROLE") == "MS_WORKER":
            raise UserError("--shard auto: msrun started this worker without a rank (no RANK_ID): on several "
                            "hosts give msrun --node_rank (0 on the master host, 1, 2, ... on the others)")
        missing = " or ".join(RANK_VARIABLES) if rank is None else " or ".join(SIZE_VARIABLES)
        raise UserError(f"--shard auto: {missing} is not set; start the command with msrun (see "
                        f"docs/batch.md) or give --shard K/N")
    (k, k_name), (n, n_name) = rank, size
    if n < 1 or not 0 <= k < n:
        raise UserError(f"--shard auto: {k_name}={k} and {n_name}={n} do not make a shard (need 0 <= rank < size)")
    device = _env_int(environ, (DEVICE_ID_VARIABLE,))
    return Shard(k, n, f"{k_name}/{n_name}", device[0] if device else None)


# ------------------------------------------------------------------------------------------ manifest

class Manifest:
    """``manifest.jsonl``: JSON lines appended safely by any number of processes.

    Each :meth:`append` is one ``os.write`` of whole lines on a file opened with ``O_APPEND``, under an
    exclusive ``flock``, followed by ``fsync``: lines from several workers never interleave and a crash
    never leaves half a line behind a complete one (if an earlier crash left an unterminated line, the next
    append starts on a new line).
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.lines = 0   # lines this object appended (for the exit line of an interrupted batch)

    def append(self, records: Sequence[dict]) -> None:
        if not records:
            return
        data = "".join(to_json(r) + "\n" for r in records).encode("utf-8")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                size = os.fstat(fd).st_size
                if size and os.pread(fd, 1, size - 1) != b"\n":
                    data = b"\n" + data
                written = os.write(fd, data)
                while written < len(data):   # a short write to a regular file: only when the disk is full
                    written += os.write(fd, data[written:])
                os.fsync(fd)
                self.lines += len(records)
            finally:
                os.close(fd)   # also releases the lock
        except OSError as e:
            raise UserError(f"cannot write the manifest {self.path}: {e.strerror or e}") from None


def read_manifest(path: Path) -> List[dict]:
    """The records of a manifest (lines that are not complete JSON, e.g. after a power cut, are skipped)."""
    import json

    records = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        return records
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


# ------------------------------------------------------------------------------------------ output locks

#: Why a job is skipped: its outputs exist; or another process holds its lock (the reason then names the holder).
OUTPUTS_EXIST = "outputs exist"
BUSY = "being computed by another process"


class OutputLock:
    """A job's lock, so that processes sharing a batch (without ``--shard``) do not compute a job twice: an exclusive
    ``flock`` on the hidden file ``.<output>.lock`` beside the job's first output, holding the owner's pid and host.

    The kernel releases the lock when its owner exits or dies (a lock file left by a killed process is stale and is
    simply taken over). The owner removes the file while still holding the lock; a process that locked a file in the
    meantime notices that the name now leads elsewhere (another inode, or nothing) and tries again. The file is
    never an output: resuming looks at the outputs only.
    """

    def __init__(self, output: Path):
        output = Path(output)
        self.path = output.with_name(f".{output.name}.lock")
        self.fd: Optional[int] = None
        self._created: List[Path] = []

    def acquire(self) -> Optional[str]:
        """Take the lock: None when taken, else who holds it (``'pid 123 on host'``)."""
        self._created = [p for p in self.path.parents if not p.exists()][::-1]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 256, 0).decode("utf-8", "replace").strip()
                os.close(fd)
                return holder or "another process"
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode(), 0)
                self.fd = fd
                return None
            os.close(fd)   # its owner removed it as we opened it: take the name anew

    def held_elsewhere(self) -> bool:
        """Whether another process holds the lock now (nothing is created)."""
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(fd)

    def release(self) -> None:
        if self.fd is None:
            return
        try:
            os.unlink(self.path)   # while holding the lock: see the class docstring
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None
        for folder in reversed(self._created):   # folders made for the lock alone (the job wrote nothing)
            try:
                folder.rmdir()
            except OSError:
                break


# ------------------------------------------------------------------------------------------ signals

# ------------------------------------------------------------------------------------------ running

@dataclass
class JobOutcome:
    job: Job
    status: str                          # done, skipped or failed
    seed: Optional[int] = None
    seed_source: Optional[str] = None    # "job" (given) or "derived" (from the base seed)
    outputs: List[Path] = field(default_factory=list)
    reason: Optional[str] = None
    seconds: float = 0.0
    timings: Dict[str, float] = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {"index": self.job.index, "image": str(self.job.image), "status": self.status, "seed": self.seed,
                "seed_source": self.seed_source, "outputs": [str(p) for p in self.outputs], "reason": self.reason,
                "seconds": round(self.seconds, 3)}


class Reporter:
    """What the runner tells its caller; every method may be left as is (silent)."""

    def start(self, jobs: Sequence[Job]) -> None:
        """The jobs of this run, in run order."""

    def job_start(self, position: int, job: Job) -> None:
        """Job ``position`` (1-based, in run order) begins."""

    def step(self, stage: str, step: int, total: int) -> None:
        """Progress inside a job: stage "prior" or "decoder"."""

    def job_end(self, position: int, outcome: JobOutcome) -> None:
        """The job is done, skipped or failed."""




def _short_reason(job: Job, error: BaseException) -> str:
    """The error without the ``'jobs.yaml: jobs[3]'`` prefix (the summary shows the job already)."""
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, Conflict) and Path(job.source).is_file():   # a batch file's job: its keys, not flags
        text = error.worded(str)
    if not isinstance(error, UserError):
        text = f"{type(error).__name__}: {text}"
    for prefix in (f"{job.where}.", f"{job.where}: "):
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")


class BatchRunner:
    """Runs jobs on one engine; ``outcomes`` holds every finished job, also after an interrupt."""

    def __init__(self, engine, manifest: Manifest, shard: Shard = Shard(), base_seed: int = 0,
                 overwrite: bool = False, reporter: Optional[Reporter] = None,
                 interrupts: Optional[Interrupts] = None):
        self.engine, self.manifest, self.shard = engine, manifest, shard
        self.base_seed, self.overwrite = base_seed, overwrite
        self.reporter = reporter or Reporter()
        self.interrupts = interrupts or Interrupts()
        self.outcomes: List[JobOutcome] = []
        self.prepared: Dict[int, object] = {}     # job index -> Prepared, or the error preparing it raised
        self._prior_checked = False

    def will_skip(self, job: Job) -> bool:
        return not self.overwrite and job.problem is None and outputs_exist(job)

    def ensure_models(self, job) -> None:
        """Choose the device and load the models this job needs, on first need only (a rerun that skips
        everything loads nothing). A model that cannot be loaded is an error of the whole batch, not of
        every job: its UserError ends the run (exit code 2)."""
        self.engine.select_device()
        if job.uses_prior and not self._prior_checked:
            self.engine.check_embedding_widths()
            self._prior_checked = True
        self.engine.decoder

    def run(self, jobs: Sequence[Job]) -> List[JobOutcome]:
        """Run ``jobs`` (already selected for this shard) in :func:`run_order`."""
        ordered = run_order(jobs)
        for job in ordered:
            if job.problem is None and not self.will_skip(job) and not OutputLock(job.out).held_elsewhere():
                self.prepared[job.index] = self._prepare(job)
        self.prepare_embeddings(ordered)
        self.reporter.start(ordered)
        for position, job in enumerate(ordered, 1):
            self.reporter.job_start(position, job)
            outcome = self.run_job(job)
            self.outcomes.append(outcome)
            self.reporter.job_end(position, outcome)
        return self.outcomes

    def _prepare(self, job: Job):
        """The job's inputs, opened once for the whole run (an error is kept: the job fails with it when it runs)."""
        try:
            with warnings.catch_warnings():   # shown again (once) when the job runs
                warnings.simplefilter("ignore")
                return prepare_job(job, job_seed(job, self.base_seed)[0])
        except Exception as e:   # KeyboardInterrupt is not caught
            return e

    def prepare_embeddings(self, jobs: Sequence[Job]) -> None:
        """Make the embeddings of every pending job that needs the prior (once per distinct request; the engine frees
        the prior afterwards, so the prior and the decoder are never in memory together); then encode every pending
        job's texts with one load of the decoder's text encoder, and free that too."""
        pending = [self.prepared[job.index] for job in jobs if isinstance(self.prepared.get(job.index), Prepared)]
        if not pending:
            return
        self.engine.select_device()
        prior_requests = [p.request.prior_request(p.seed, p.mix_images) for p in pending if p.request.uses_prior]
        try:
            self.engine.make_embeddings(prior_requests)
        except UserError:
            raise   # the prior model cannot be loaded: an error of the whole batch
        except Exception:
            pass    # the job at fault fails with its own reason when it runs

        self.ensure_models(pending[0].request)
        self.engine.encode_texts([p.request for p in pending])

    def run_job(self, job: Job) -> JobOutcome:
        """Run one job under its :class:`OutputLock`: skipped when its outputs exist (unless ``overwrite``) or when
        another process is computing it."""
        seed, seed_source = job_seed(job, self.base_seed)
        if self.will_skip(job):
            return JobOutcome(job, SKIPPED, seed, seed_source, list(job.outputs), OUTPUTS_EXIST)
        lock = OutputLock(job.out)
        try:
            self.interrupts.defer()   # a signal while the lock file is being made is raised once it is ours
            try:
                holder = lock.acquire()
            except OSError:   # no lock where nothing can be written: the job fails writing, with its own reason
                holder = None
            finally:
                self.interrupts.resume()
            if holder is not None:
                return JobOutcome(job, SKIPPED, seed, seed_source, [], f"{BUSY} ({holder})")
            if self.will_skip(job):   # finished by another process since the check above
                return JobOutcome(job, SKIPPED, seed, seed_source, list(job.outputs), OUTPUTS_EXIST)
            return self._run_locked(job, seed, seed_source)
        finally:
            lock.release()

    def _run_locked(self, job: Job, seed: int, seed_source: str) -> JobOutcome:

        def step(stage: str, i: int, n: int) -> None:
            self.reporter.step(stage, i, n)
            if stage == "decoder" and i >= n:
                self.interrupts.defer()   # from here the outputs are being made and written

        def failed(error: Exception) -> JobOutcome:
            outcome = JobOutcome(job, FAILED, seed, seed_source, [], _short_reason(job, error),
                                 time.perf_counter() - t0)
            self.manifest.append([self._record(outcome, started, job.request.parameters())])
            return outcome

        started, t0 = _now(), time.perf_counter()
        try:
            prepared = self.prepared.pop(job.index, None)
            if prepared is None:       # not prepared before the run started (e.g. it was held elsewhere then)
                prepared = self._prepare(job)
            if isinstance(prepared, BaseException):
                return failed(prepared)   # the job fails, the batch goes on
            t_load = time.perf_counter()
            self.ensure_models(job.request)
            load_s = time.perf_counter() - t_load
            try:
                result = self.engine.run(self.engine.preflight(prepared), step)
            except UserError as e:
                return failed(in_job(job, e))
            except Exception as e:
                return failed(e)
            timings = {**result.timings, **({"load_s": load_s} if load_s >= 0.01 else {}),
                       "job_s": time.perf_counter() - t0}
            outcome = JobOutcome(job, DONE, seed, seed_source, list(result.outputs), None, timings["job_s"], timings)
            self.manifest.append([self._record(outcome, started, result.parameters, path, k)
                                  for k, path in enumerate(result.outputs, 1)])
            note_written(result.outputs + ([result.grid] if result.grid else []))
            return outcome
        finally:
            self.interrupts.resume()

    def _record(self, outcome: JobOutcome, started: str, parameters: dict, output: Optional[Path] = None,
                output_index: Optional[int] = None) -> dict:
        job = outcome.job
        return {
            "status": outcome.status, "job": job.index, "source": str(Path(job.source).absolute()),
            "image": str(job.image),
            "mask": str(job.mask) if job.mask is not None else None, "mask_rects": list(job.mask_rects),
            "output": str(output) if output is not None else None, "output_index": output_index,
            "outputs": len(job.outputs), "seed": outcome.seed, "seed_source": outcome.seed_source,
            "base_seed": self.base_seed, "reason": outcome.reason, "parameters": parameters,
            "timings": {k: round(v, 4) for k, v in outcome.timings.items()} or {"job_s": round(outcome.seconds, 4)},
            "shard": {"rank": self.shard.rank, "size": self.shard.size}, "host": socket.gethostname(),
            "pid": os.getpid(), "started": started, "finished": _now(), "version": __version__,
        }


def counts(outcomes: Iterable[JobOutcome]) -> Dict[str, int]:
    result = {DONE: 0, SKIPPED: 0, FAILED: 0}
    for outcome in outcomes:
        result[outcome.status] += 1
    return result


# ------------------------------------------------------------------------------------------ whole batches

def load_jobs(jobs_file: Optional[Path], images: Optional[Path], masks: Optional[Path], folder_values: dict,
              out_dir: Optional[Path]):
    """(jobs, manifest folder, title) of a batch file, or of folder mode (``images`` with the job options)."""
    from . import options
    from .batchfile import folder_jobs, load_batch
    from .files import check_output_dir

    given = [key for key, value in folder_values.items() if value is not None] + (["masks"] if masks else [])
    if jobs_file is not None and images is not None:
        raise UserError("give a batch file JOBS.yaml or --images DIR (folder mode), not both")
    if jobs_file is None and images is None:
        raise UserError("give a batch file (kandinsky batch JOBS.yaml) or a folder of images (--images DIR ...)")
    if out_dir is not None:
        check_output_dir(out_dir)
    if jobs_file is not None:
        if given:
            names = ", ".join(options.flag_of(key) if key in options.BY_KEY else "--" + key for key in given)
            raise UserError(f"{names}: job options are for folder mode (--images DIR); in a batch file give the "
                            f"job keys under 'defaults:' or per job")
        jobs = load_batch(jobs_file, out_dir=out_dir)
        return jobs, (out_dir if out_dir is not None else jobs_file.resolve().parent / "outputs"), str(jobs_file)
    if out_dir is None:
        raise UserError("folder mode (--images) needs --out-dir DIR for the results")
    return folder_jobs(images, folder_values, out_dir, masks=masks), out_dir, f"--images {images}"


@dataclass
class BatchSummary:
    """What a batch run did, for the summary table, ``--json`` and the exit line."""

    title: str
    manifest_path: Path
    shard: Shard
    base_seed: int
    outcomes: List[JobOutcome]
    total: int
    total_jobs: int
    counters: Dict[str, int]
    interrupted: bool
    elapsed_s: float
    manifest_lines: int

    @property
    def counts(self) -> Dict[str, int]:
        return counts(self.outcomes)

    @property
    def shard_part(self) -> str:
        return f" (shard {self.shard.label} of {self.total_jobs} jobs)" if self.shard.size > 1 else ""

    def as_dict(self) -> dict:
        return {"batch": self.title, "manifest": str(self.manifest_path), "shard": self.shard.as_dict(),
                "base_seed": self.base_seed, "jobs": [o.as_dict() for o in self.outcomes],
                "counts": {**self.counts, "total": self.total}, "counters": self.counters,
                "interrupted": self.interrupted, "elapsed_s": round(self.elapsed_s, 3)}


def run_batch(title: str, mine: List[Job], total_jobs: int, shard: Shard, manifest_path: Path, base_seed: int,
              overwrite: bool, engine, reporter: Reporter) -> BatchSummary:
    """Run this shard's jobs; an interrupt ends the run with what finished (``interrupted`` set)."""
    started = time.perf_counter()
    interrupted = False
    manifest = Manifest(manifest_path)
    with Interrupts() as signals:
        runner = BatchRunner(engine, manifest, shard, base_seed, overwrite, reporter, signals)
        try:
            runner.run(mine)
        except KeyboardInterrupt:
            interrupted = True
    outcomes = sorted(runner.outcomes, key=lambda o: o.job.index)
    return BatchSummary(title, manifest_path, shard, base_seed, outcomes, len(mine), total_jobs,
                        engine.counter_snapshot(), interrupted, time.perf_counter() - started, manifest.lines)


@dataclass
class BatchCheck:
    """``batch --check``: one row per job (job, input size, plan, (seed, source), skipped) and why the model checks
    were left out (None when they were made)."""

    rows: List[tuple]
    unchecked: Optional[str]


def check_batch(mine: List[Job], base_seed: int, overwrite: bool, engine_values: dict, folder: bool) -> BatchCheck:
    """Open every input of these jobs (as a run prepares them) and make the checks a run makes with the decoder
    folder when it is here (local, or cached); no model is loaded."""
    prepared = [prepare_job(job, job_seed(job, base_seed)[0]) for job in mine]
    unchecked = decoder_checks(mine, prepared, engine_values, folder)
    rows = [(job, p.input_size, p.plan, job_seed(job, base_seed), not overwrite and outputs_exist(job))
            for job, p in zip(mine, prepared)]
    return BatchCheck(rows, unchecked)


def decoder_checks(jobs: List[Job], prepared: List[Prepared], engine_values: dict, folder: bool) -> Optional[str]:
    """The checks a run makes with the decoder folder before computing (sampler steps, memory), for ``batch
    --check``: with a local folder, or a hub id already in the cache (nothing is downloaded, no network is built).
    Returns why they were left out (a hub id not cached yet), or None."""
    from .core import Kandinsky
    from .model_io import looks_like_hub_id, offline_requested

    model = engine_values["decoder_model"]
    from_cache = looks_like_hub_id(model) and not Path(model).expanduser().is_dir()
    engine = Kandinsky(**{**engine_values, "offline": True})
    try:
        engine.root("decoder")
    except UserError:
        if from_cache and not offline_requested(engine_values["offline"]):
            return f"the decoder {model} is not in the Hugging Face cache yet"
        raise   # a run would stop here too
    # float32/float16 need no device to be known (auto and bfloat16 ask the device, as a run does)
    dtype = engine.dtype_requested if engine.dtype_requested in ("float32", "float16") else engine.precision.name
    for job, p in zip(jobs, prepared):
        try:
            engine.check_decoder_run(job.request, p.plan, dtype)
        except UserError as e:
            raise (e if folder else in_job(job, e)) from None
    return None
