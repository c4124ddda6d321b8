"""``kandinsky serve``: the models loaded once, behind an HTTP API (FastAPI on uvicorn) and a web page.

* One worker thread owns the engine and runs one job at a time; accepted jobs wait in a bounded queue (full: HTTP 503).
* Every job is validated before it is queued, with the same functions and the same one-line messages as the command
  line (:func:`options.check_flags`, the request classes, ``engine.prepare``); bad input is ``{"error": LINE}`` with
  400 (malformed request), 413 (too large) or 422 (a value the CLI refuses).
* The server never reads or writes where a client says: uploads and outputs live in ``OUT_DIR/<job id>/``; job keys
  that name server-side paths are refused.
* Only :class:`EngineAdapter` knows the engine's API (requests, prepare, run, write), so that a change of the engine
  touches that class alone.
* Ctrl-C / SIGTERM: uvicorn stops accepting, the running job stops at its next step (outputs are written atomically,
  so none is half-written), queued jobs are cancelled, and the process exits with 130 and one line.
"""

import asyncio
import difflib
import ipaddress
import json
import os
import queue
import secrets
import shutil
import socket
import sys
import threading
import time
import traceback
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from . import options
from .batchfile import MASK_SUFFIXES
from .errors import UserError
from .files import IMAGE_SUFFIXES

API = "/api/v1"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 7860
DEFAULT_QUEUE = 8
#: Largest request body (the image, the mask and the job); over it: 413. An 8192x8192 RGBA PNG of noise is ~268 MB.
MAX_BODY_BYTES = int(os.environ.get("KANDINSKY_SERVE_MAX_BODY_BYTES", 300 * 1024 ** 2))
#: Finished jobs remembered (their files stay on disk).
KEPT_JOBS = 1000
#: Job keys that name files on the server: a client gives files as uploads, and the server picks where outputs go.
PATH_KEYS = {
    "image": "give the image as the 'image' file of the form, not as a path",
    "mask": "give the mask as the 'mask' file of the form, not as a path",
    "out": "the server writes outputs into its own folder (download them from /jobs/ID/images/N)",
    "image_embeds": "embedding files are not accepted by the server (it runs the prior itself)",
    "negative_image_embeds": "embedding files are not accepted by the server (it runs the prior itself)",
}
INPAINT_KEYS = tuple(k for k in options.JOB_KEYS if k not in PATH_KEYS)
PRIOR_KEYS = options.PRIOR_KEYS
WEB_DIR = Path(__file__).parent / "web"


class ApiError(Exception):
    """A request the server refuses: HTTP ``status`` and the one-line message."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, " ".join(str(message).split())


class Cancelled(Exception):
    """Raised by a job's progress callback when the job was cancelled (or the server stops)."""


# ------------------------------------------------------------------------------------------ the option schema

def _plain(value: Any) -> Any:
    if value is options.REQUIRED:
        return None
    if hasattr(value, "as_dict"):
        return value.as_dict()
    if isinstance(value, tuple):
        return list(value)
    return str(value) if isinstance(value, Path) else value


def option_schema() -> dict:
    """``GET /options``: every option of options.py with its type, range, choices, default and help."""
    rows = []
    for o in options.OPTIONS:
        rng = getattr(o.check, "range", None)
        choices = getattr(o.check, "choices", None)
        if o.type is bool:
            kind = "boolean"
        elif o.repeatable:
            kind = "list"
        elif choices:
            kind = "choice"
        elif o.type is Path:
            kind = "path"
        else:
            kind = {int: "integer", float: "number"}.get(o.type, "string")
        rows.append({
            "key": o.key, "flag": o.flag, "type": kind, "default": _plain(o.default), "required": o.required,
            "nullable": o.default is None, "min": rng[0] if rng else None, "max": rng[1] if rng else None,
            "multiple": rng[2] if rng and rng[2] and rng[2] > 1 else None, "choices": list(choices or []) or None,
            "metavar": o.metavar, "help": o.help, "default_text": o.default_text(), "scopes": sorted(o.scopes),
            "inpaint": o.key in INPAINT_KEYS, "prior": o.key in PRIOR_KEYS,
        })
    return {"options": rows, "inpaint_keys": list(INPAINT_KEYS), "prior_keys": list(PRIOR_KEYS)}


def check_job(job: Any, keys: Tuple[str, ...]) -> Dict[str, Any]:
    """A job object's values, checked as the command line checks its flags (the same messages); ``null`` is the
    default. Unknown keys and keys naming server-side paths are refused (400)."""
    if not isinstance(job, dict):
        raise ApiError(400, f"job: must be a JSON object of job keys (as in a batch file), got "
                            f"{options.describe(job)}")
    for key in job:
        if key in PATH_KEYS:
            raise ApiError(400, f"job: key {key!r} is not accepted: {PATH_KEYS[key]}")
        if key not in keys:
            close = difflib.get_close_matches(str(key), keys, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ApiError(400, f"job: unknown key {key!r}{hint}; known keys: {', '.join(keys)}")
    try:
        return options.check_flags({k: v for k, v in job.items() if v is not None})
    except UserError as e:
        raise ApiError(422, str(e)) from None


# ------------------------------------------------------------------------------------------ the engine adapter

class EngineAdapter:
    """The server's only view of the engine (core.py): build requests the way batch files do, ``prepare`` them and
    ``run`` them. Both pipelines stay loaded between jobs (the prior runs compiled and is kept, and so is the
    decoder's text encoder); the per-text and per-prompt caches are emptied after each job, so memory stays flat."""

    def __init__(self, engine_values: Dict[str, Any]):
        from .core import Kandinsky

        self.engine = Kandinsky(**engine_values)

    def warm(self) -> None:
        """Pick the device, find the model folders and load the decoder (the prior loads with the first job)."""
        engine = self.engine
        engine.select_device()
        engine.root("prior")
        engine.root("decoder")
        engine.check_embedding_widths()
        engine.decoder.keep_text_encoder = True

    def describe(self) -> Dict[str, Any]:
        e = self.engine
        return {"prior_model": e.prior_model, "decoder_model": e.decoder_model, "dtype": e.precision.name,
                "dtype_requested": e.dtype_requested, "mode": e.mode, "device": e.device_target}

    def counters(self) -> Dict[str, int]:
        return self.engine.counter_snapshot()

    def inpaint_request(self, values: Dict[str, Any], image: Path, mask: Optional[Path], out: Path):
        from .core import InpaintRequest

        texts_only(values.get("mix", ()))
        if "prompt" not in values and not values.get("mix"):
            raise UserError("missing option '--prompt' (what to paint), or --mix")   # as `kandinsky inpaint`
        return InpaintRequest({**values, "image": image, "mask": mask, "out": out})

    def prepare(self, request):
        """Read and check every input (the CLI's checks and messages); returns (prepared job, its seed)."""
        prepared = self.engine.prepare(request)
        return prepared, prepared.seed

    def with_seed(self, request, seed: int):
        return request.replace(seed=seed)

    def run_inpaint(self, request, progress: Callable[[str, int, int], None]) -> Dict[str, Any]:
        engine = self.engine
        prepared, _ = self.prepare(request)
        try:
            if request.uses_prior:   # the prior kept loaded (engine.run alone would free it after each job)
                t0 = time.perf_counter()
                engine.run_prior(request.prior_request(prepared.seed, prepared.mix_images), progress, keep=True)
                prepared.timings["prior_s"] = time.perf_counter() - t0
            result = engine.run(prepared, progress)
        finally:
            engine._embedding_cache.clear()
            if engine._decoder is not None:
                engine._decoder.clear_text_cache()
        return {"outputs": list(result.outputs), "grid": result.grid, "seed": result.seed,
                "timings": dict(result.timings)}

    def prior_request(self, values: Dict[str, Any]):
        from .requests import prior_request

        texts_only(values.get("mix", ()))
        return prior_request(values)     # as `kandinsky prior`: a random seed where the job gives none

    def run_prior(self, request, progress, folder: Path) -> Dict[str, Any]:
        from . import TOOL_NAME, __version__
        from .core import write_prior_outputs

        engine = self.engine
        t0 = time.perf_counter()
        emb, neg = engine.run_prior(request, progress, keep=True)
        engine._embedding_cache.clear()
        parameters = {"tool": TOOL_NAME, "version": __version__, "command": "prior", **request.parameters(),
                      "noise": "numpy.default_rng", "prior_model": engine.prior_model, "dtype": engine.precision.name,
                      "dtype_requested": engine.dtype_requested, "mode": engine.mode}
        paths = write_prior_outputs(folder, "prior", emb, neg, parameters)
        return {"files": paths, "seed": request.seed, "shape": list(emb.shape), "parameters": parameters,
                "timings": {"prior_s": time.perf_counter() - t0}}


def texts_only(mix) -> None:
    """The server reads no file a client names: a --mix of an inpaint or prior job holds texts only (400)."""
    for what, _ in mix or ():
        if Path(what).suffix.lower() in options.IMAGE_SUFFIXES:
            raise ApiError(400, f"--mix: {what!r} names an image file; the server takes only texts in --mix")


# ------------------------------------------------------------------------------------------ jobs

FINAL = ("done", "failed", "cancelled")


class Job:
    """One job: its state (read by GET /jobs/ID) and its events (streamed by GET /jobs/ID/events)."""

    def __init__(self, job_id: str, kind: str, folder: Path):
        self.id, self.kind, self.folder = job_id, kind, folder
        self.status = "queued"
        self.stage: Optional[str] = None
        self.step = self.total = 0
        self.seed: Optional[int] = None
        self.error: Optional[str] = None
        self.timings: Dict[str, float] = {}
        self.outputs: List[Path] = []
        self.grid: Optional[Path] = None
        self.files: Dict[str, str] = {}
        self.counters: Optional[Dict[str, int]] = None
        self.warnings: List[str] = []
        self.created, self.started, self.finished = time.time(), None, None
        self.cancel_requested = False
        self.request: Any = None
        self.events: List[Tuple[str, dict]] = []
        self.lock = threading.Lock()

    def emit(self, event: str, data: dict) -> None:
        with self.lock:
            self.events.append((event, data))

    def progress(self, stage: str, step: int, total: int) -> None:
        self.stage, self.step, self.total = stage, step, total
        self.emit("progress", {"stage": stage, "step": step, "total": total})

    def as_dict(self) -> Dict[str, Any]:
        base = f"{API}/jobs/{self.id}"
        return {
            "id": self.id, "kind": self.kind, "status": self.status, "stage": self.stage, "step": self.step,
            "total": self.total, "seed": self.seed, "error": self.error, "warnings": self.warnings,
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
            "images": [f"{base}/images/{n}" for n in range(1, len(self.outputs) + 1)],
            "grid": f"{base}/grid" if self.grid else None,
            "embeddings": {k: f"{base}/embeddings/{k}" for k in self.files if k != "parameters"} or None,
            "counters": self.counters, "cancel_requested": self.cancel_requested,
            "created": self.created, "started": self.started, "finished": self.finished,
        }


class Worker:
    """The engine's thread: takes jobs from a bounded queue and runs them one at a time."""

    def __init__(self, adapter: EngineAdapter, out_dir: Path, queue_size: int, log: Callable[[str], None]):
        self.adapter, self.out_dir, self.log = adapter, out_dir, log
        self.queue: "queue.Queue[Job]" = queue.Queue(maxsize=queue_size)
        self.queue_size = queue_size
        self.jobs: "OrderedDict[str, Job]" = OrderedDict()
        self.jobs_lock = threading.Lock()
        self.current: Optional[Job] = None
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="kandinsky-engine", daemon=True)
        self.tally = {"done": 0, "failed": 0, "cancelled": 0}

    # -- the request side
    def new_job(self, kind: str) -> Job:
        job_id = secrets.token_hex(6)
        folder = self.out_dir / job_id
        folder.mkdir(parents=True)
        return Job(job_id, kind, folder)

    def submit(self, job: Job) -> None:
        if self.stopping.is_set():
            raise ApiError(503, "the server is shutting down")
        with self.jobs_lock:   # the only producer; the worker only takes, so a checked queue has room
            if self.queue.full():
                raise ApiError(503, f"the server is busy: {self.queue_size} job(s) are already waiting (the limit "
                                    f"of kandinsky serve --queue); try again when one has finished")
            job.emit("queued", {"position": self.queue.qsize() + 1})
            self.queue.put_nowait(job)
            self.jobs[job.id] = job
            finished = [k for k, j in self.jobs.items() if j.status in FINAL]
            for k in finished[:max(0, len(finished) - KEPT_JOBS)]:
                del self.jobs[k]

    def get(self, job_id: str) -> Job:
        job = self.jobs.get(job_id)
        if job is None:
            raise ApiError(404, f"no job {job_id!r} on this server")
        return job

    def position(self, job: Job) -> Optional[int]:
        """1 = next to run; None when not waiting."""
        waiting = list(self.queue.queue)
        return waiting.index(job) + 1 if job in waiting else None

    def cancel(self, job: Job) -> None:
        if job.status in FINAL:
            raise ApiError(409, f"job {job.id} is already {job.status}")
        job.cancel_requested = True
        if job.status == "queued":
            self._finish(job, "cancelled")

    # -- the engine side
    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        """Cancel what waits, stop the running job at its next step, and wait for the thread."""
        self.stopping.set()
        for job in list(self.queue.queue):
            if job.status == "queued":
                job.cancel_requested = True
                self._finish(job, "cancelled")
        if self.current is not None:
            self.current.cancel_requested = True
            self.log("stopping: the running job stops at its next step (nothing half-written is kept)")
        self.thread.join()

    def _finish(self, job: Job, status: str, error: Optional[str] = None) -> None:
        with job.lock:
            if job.status in FINAL:
                return
            job.status, job.error, job.finished = status, error, time.time()
        self.tally[status] += 1
        job.emit(status, job.as_dict())

    def _loop(self) -> None:
        while not self.stopping.is_set():
            try:
                job = self.queue.get(timeout=0.2)
            except queue.Empty:
                continue
            if job.status != "queued":
                continue
            self.current = job
            try:
                self._run(job)
            finally:
                self.current = None

    def _run(self, job: Job) -> None:
        def progress(stage: str, step: int, total: int) -> None:
            if job.cancel_requested or self.stopping.is_set():
                raise Cancelled()
            job.progress(stage, step, total)

        job.status, job.started = "running", time.time()
        job.emit("running", {"id": job.id})
        try:
            if job.kind == "inpaint":
                result = self.adapter.run_inpaint(job.request, progress)
                job.outputs, job.grid = result["outputs"], result["grid"]
            else:
                result = self.adapter.run_prior(job.request, progress, job.folder)
                job.files = result["files"]
            job.timings = result["timings"]
            job.counters = self.adapter.counters()
            self._finish(job, "done")
        except Cancelled:
            self._finish(job, "cancelled")
        except UserError as e:
            self._finish(job, "failed", scrub(str(e), job.folder))
        except MemoryError:
            self._finish(job, "failed", "out of memory: the model does not fit at this size; try a smaller "
                                        "height/width or fewer images")
        except Exception as e:   # reported to the client in one line, the traceback on the server's stderr
            traceback.print_exc()
            self._finish(job, "failed", f"internal error: {type(e).__name__}: {' '.join(str(e).split())[:300]}")


def scrub(message: str, folder: Path, names: Optional[Dict[str, str]] = None) -> str:
    """A message with the server's paths replaced by what the client called the files (or by ``job``)."""
    for path, name in sorted((names or {}).items(), key=lambda kv: -len(kv[0])):
        message = message.replace(path, name)
    return message.replace(str(folder), "job")


def _display_name(filename: Optional[str], default: str) -> str:
    """The client's file name, for messages only (never used as a path)."""
    name = "".join(c for c in (filename or "") if c.isprintable())[:200].strip()
    return name or default


def _suffix(filename: Optional[str], allowed: Tuple[str, ...]) -> str:
    suffix = Path(filename or "").suffix.lower()
    return suffix if suffix in allowed else ""


# ------------------------------------------------------------------------------------------ the app

class _BodyLimit:
    """ASGI middleware: request bodies over ``limit`` bytes are answered 413 (declared or streamed)."""

    def __init__(self, app, limit: int):
        self.app, self.limit = app, limit

    def _error(self) -> ApiError:
        return ApiError(413, f"request body too large: the limit is {self.limit} bytes "
                             f"({self.limit / 1024 ** 2:.0f} MiB)")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            from starlette.responses import JSONResponse

            return await JSONResponse({"error": self._error().message}, status_code=413)(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            if message.get("type") == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    raise self._error()
            return message

        return await self.app(scope, limited, send)


def create_app(worker: Worker, token: Optional[str]):
    """The FastAPI app: the API under /api/v1 (behind the token, when one is set) and the page at /."""
    from fastapi import APIRouter, Depends, FastAPI
    from fastapi.responses import FileResponse
    from fastapi.staticfiles import StaticFiles

    app = FastAPI(title="kandinsky", description="Kandinsky 2.1 inpainting: the HTTP API of `kandinsky serve`.",
                  docs_url=f"{API}/docs", openapi_url=f"{API}/openapi.json", redoc_url=None)
    _error_handlers(app)
    api = APIRouter(prefix=API, dependencies=[Depends(_authorizer(token))])
    _info_routes(api, worker)
    _submit_routes(api, worker)
    _job_routes(api, worker)
    _file_routes(api, worker)
    app.include_router(api)

    @app.get("/", include_in_schema=False)
    def page():
        return FileResponse(WEB_DIR / "index.html", media_type="text/html")

    app.mount("/web", StaticFiles(directory=WEB_DIR), name="web")
    app.add_middleware(_BodyLimit, limit=MAX_BODY_BYTES)
    return app


def _error_handlers(app) -> None:
    """Every error as ``{"error": LINE}``: the CLI's lines for bad input, a short one for anything else."""
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from starlette.exceptions import HTTPException as StarletteHTTPException

    @app.exception_handler(ApiError)
    async def _api_error(request, exc: ApiError):
        return JSONResponse({"error": exc.message}, status_code=exc.status)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request, exc):
        return JSONResponse({"error": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request, exc):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return JSONResponse({"error": f"{where}: {first.get('msg', 'invalid request')}"}, status_code=422)

    @app.exception_handler(Exception)
    async def _internal(request, exc):
        traceback.print_exc()
        return JSONResponse({"error": f"internal error: {type(exc).__name__}"}, status_code=500)


def _authorizer(token: Optional[str]):
    """The dependency every API route has: ``Authorization: Bearer TOKEN`` when the server has a token."""
    from fastapi import Request

    async def authorized(request: Request) -> None:
        if token is None:
            return
        header = request.headers.get("authorization")
        if not header:
            raise ApiError(401, "this server needs a token: send the header 'Authorization: Bearer TOKEN'")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise ApiError(403, "wrong token (header 'Authorization: Bearer TOKEN')")

    return authorized


def _info_routes(api, worker: Worker) -> None:
    @api.get("/options")
    def get_options():
        """The option schema: every option's key, flag, type, range, choices, default and help."""
        return option_schema()

    @api.get("/info")
    def get_info():
        """What `kandinsky info --json` prints, and the server's engine, queue and counters."""
        from .system import machine_info

        return {**machine_info(None), "server": {**worker.adapter.describe(), "counters": worker.adapter.counters(),
                                                 "queue": {"waiting": worker.queue.qsize(),
                                                           "limit": worker.queue_size},
                                                 "out_dir": str(worker.out_dir)}}


def _accept_inpaint(worker: Worker, accept_lock: threading.Lock, job_text: Any, image: Any, mask: Any) -> Job:
    """Check an inpaint request as the command line would, store its uploads, queue it (or refuse it)."""
    from .files import ImageTooLarge

    if image is None or isinstance(image, str):
        raise ApiError(400, "missing the 'image' file (multipart field 'image')")
    if mask is not None and isinstance(mask, str):
        raise ApiError(400, "the 'mask' field must be a file")
    if job_text is None:
        raise ApiError(400, "missing the 'job' field: a JSON object with at least 'prompt'")
    try:
        data = json.loads(job_text)
    except (TypeError, ValueError) as e:
        raise ApiError(400, f"job: not valid JSON ({e})") from None
    values = check_job(data, INPAINT_KEYS)
    job = worker.new_job("inpaint")
    try:
        image_path = job.folder / ("image" + _suffix(image.filename, IMAGE_SUFFIXES))
        names = {str(image_path): _display_name(image.filename, "image")}
        with open(image_path, "wb") as f:
            shutil.copyfileobj(image.file, f)
        mask_path = None
        if mask is not None:
            mask_path = job.folder / ("mask" + _suffix(mask.filename, MASK_SUFFIXES))
            names[str(mask_path)] = _display_name(mask.filename, "mask")
            with open(mask_path, "wb") as f:
                shutil.copyfileobj(mask.file, f)
        try:
            with accept_lock, warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                request = worker.adapter.inpaint_request(values, image_path, mask_path, job.folder / "out.png")
                _, seed = worker.adapter.prepare(request)
        except ImageTooLarge as e:
            raise ApiError(413, scrub(str(e), job.folder, names)) from None
        except UserError as e:
            raise ApiError(422, scrub(str(e), job.folder, names)) from None
        job.warnings = [scrub(str(w.message), job.folder, names) for w in caught
                        if w.category.__module__.startswith("kandinsky_cli")]
        job.request, job.seed = worker.adapter.with_seed(request, seed), seed
        worker.submit(job)
    except BaseException:
        shutil.rmtree(job.folder, ignore_errors=True)
        raise
    return job


def _submit_routes(api, worker: Worker) -> None:
    """POST /inpaint and /prior: checked before anything is queued."""
    from fastapi import Request
    from fastapi.responses import JSONResponse
    from starlette.concurrency import run_in_threadpool

    accept_lock = threading.Lock()

    @api.post("/inpaint", status_code=202)
    async def post_inpaint(request: Request):
        """Multipart: 'image' (file), 'mask' (file, optional; white = repaint), 'job' (JSON: the batch-file keys)."""
        form = await request.form(max_files=2, max_fields=4)
        try:
            job = await run_in_threadpool(_accept_inpaint, worker, accept_lock, form.get("job"), form.get("image"), form.get("mask"))
        finally:
            await form.close()
        return JSONResponse({"id": job.id, "status": job.status, "seed": job.seed, "warnings": job.warnings,
                             "url": f"{API}/jobs/{job.id}"}, status_code=202)

    @api.post("/prior", status_code=202)
    async def post_prior(request: Request):
        """JSON body: the keys of `kandinsky prior` (prompt, negative_prompt, prior_steps, ..., mix of texts)."""
        try:
            data = json.loads(await request.body() or b"null")
        except ValueError as e:
            raise ApiError(400, f"job: not valid JSON ({e})") from None
        values = check_job(data, PRIOR_KEYS)
        try:
            prior_request = worker.adapter.prior_request(values)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        job = worker.new_job("prior")
        job.request, job.seed = prior_request, prior_request.seed
        try:
            worker.submit(job)
        except ApiError:
            shutil.rmtree(job.folder, ignore_errors=True)
            raise
        return JSONResponse({"id": job.id, "status": job.status, "seed": job.seed,
                             "url": f"{API}/jobs/{job.id}"}, status_code=202)


def _job_routes(api, worker: Worker) -> None:
    """A job's state, its cancellation and its progress events."""
    from fastapi.responses import StreamingResponse

    @api.get("/jobs/{job_id}")
    def get_job(job_id: str):
        job = worker.get(job_id)
        return {**job.as_dict(), "position": worker.position(job)}

    @api.delete("/jobs/{job_id}")
    def delete_job(job_id: str):
        """Cancel: a queued job at once, a running one at its next step."""
        job = worker.get(job_id)
        worker.cancel(job)
        return job.as_dict()

    @api.get("/jobs/{job_id}/events")
    async def job_events(job_id: str):
        """Server-sent events: queued, running, progress (stage, step, total), then done/failed/cancelled."""
        job = worker.get(job_id)

        async def stream():
            sent, quiet = 0, 0.0
            while True:
                with job.lock:
                    new = job.events[sent:]
                for event, data in new:
                    yield f"id: {sent}\nevent: {event}\ndata: {json.dumps(data)}\n\n"
                    sent += 1
                if new and new[-1][0] in FINAL:
                    return
                if worker.stopping.is_set() and job.status in FINAL:
                    return
                await asyncio.sleep(0.05)
                quiet = 0.0 if new else quiet + 0.05
                if quiet >= 15:
                    quiet = 0.0
                    yield ": keep-alive\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


def _done(job: Job) -> None:
    if job.status != "done":
        raise ApiError(409 if job.status in ("queued", "running") else 404,
                       f"job {job.id} is {job.status}" + (f": {job.error}" if job.error else "")
                       + ("; no files" if job.status in FINAL else "; no files yet"))


def _file_routes(api, worker: Worker) -> None:
    """A finished job's files: output PNGs, the grid, a prior job's embeddings."""
    from fastapi.responses import FileResponse

    @api.get("/jobs/{job_id}/images/{n}")
    def job_image(job_id: str, n: int):
        """The n-th output PNG (from 1), with the same metadata as the command line's."""
        job = worker.get(job_id)
        _done(job)
        if not 1 <= n <= len(job.outputs):
            raise ApiError(404, f"job {job.id} has {len(job.outputs)} image(s); asked for image {n}")
        return FileResponse(job.outputs[n - 1], media_type="image/png", filename=f"{job.id}-{n}.png")

    @api.get("/jobs/{job_id}/grid")
    def job_grid(job_id: str):
        job = worker.get(job_id)
        _done(job)
        if job.grid is None:
            raise ApiError(404, f"job {job.id} has no grid (job key save_grid)")
        return FileResponse(job.grid, media_type="image/png", filename=f"{job.id}-grid.png")

    @api.get("/jobs/{job_id}/embeddings/{name}")
    def job_embeddings(job_id: str, name: str):
        """A prior job's image_embeds or negative_image_embeds, as .npy."""
        job = worker.get(job_id)
        _done(job)
        if name not in ("image_embeds", "negative_image_embeds") or name not in job.files:
            raise ApiError(404, f"job {job.id} has no embeddings {name!r} (image_embeds, negative_image_embeds)")
        return FileResponse(job.files[name], media_type="application/octet-stream",
                            filename=f"{job.id}.{name}.npy")


# ------------------------------------------------------------------------------------------ the command

def is_loopback(host: str) -> bool:
    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: Optional[str], no_auth: bool) -> Optional[str]:
    """UserError when a non-loopback address is asked for without --token or --no-auth; a warning line for
    --no-auth there."""
    if token is not None and not token.strip():
        raise UserError("--token: must not be empty")
    if token is not None and no_auth:
        raise UserError("give --token or --no-auth, not both")
    if is_loopback(host):
        return None
    if token is None and not no_auth:
        raise UserError(f"--host {host} makes the server reachable from other machines: give --token TOKEN (or "
                        f"KANDINSKY_TOKEN) so that every API call needs 'Authorization: Bearer TOKEN', or --no-auth "
                        f"to serve without one")
    if no_auth:
        return (f"--no-auth on {host}: anyone who can reach this address can run jobs and read every job's images")
    return None


def default_out_dir() -> Path:
    from .cache import cache_dir

    return cache_dir() / "serve"


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host.strip("[]"), port))
    except OSError as e:
        sock.close()
        raise UserError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def serve(engine_values: Dict[str, Any], host: str, port: int, out_dir: Optional[Path], token: Optional[str],
          no_auth: bool, queue_size: int, say: Callable[[str], None]) -> None:
    """Run the server until Ctrl-C or SIGTERM (then exit 130 via interrupts.exit_interrupted)."""
    import uvicorn

    from . import interrupts
    from .files import check_output_dir

    warning = check_binding(host, token, no_auth)
    out = Path(os.path.abspath((out_dir or default_out_dir()).expanduser()))
    check_output_dir(out)
    out.mkdir(parents=True, exist_ok=True)
    sock = _listen(host, port)
    if warning:
        say(f"[yellow]warning:[/yellow] {warning}")
    t0 = time.perf_counter()
    adapter = EngineAdapter(engine_values)
    adapter.warm()
    d = adapter.describe()
    say(f"models: prior {d['prior_model']}, decoder {d['decoder_model']} ({d['dtype']}, {d['mode']} mode, "
        f"{d['device']}), loaded in {time.perf_counter() - t0:.1f} s")
    worker = Worker(adapter, out, queue_size, say)
    app = create_app(worker, token)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{sock.getsockname()[1]}"
    say(f"outputs: {out}/<job id>/")
    say(f"page: {url}/   API: {url}{API}/ (docs: {url}{API}/docs)"
        + ("; the API needs the token (the page asks for it, or open /#token=TOKEN)" if token else ""))
    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=2, lifespan="off",
                            access_log=False)
    server = uvicorn.Server(config)
    worker.start()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        pass
    finally:
        worker.stop()
    t = worker.tally
    line = (f"interrupted: the server stopped; {t['done']} job(s) done, {t['failed']} failed, {t['cancelled']} "
            f"cancelled; outputs in {out}")
    interrupts.exit_interrupted(line)
