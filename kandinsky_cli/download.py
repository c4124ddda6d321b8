"""Model repos in the Hugging Face cache: which files a run loads, fetching them, checking them offline.

:func:`select_files` is the one place that decides which files of a diffusers pipeline repo the tool needs:
``model_index.json``; in each component folder its configs and tokenizer files (``*.json``, ``*.txt``,
``*.model``) and its safetensors weights (one file, or an index and its shards); for float16 a component's
``fp16`` variant where it has one, its plain weights elsewhere. Pickle formats (``.bin``, ``.ckpt``, ...) are
never fetched. ``kandinsky download`` and :func:`resolve_model_dir` (prior/inpaint/batch) both go
through :func:`locate`.

The transfer itself is huggingface_hub's (``HF_ENDPOINT``, ``HF_HOME`` / ``HF_HUB_CACHE``, tokens, locks,
cache layout, retries). What it resumes (huggingface_hub 2.4): a transfer that breaks inside one run is
continued with a ``Range`` request from its last complete 10 MiB chunk; across runs it resumes per file:
finished files stay in the cache and a rerun fetches only the others, while a half-fetched file starts
over (its ``.incomplete`` file has a per-process name and is never reused).
"""
from __future__ import annotations

import glob
import os
import re
import sys
import threading
import warnings
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Set, Tuple
from urllib.parse import urlsplit

from rich.filesize import decimal
from rich.progress import ProgressColumn
from rich.text import Text
from tqdm.std import tqdm

from .precision import DTYPES
from .errors import UserError
from .interrupts import note_written
from .model_io import DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS, looks_like_hub_id, offline_requested

MODEL_INDEX = "model_index.json"
VARIANT = "fp16"                                  # the file-name variant diffusers/transformers give float16 weights
WEIGHT_STEMS = (DIFFUSERS_WEIGHTS, TRANSFORMERS_WEIGHTS)
CONFIG_SUFFIXES = (".json", ".txt", ".model")     # configs, tokenizer vocabularies, sentencepiece models
LOGIN = "log in with `hf auth login` (or set HF_TOKEN)"


class DownloadWarning(UserWarning):
    """The hub could not deliver, but the cache holds a complete copy that is used instead."""


# ------------------------------------------------------------------------------------------ file selection

def select_files(repo_files: Sequence[str], dtype: str) -> List[str]:
    """The files of a pipeline repo that a run at ``dtype`` loads, as sorted repo paths."""
    check_dtype(dtype)
    folders: Dict[str, Set[str]] = {}
    for path in repo_files:
        folder, sep, name = path.partition("/")
        if sep and "/" not in name:
            folders.setdefault(folder, set()).add(name)
    chosen = [MODEL_INDEX] if MODEL_INDEX in repo_files else []
    for folder, names in sorted(folders.items()):
        picked = [name for name in names if name.endswith(CONFIG_SUFFIXES) and ".index." not in name]
        for stem in WEIGHT_STEMS:
            variant = _weights(names, stem, VARIANT) if dtype == "float16" else []
            picked += variant or _weights(names, stem, None)
        chosen += [f"{folder}/{name}" for name in picked]
    return sorted(chosen)


def check_dtype(dtype: str) -> None:
    if dtype not in DTYPES:
        raise UserError(f"bad dtype {dtype!r}: use one of {', '.join(DTYPES)}")


def _weights(names: Set[str], stem: str, variant: Optional[str]) -> List[str]:
    """One component's safetensors for ``stem``: ``stem[.variant].safetensors``, else
    ``stem[.variant].safetensors.index.json`` with its shards: the names model_io.weight_files loads, in its
    order. (diffusers names a variant's index ``stem.safetensors.index.fp16.json``; the loader does not read
    that one, so neither is it fetched.)"""
    tag = f".{variant}" if variant else ""
    if f"{stem}{tag}.safetensors" in names:
        return [f"{stem}{tag}.safetensors"]
    index = f"{stem}{tag}.safetensors.index.json"
    if index not in names:
        return []
    numbered = r"-\d+-of-\d+"
    suffix = (rf"(\.{variant}{numbered}|{numbered}\.{variant})" if variant else numbered) + r"\.safetensors"
    shard = re.compile(re.escape(stem) + suffix)
    return [index] + sorted(name for name in names if shard.fullmatch(name))


# ------------------------------------------------------------------------------------------ what is where

@dataclass
class Snapshot:
    """The files of one model that a run loads, all present in ``folder``."""

    model: str                      # hub id, or the local folder as given
    folder: Path
    files: Dict[str, int]           # repo path -> bytes
    revision: Optional[str] = None  # as asked ("main" when none was); None for a local folder
    commit: Optional[str] = None    # None for a local folder

    @property
    def total_bytes(self) -> int:
        return sum(self.files.values())

    def as_dict(self) -> dict:
        return {"revision": self.revision, "commit": self.commit, "folder": str(self.folder),
                "files": dict(self.files), "total_bytes": self.total_bytes}


def cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE)


def _snapshot_folder(repo_id: str, commit: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots" / commit


def _listing(folder: Path) -> List[str]:
    return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())


def _missing(folder: Path, files: Sequence[str]) -> List[str]:
    return [f for f in files if not (folder / f).is_file()]


def _pipeline_files(model: str, repo_files: Sequence[str], dtype: str) -> List[str]:
    files = select_files(repo_files, dtype)
    if MODEL_INDEX not in files:
        raise UserError(f"model {model} has no {MODEL_INDEX}: it is not a diffusers pipeline (expected e.g. "
                        f"kandinsky-community/kandinsky-2-1-prior)")
    return files


def _snapshot(model: str, folder: Path, files: Sequence[str], revision: Optional[str] = None,
              commit: Optional[str] = None) -> Snapshot:
    return Snapshot(model, folder, {f: (folder / f).stat().st_size for f in files}, revision, commit)


# ------------------------------------------------------------------------------------------ locating a model

def locate(model: str, revision: Optional[str] = None, dtype: str = "float32", offline: bool = False,
           console=None) -> Snapshot:
    """``model`` as a local pipeline folder, or as a hub id in the HF cache, fetched where files are missing
    (:func:`fetch`; progress on ``console``, a Rich console, when given)."""
    check_dtype(dtype)
    check_revision(revision)
    path = Path(model).expanduser()
    if path.is_dir():
        if not (path / MODEL_INDEX).is_file():
            raise UserError(f"model folder {model} has no {MODEL_INDEX} (expected a diffusers pipeline folder)")
        return _snapshot(model, path, select_files(_listing(path), dtype))
    if not looks_like_hub_id(model):
        raise UserError(f"model {model!r} is neither an existing folder nor a hub id like 'owner/name'")
    return fetch(model, revision, dtype, offline, console)


def fetch(repo_id: str, revision: Optional[str] = None, dtype: str = "float32", offline: bool = False,
          console=None) -> Snapshot:
    """The files of hub repo ``repo_id`` that a run at ``dtype`` loads, downloaded into the HF cache where
    missing. ``offline``: from the cache alone (:func:`cached`). When the hub cannot deliver (no network,
    server error, access denied) but the cache holds a complete copy, that copy is used, with a warning."""
    if offline:
        return cached(repo_id, revision, dtype)
    try:
        return _download(repo_id, revision, dtype, console)
    except _Interrupted:
        sys.stdout.flush()
        sys.stderr.write("interrupted: the files finished so far stay in the Hugging Face cache; run the same "
                         "command again to fetch the rest\n")
        sys.stderr.flush()
        os._exit(130)   # huggingface_hub's download threads cannot be stopped: do not wait for them
    except Exception as exc:
        problem = _hub_problem(exc, revision)
        if problem is None:
            raise
        try:
            snapshot = cached(repo_id, revision, dtype)
        except UserError:
            raise UserError(f"model {repo_id}: {problem[0]}; {problem[1]}") from None
        warnings.warn(DownloadWarning(f"model {repo_id}: {problem[0]}; using its complete copy in the cache"))
        return snapshot


def _download(repo_id: str, revision: Optional[str], dtype: str, console) -> Snapshot:
    from huggingface_hub import HfApi, snapshot_download

    api = HfApi()
    resolved = api.resolve_revision(repo_id, revision=revision)   # also records branch -> commit in the cache
    files = _pipeline_files(repo_id, _repo_files(api, repo_id, resolved.resolved), dtype)
    folder = _snapshot_folder(repo_id, resolved.resolved)
    missing = _missing(folder, files)
    if missing:
        patterns = [glob.escape(f) for f in files]   # exact names: allow_patterns are fnmatch patterns
        with progress_bars(console) as bars:
            _interruptible(lambda: snapshot_download(repo_id, revision=resolved, allow_patterns=patterns,
                                                     tqdm_class=bars))
        note_written([f"{len(missing)} file(s) of {repo_id} into the Hugging Face cache"])
    return _snapshot(repo_id, folder, files, str(resolved), resolved.resolved)   # str: the branch asked, or "main"


def _repo_files(api, repo_id: str, commit: str) -> List[str]:
    """The files of the repo at ``commit``: from the tree listing cached by an earlier download, else the hub."""
    files = _cached_tree(repo_id, commit)
    return files if files is not None else [s.rfilename for s in api.model_info(repo_id, revision=commit).siblings]


def _cached_files(repo_id: str, commit: str, folder: Path) -> List[str]:
    """The files of the repo at ``commit`` as the cache knows them: its tree listing (written by every
    download), else what the snapshot folder holds (a cache filled by other tools)."""
    files = _cached_tree(repo_id, commit)
    return files if files is not None else _listing(folder)


def _cached_tree(repo_id: str, commit: str) -> Optional[List[str]]:
    from huggingface_hub import get_cached_repo_tree
    from huggingface_hub.errors import CachedRepoTreeNotFoundError

    try:
        return [f.path for f in get_cached_repo_tree(repo_id, revision=commit)]
    except CachedRepoTreeNotFoundError:
        return None


#: A revision: a branch, tag or commit name, or a pull request's ``refs/pr/N``; never a path through the cache.
_REVISION_RE = re.compile(r"refs/pr/[0-9]+|[A-Za-z0-9][A-Za-z0-9._-]*")
_COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def check_revision(revision: Optional[str]) -> None:
    """UserError for a ``--revision`` that is not a plain name: path components (``a/b``, ``..``, absolute paths)
    would be resolved through the cache's own folders."""
    if revision is not None and (not _REVISION_RE.fullmatch(revision) or ".." in revision):
        raise UserError(f"bad --revision {revision!r}: give a branch, tag or commit name (letters, digits, '.', '_', "
                        f"'-'; a pull request: refs/pr/N), not a path")


class Damaged(UserError):
    """A cache entry that cannot be read as huggingface_hub writes it (a ref that is not a commit hash, a ref to a
    snapshot that is not there, an unreadable file or folder)."""


def _repo_folder(repo_id: str) -> Path:
    from huggingface_hub.file_download import repo_folder_name

    return cache_dir() / repo_folder_name(repo_id=repo_id, repo_type="model")


def _read_ref(repo: Path, ref: Path) -> str:
    """The commit hash a ref file of the cache holds; :class:`Damaged` when it does not hold one or points at a
    snapshot that is not there."""
    name = ref.relative_to(repo / "refs").as_posix()
    try:
        data = ref.read_bytes()
    except IsADirectoryError:
        raise Damaged(f"refs/{name} is a folder, not a ref file") from None
    except OSError as e:
        raise Damaged(f"refs/{name} cannot be read ({e.strerror or e})") from None
    commit = data.strip().decode("ascii", "replace")
    if not _COMMIT_RE.fullmatch(commit):
        raise Damaged(f"refs/{name} holds {len(data)} byte(s) that are not a commit hash")
    if not (repo / "snapshots" / commit).is_dir():
        raise Damaged(f"refs/{name} points at commit {commit[:12]}, whose snapshot folder is missing")
    return commit


def _cached_commit(repo_id: str, revision: Optional[str]) -> Optional[str]:
    """The commit of ``revision`` (default: main) that the cache records, None when it records none; a
    :class:`Damaged` naming the model, the entry and what to do when the entry cannot be read."""
    from huggingface_hub import constants

    rev = revision or constants.DEFAULT_REVISION
    repo = _repo_folder(repo_id)
    if _COMMIT_RE.fullmatch(rev):
        return rev
    ref = repo / "refs" / rev
    if not os.path.lexists(ref):
        return None
    try:
        return _read_ref(repo, ref)
    except Damaged as e:
        raise Damaged(f"model {repo_id}: the Hugging Face cache entry {repo} is damaged: {e}; delete that folder and "
                      f"fetch the model again: {download_hint(repo_id, revision)}") from None


def cached(repo_id: str, revision: Optional[str] = None, dtype: str = "float32") -> Snapshot:
    """From the HF cache alone, without network: the snapshot of ``repo_id`` at ``revision`` when it holds
    every file a run at ``dtype`` loads; else a UserError naming what is missing (or what is damaged)."""
    from huggingface_hub import constants

    check_revision(revision)
    fix = f"fetch it with network access: {download_hint(repo_id, revision, dtype)}"
    at = f" (revision {revision})" if revision else ""
    commit = _cached_commit(repo_id, revision)
    folder = _snapshot_folder(repo_id, commit) if commit else None
    if folder is None or not folder.is_dir():
        raise UserError(f"model {repo_id}{at} is not in the Hugging Face cache ({cache_dir()}); {fix}")
    try:
        listed = _cached_files(repo_id, commit, folder)
    except (OSError, ValueError) as e:
        raise Damaged(f"model {repo_id}: the Hugging Face cache entry {folder} is damaged: cannot list its files "
                      f"({e}); delete it and {fix}") from None
    files = _pipeline_files(repo_id, listed, dtype)
    missing = _missing(folder, files)
    if missing:
        more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
        raise UserError(f"model {repo_id}{at}: the cache ({folder}) lacks {len(missing)} file(s) that a "
                        f"--dtype {dtype} run loads: {', '.join(missing[:3])}{more}; {fix}")
    return _snapshot(repo_id, folder, files, revision or constants.DEFAULT_REVISION, commit)


def download_hint(repo_id: str, revision: Optional[str] = None, dtype: str = "float32") -> str:
    options = [f"--prior-model/--decoder-model {repo_id}"] + ([f"--revision {revision}"] if revision else []) \
        + ([f"--dtype {dtype}"] if dtype != "float32" else [])
    return f"`kandinsky download {' '.join(options)}`"


def cached_models() -> List[dict]:
    """Every model repo revision in the HF cache: refs, commit, folder, bytes on disk, and whether it holds
    everything a run loads, per dtype. A damaged entry (see :class:`Damaged`) is listed with ``damaged`` saying
    what is wrong, and everything else is still listed."""
    root = cache_dir()
    try:
        repos = sorted(p for p in root.iterdir() if p.name.startswith("models--"))
    except (FileNotFoundError, NotADirectoryError):
        return []
    except OSError as e:
        return [_damaged_entry(str(root), root, f"the cache folder cannot be read ({e.strerror or e})")]
    found = []
    for repo in repos:
        repo_id = repo.name[len("models--"):].replace("--", "/")
        try:
            found += _scan_repo(repo_id, repo)
        except Damaged as e:
            found.append(_damaged_entry(repo_id, repo, str(e)))
        except (OSError, ValueError) as e:
            found.append(_damaged_entry(repo_id, repo, f"cannot be read ({getattr(e, 'strerror', None) or e})"))
    return found


def _damaged_entry(repo_id: str, folder: Path, reason: str, refs: Sequence[str] = ()) -> dict:
    return {"repo_id": repo_id, "refs": list(refs), "commit": None, "folder": str(folder), "bytes": None,
            "complete": {dtype: False for dtype in DTYPES}, "damaged": reason}


def _scan_repo(repo_id: str, repo: Path) -> List[dict]:
    """The revisions of one cached repo folder (as huggingface_hub lays it out), each damaged ref as its own entry."""
    refs_dir, snapshots = repo / "refs", repo / "snapshots"
    if not snapshots.is_dir():
        raise Damaged("it has no snapshots folder")
    refs: Dict[str, List[str]] = {}
    damaged = []
    if refs_dir.is_dir():
        for ref in sorted(refs_dir.rglob("*")):
            if ref.is_dir() and any(ref.iterdir()):
                continue   # a namespace: refs/refs/pr/1, or a branch name with '/'
            name = ref.relative_to(refs_dir).as_posix()
            try:
                refs.setdefault(_read_ref(repo, ref), []).append(name)
            except Damaged as e:
                damaged.append(_damaged_entry(repo_id, ref, str(e), [name]))
    revisions = []
    for folder in sorted(snapshots.iterdir()):
        if not folder.is_dir():
            continue
        try:
            files = _cached_files(repo_id, folder.name, folder)
            blobs = {}
            for path in folder.rglob("*"):
                if path.is_file():   # a broken link is a missing file: the revision is incomplete, not damaged
                    blobs[path.resolve()] = path.stat()
            complete = {}
            for dtype in DTYPES:
                wanted = select_files(files, dtype)
                complete[dtype] = MODEL_INDEX in wanted and not _missing(folder, wanted)
        except (OSError, ValueError) as e:
            damaged.append(_damaged_entry(repo_id, folder, f"snapshot {folder.name[:12]} cannot be read "
                                                           f"({getattr(e, 'strerror', None) or e})",
                                          refs.get(folder.name, [])))
            continue
        modified = max((st.st_mtime for st in blobs.values()), default=0.0)
        revisions.append((modified, {"repo_id": repo_id, "refs": sorted(refs.get(folder.name, [])),
                                     "commit": folder.name, "folder": str(folder),
                                     "bytes": sum(st.st_size for st in blobs.values()), "complete": complete,
                                     "damaged": None}))
    return [entry for _, entry in sorted(revisions, key=lambda r: r[0])] + damaged


# ------------------------------------------------------------------------------------------ hub errors

def _hub_problem(exc: BaseException, revision: Optional[str]) -> Optional[Tuple[str, str]]:
    """(what went wrong, what to do) for a failure of huggingface_hub or of the network; None for others."""
    import httpx2
    from huggingface_hub import constants
    from huggingface_hub.errors import (GatedRepoError, HfHubHTTPError, RepositoryNotFoundError,
                                        RevisionNotFoundError)

    hub = constants.ENDPOINT
    for error in _causes(exc):
        if isinstance(error, GatedRepoError):
            return (f"the repo is gated on {hub} (HTTP {error.response.status_code})",
                    f"accept its conditions on its page there, then {LOGIN}")
        if isinstance(error, RevisionNotFoundError):
            return f"revision {revision!r} does not exist on {hub}", "give a branch, tag or commit with --revision"
        if isinstance(error, RepositoryNotFoundError):
            return (f"no such repo on {hub} (HTTP {error.response.status_code})",
                    f"check the id (owner/name); if the repo is private, {LOGIN}")
        if isinstance(error, HfHubHTTPError):
            status, what = error.response.status_code, _requested(str(error.response.url))
            if status in (401, 403):
                return f"{hub} denied access (HTTP {status}) to {what}", LOGIN
            if status >= 500:
                return f"the hub at {hub} failed with HTTP {status} (server error) on {what}", "try again later"
            return f"the hub at {hub} answered HTTP {status} for {what}", "check the model id and --revision"
        if isinstance(error, httpx2.TransportError):
            return (f"cannot reach {hub} ({type(error).__name__}: {error})",
                    "check the network (and HF_ENDPOINT / proxy settings), or run --offline from a complete cache "
                    "(see `kandinsky download --check`)")
    if isinstance(exc, OSError):   # e.g. the disk is full, or a file arrived with the wrong size
        return f"download failed: {exc}", "free disk space if needed and run the command again"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: Set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        yield exc
        exc = exc.__cause__ or exc.__context__


def _requested(url: str) -> str:
    """'file unet/config.json' for a file URL of the hub, else the URL's path."""
    path = urlsplit(url).path
    m = re.search(r"/resolve/[^/]+/(.+)", path)
    return f"file {m.group(1)}" if m else path


# ------------------------------------------------------------------------------------------ Ctrl-C, progress

class _Interrupted(BaseException):
    """Ctrl-C while huggingface_hub's threads download."""


def _interruptible(run: Callable[[], object]) -> None:
    """``run()`` in a thread, so that Ctrl-C is seen at once (huggingface_hub's download threads cannot be
    cancelled: in the main thread, Ctrl-C would wait until every file in flight is complete)."""
    failure: List[BaseException] = []

    def target() -> None:
        try:
            run()
        except BaseException as e:   # handed to the main thread
            failure.append(e)

    worker = threading.Thread(target=target, name="hub-download", daemon=True)
    worker.start()
    try:
        worker.join()
    except KeyboardInterrupt:
        raise _Interrupted() from None
    if failure:
        raise failure[0]


class _ForUnit(ProgressColumn):
    """Shows ``column`` on the rows counting bytes only (``bytes=True``), or on the other rows only."""

    def __init__(self, column: ProgressColumn, bytes: bool = True):
        super().__init__()
        self.column, self.bytes = column, bytes

    def render(self, task) -> Text:
        if (task.fields.get("unit") == "B") == self.bytes:
            return self.column.render(task)
        return Text("")


class _RichTqdm(tqdm):
    """A tqdm bar (huggingface_hub takes any tqdm class) drawn as a row of the Rich display ``rich``; it
    draws nothing when ``rich`` is None."""

    rich = None   # a rich.progress.Progress, set on the subclass that progress_bars() makes

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "gui": True})   # gui: tqdm's own printing is off
        self._task = None
        if self.rich is not None and not self.disable:
            self._task = self.rich.add_task(self.desc or "", total=self.total or None, completed=self.n,
                                            unit=self.unit)

    def display(self, *args, **kwargs) -> None:
        if self._task is not None:
            self.rich.update(self._task, completed=self.n, total=self.total or None, description=self.desc)

    def clear(self, *args, **kwargs) -> None:
        pass

    def close(self) -> None:
        if not self.disable:
            self.display()
        super().close()


@contextmanager
def progress_bars(console=None) -> Iterator[type]:
    """A tqdm class for huggingface_hub: its bars (files, bytes with rate and ETA) as one Rich display on
    ``console``; silent when ``console`` is None."""
    from rich.progress import (BarColumn, DownloadColumn, MofNCompleteColumn, Progress, TextColumn,
                               TimeRemainingColumn, TransferSpeedColumn)

    display = None
    if console is not None:
        display = Progress(TextColumn("{task.description}"), BarColumn(), _ForUnit(DownloadColumn()),
                           _ForUnit(TransferSpeedColumn()), _ForUnit(MofNCompleteColumn(), bytes=False),
                           TextColumn("eta"), TimeRemainingColumn(), console=console)
        display.start()
    try:
        yield type("HubProgress", (_RichTqdm,), {"rich": display})
    finally:
        if display is not None:
            display.stop()


def terminal_console():
    """A Rich console on stderr for download progress: when stderr is a terminal and progress bars are not
    turned off (HF_HUB_DISABLE_PROGRESS_BARS=1); else None."""
    from huggingface_hub.utils import are_progress_bars_disabled
    from rich.console import Console

    console = Console(stderr=True)
    return console if console.is_terminal and not are_progress_bars_disabled() else None


# ------------------------------------------------------------------------------------------ reports

def report(snapshots: Dict[str, Snapshot], dtype: str) -> dict:
    """``kandinsky download --json``: per model its revision, commit, folder, files with sizes and total."""
    return {"dtype": dtype, "cache_dir": str(cache_dir()),
            "models": {s.model: {"role": role, **s.as_dict()} for role, s in snapshots.items()},
            "total_bytes": sum(s.total_bytes for s in snapshots.values())}


def check_line(snapshots: Dict[str, Snapshot], dtype: str) -> str:
    """``kandinsky download --check``'s answer when the cache is complete."""
    models = "; ".join(f"{role} {s.model} ({len(s.files)} files, {decimal(s.total_bytes)})"
                       for role, s in snapshots.items())
    return f"ok: everything a --dtype {dtype} run loads is here: {models}"


def resolve_model_dir(model: str, offline: bool = False, revision: Optional[str] = None,
                      dtype: str = "float32") -> Path:
    """A local pipeline folder, or a hub id fetched into the HF cache: only the files a run at ``dtype``
    loads (:func:`select_files`), from the cache alone when ``offline`` or HF_HUB_OFFLINE=1."""
    return locate(model, revision, dtype, offline_requested(offline), terminal_console()).folder


def fetch_models(prior_model: str, decoder_model: str, revision: Optional[str], dtype: str, offline: bool,
                 check: bool) -> Dict[str, "Snapshot"]:
    """``kandinsky download``: both pipelines located (fetched unless ``check`` or offline); with ``check`` every
    model that is missing or damaged is named in one UserError."""
    check_revision(revision)
    console = None if check else terminal_console()
    snapshots, problems = {}, []
    for role, model in (("prior", prior_model), ("decoder", decoder_model)):
        try:
            snapshots[role] = locate(model, revision, dtype, check or offline_requested(offline), console)
        except UserError as e:
            if not check:
                raise
            problems.append(f"{role}: {e}")
    if problems:
        raise UserError("; ".join(problems))
    return snapshots
