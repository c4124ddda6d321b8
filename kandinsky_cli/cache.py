"""The tool's cache folder: per-model constants and MindSpore's compiled graphs, kept across processes.

Where: ``$KANDINSKY_CACHE``, else ``$XDG_CACHE_HOME/kandinsky``, else ``~/.cache/kandinsky`` (shown by
``kandinsky info``). Everything in it can be deleted at any time; a missing, stale, damaged or unwritable entry
is rebuilt or skipped, never an error, because the cache only saves time.

- ``constants/``: arrays that depend only on a model's weights (the prior's negative image embedding is the CLIP
  embedding of an all-zero image), keyed by the weights' identity, the dtype and the tool's source.
- ``compile/``: MindSpore's compile cache. MindSpore numbers the graphs of a process in compile order and loads
  graph N of a later process for its N-th compile *without checking its inputs* (a 64x128 call after a cached
  64x64 one gets the 64x64 graph and a wrong result), and its own dependency hash covers neither shapes, dtypes
  nor model configs. So each process records, per compile, a signature (network config, parameter shapes and
  dtypes, input shapes and dtypes) next to the graphs; a later process loads from an entry only while its own
  compiles repeat the recorded signatures in order, and turns the cache off for itself at the first difference.
  Entries are keyed by everything that changes a graph outside those signatures (tool source, MindSpore version,
  device, mode, dtype, entry script) plus a hint from the caller (the job's shapes), so that different jobs get
  different entries. One process writes an entry (an exclusive lock); readers hold a shared lock; graph files
  are checked against their recorded SHA-256 before use.
"""
from __future__ import annotations

import fcntl
import functools
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, List, Optional

from . import __version__

CACHE_VARIABLE = "KANDINSKY_CACHE"
COMPILE_CACHE_VARIABLE = "KANDINSKY_COMPILE_CACHE"   # 0/off: compile in every process, as MindSpore does
FORMAT = 1                                            # bump when the layout of either part changes
PACKAGE = Path(__file__).resolve().parent


def cache_dir() -> Path:
    """The tool's cache folder (not created here)."""
    explicit = os.environ.get(CACHE_VARIABLE, "").strip()
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip() or str(Path.home() / ".cache")
    return Path(base).expanduser() / "kandinsky"


def folder_size(path: Path) -> int:
    """Bytes under ``path`` (0 when it does not exist)."""
    total = 0
    for root, _, files in os.walk(path):
        for name in files:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


def digest(*parts) -> str:
    """A short stable hash of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@functools.lru_cache(maxsize=None)
def source_digest() -> str:
    """The tool's own code: every module of the package and the bf16 operator library, by content."""
    h = hashlib.sha256(__version__.encode())
    for path in sorted(PACKAGE.glob("*.py")) + sorted(PACKAGE.glob("_bf16_ops*.so")):
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:32]


def weights_identity(folder: Path) -> str:
    """The identity of a component folder's weights without reading them: config files by content, and each
    ``.safetensors`` file by name, size, modification time and its header (names, dtypes, shapes, offsets)."""
    folder = Path(folder)
    parts = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        try:
            if path.suffix == ".json":
                parts.append((path.name, _file_sha256(path)))
            elif path.suffix == ".safetensors":
                stat = path.stat()
                with open(path, "rb") as f:
                    length = int.from_bytes(f.read(8), "little")
                    header = f.read(min(length, 100 * 1024 ** 2))
                parts.append((path.name, stat.st_size, stat.st_mtime_ns, hashlib.sha256(header).hexdigest()))
        except OSError:
            parts.append((path.name, "unreadable"))
    return digest(str(folder.resolve()), parts)


def _write_atomically(path: Path, write: Callable) -> bool:
    """``write(file)`` into a temporary file beside ``path``, then rename it over ``path``; False on any OSError."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                write(f)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return True
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ constants

class Constants:
    """Arrays computed once per model and kept as ``.npy`` under ``constants/``."""

    def __init__(self, root: Optional[Path] = None):
        self.root = (Path(root) if root is not None else cache_dir()) / "constants"
        self.computed: List[str] = []      # names computed (not found) in this process, for tests and timings

    def path(self, name: str, key: dict) -> Path:
        return self.root / f"{name}-{digest(FORMAT, source_digest(), key)}.npy"

    def get(self, name: str, key: dict, compute: Callable):
        """The cached array for (name, key), or ``compute()`` stored for next time. An unreadable or damaged
        file is recomputed and replaced."""
        import numpy as np

        path = self.path(name, key)
        try:
            with open(path, "rb") as f:
                array = np.load(f, allow_pickle=False)
            if np.issubdtype(array.dtype, np.floating) and np.all(np.isfinite(array)):
                return array
        except (OSError, ValueError, EOFError):
            pass
        import numpy as np

        array = np.asarray(compute())
        self.computed.append(name)
        _write_atomically(path, lambda f: np.save(f, array, allow_pickle=False))
        return array


# ------------------------------------------------------------------------------------------ compiled graphs

def _signature_of(owner, name: str, args) -> str:
    """What a compile depends on beyond the process context: the network (its config, parameter names, shapes
    and dtypes), the function, and the inputs' shapes and dtypes (other arguments by value)."""
    return digest(name, _owner_digest(owner), [_describe(a) for a in args])


def _describe(value):
    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
    if shape is not None and dtype is not None:
        return ["tensor", list(shape), str(dtype)]
    if isinstance(value, (tuple, list)):
        return [_describe(v) for v in value]
    return ["value", repr(value)]


def _owner_digest(owner) -> str:
    if owner is None:
        return ""
    cached = getattr(owner, "_kandinsky_graph_digest", None)
    if cached is None:
        params = [(n, list(p.shape), str(p.dtype)) for n, p in owner.parameters_and_names()]
        cached = digest(type(owner).__qualname__, getattr(owner, "config", None), params)
        object.__setattr__(owner, "_kandinsky_graph_digest", cached)
    return cached


class CompileCache:
    """This process's use of MindSpore's compile cache (see the module docstring). One per process."""

    SEQUENCE = "sequence.json"

    def __init__(self):
        self.context: Optional[dict] = None     # set by :meth:`configure`; None: off
        self.hint = ""
        self.state = "unset"                    # unset -> read | write | off
        self.entry: Optional[Path] = None
        self.recorded: List[dict] = []
        self.compiles: List[dict] = []
        self.seen: set = set()
        self.uncached = 0                       # graphs compiled before configure(): the cache stays off
        # Only a process whose every compile goes through :class:`Graph` may use the cache (the command-line
        # entry point and the prior's child process set this): a graph compiled around it would shift
        # MindSpore's numbering. :meth:`call` also checks MindSpore's own count of compiles.
        self.allowed = False
        self._lock_file = None

    # -- set-up --------------------------------------------------------------------------------------------
    def configure(self, device: str, mode: str, dtype: str) -> None:
        """Use the cache in this process (called by the engine before its first network runs)."""
        if os.environ.get(COMPILE_CACHE_VARIABLE, "1").strip().lower() in ("0", "off", "false", "no"):
            return
        if not self.allowed or mode != "graph" or self.state != "unset" or self.uncached or _mindspore_compiles():
            return      # MindSpore numbers a process's graphs from its first compile: too late once one ran
        import mindspore
        import mindspore.common.api as ms_api

        # MindSpore hashes the Python files the entry script imports, found by following its imports; it fails on
        # relative imports (``python -m kandinsky_cli``) and our key already covers the tool's source: no files.
        ms_api._get_compile_cache_dep_files = list
        self.context = {"format": FORMAT, "source": source_digest(), "mindspore": mindspore.__version__,
                        "device": device, "mode": mode, "dtype": dtype, "entry": _entry_script()}

    def set_hint(self, hint: str) -> None:
        """What the process will compile, in a few words (the job's shapes); only before the first compile."""
        if self.state == "unset":
            self.hint = hint

    def _open(self, first_signature: str) -> None:
        """Choose and lock this process's entry at its first compile (whose signature is part of the key, so
        that different models with the same hint get different entries)."""
        self.state = "off"
        if self.context is None:
            return
        entry = cache_dir() / "compile" / digest(self.context, self.hint, first_signature)
        try:
            entry.mkdir(parents=True, exist_ok=True)
            lock = open(entry / ".lock", "a+b")
        except OSError:
            return
        self._lock_file = lock
        graphs = entry / "rank_0" / "graph_cache"
        if self._try_lock(fcntl.LOCK_EX):
            recorded = self._read_valid_sequence(entry)
            if recorded is None:            # nothing usable: start the entry afresh
                shutil.rmtree(entry / "rank_0", ignore_errors=True)
                (entry / self.SEQUENCE).unlink(missing_ok=True)
                self.recorded, self.state = [], "write"
            else:
                self.recorded = recorded
                self._drop_unrecorded(graphs)
                self._try_lock(fcntl.LOCK_SH)
                self.state = "read"
        elif self._try_lock(fcntl.LOCK_SH):
            recorded = self._read_valid_sequence(entry)
            if recorded is None:
                return
            self.recorded, self.state = recorded, "read"
        else:
            return                          # another process is writing this entry: compile without it
        self.entry = entry
        import mindspore as ms

        ms.set_context(enable_compile_cache=True, compile_cache_path=str(entry))

    def _try_lock(self, kind: int) -> bool:
        try:
            fcntl.flock(self._lock_file, kind | fcntl.LOCK_NB)
            return True
        except OSError:
            return False

    def _read_valid_sequence(self, entry: Path) -> Optional[List[dict]]:
        """The recorded compiles, if the record is readable and every graph file matches its hash."""
        try:
            data = json.loads((entry / self.SEQUENCE).read_text(encoding="utf-8"))
            compiles = data["compiles"]
            graphs = entry / "rank_0" / "graph_cache"
            for item in compiles:
                for name, sha in item["files"].items():
                    if _file_sha256(graphs / name) != sha:
                        return None
            return compiles
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _drop_unrecorded(self, graphs: Path) -> None:
        """Remove graph files no record lists (left by a process killed while compiling)."""
        listed = {name for item in self.recorded for name in item["files"]}
        for path in graphs.glob("*.mindir") if graphs.is_dir() else []:
            if path.name not in listed:
                path.unlink(missing_ok=True)

    def _turn_off(self) -> None:
        import mindspore as ms

        ms.set_context(enable_compile_cache=False)
        self.state = "off"

    # -- around each call of a compiled function -----------------------------------------------------------
    def call(self, graph: "Graph", args):
        """``graph.fn(*args)``, checking (and recording) what a first compile of these inputs loads or stores.
        MindSpore compiles once per jitted function and input signature, so that pair is what is counted."""
        if self.state == "off":
            return graph.fn(*args)
        signature = _signature_of(graph.owner, graph.name, args)
        if (graph.serial, signature) in self.seen:
            return graph.fn(*args)
        self.seen.add((graph.serial, signature))
        if self.context is None:
            self.uncached += 1
            return graph.fn(*args)
        if self.state == "unset":
            self._open(signature)
            if self.state == "off":
                return graph.fn(*args)
        if _mindspore_compiles() != len(self.compiles):
            self._turn_off()                 # something compiled around the cache: MindSpore's numbering moved
            return graph.fn(*args)
        k = len(self.compiles)
        if self.state == "read" and not (k < len(self.recorded) and self.recorded[k]["signature"] == signature):
            if k == len(self.recorded) and self._try_lock(fcntl.LOCK_EX):
                self._drop_unrecorded(self.entry / "rank_0" / "graph_cache")
                self.state = "write"         # the recorded run compiled less: extend the entry
            else:
                self._turn_off()
                return graph.fn(*args)
        before = self._graph_files()
        result = graph.fn(*args)
        new_files = sorted(self._graph_files() - before)
        if self.state == "read":
            self.compiles.append(self.recorded[k])
            if new_files:                    # MindSpore stored instead of loading: its count and ours differ
                self._turn_off()
            return result
        self.compiles.append({
            "signature": signature, "what": f"{graph.name} {[_describe(a) for a in args if hasattr(a, 'shape')]}",
            "files": {name: _file_sha256(self.entry / "rank_0" / "graph_cache" / name) for name in new_files}})
        data = {"context": self.context, "hint": self.hint, "compiles": self.compiles}
        if not _write_atomically(self.entry / self.SEQUENCE, lambda f: f.write(json.dumps(data, indent=1).encode())):
            self._turn_off()
        return result

    def _graph_files(self) -> set:
        graphs = self.entry / "rank_0" / "graph_cache"
        try:
            return {p.name for p in graphs.glob("*.mindir")}
        except OSError:
            return set()


class Graph:
    """A compiled function as :func:`layers.compiled` returns it: calls go through the process's compile cache."""

    _serials = iter(range(1 << 62))

    def __init__(self, fn, owner, name: str):
        self.fn, self.owner, self.name = fn, owner, name
        self.serial = next(Graph._serials)

    def __call__(self, *args):
        return compile_cache.call(self, args)


def _mindspore_compiles() -> int:
    """How many graphs MindSpore compiled in this process."""
    from mindspore.common import api

    return len(api.ms_compile_cache)


def _entry_script() -> str:
    """MindSpore's own dependency hash starts from the entry script: keep entries of different scripts apart."""
    try:
        path = os.path.realpath(sys.argv[0])
        stat = os.stat(path)
        return f"{path}:{stat.st_size}:{stat.st_mtime_ns}"
    except (OSError, IndexError):
        return ""


compile_cache = CompileCache()
