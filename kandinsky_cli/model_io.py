"""Finding model folders, reading configs and loading safetensors weights into MindSpore cells.

One module owns every checkpoint detail: hub resolution, file names (single, sharded, fp16 variants),
strict one-to-one name matching, the few documented key renames/ignores, and reading configs: ``Config``
gives every network the same typed getters, so a malformed or unsupported model folder is always a
``ModelError`` naming the file and the key. Only safetensors are read.
"""
from __future__ import annotations

import json
import math
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, Iterable, NamedTuple, Optional, Sequence

import numpy as np

from .errors import ModelError, UserError

DEFAULT_PRIOR = "kandinsky-community/kandinsky-2-1-prior"
DEFAULT_DECODER = "kandinsky-community/kandinsky-2-1-inpaint"

DIFFUSERS_WEIGHTS = "diffusion_pytorch_model"
TRANSFORMERS_WEIGHTS = "model"

# Keys present in some published files that are buffers or unused heads, not parameters.
KNOWN_IGNORED = (
    re.compile(r"(^|\.)position_ids$"),
    re.compile(r"^transformer\.pooler\."),
)

# Deprecated attention names that diffusers still converts at load time (VAE-style attention blocks).
LEGACY_ATTENTION_NAMES = (
    (re.compile(r"\.query\.(weight|bias)$"), r".to_q.\1"),
    (re.compile(r"\.key\.(weight|bias)$"), r".to_k.\1"),
    (re.compile(r"\.value\.(weight|bias)$"), r".to_v.\1"),
    (re.compile(r"\.proj_attn\.(weight|bias)$"), r".to_out.0.\1"),
)


def offline_requested(offline: bool = False) -> bool:
    return offline or os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def looks_like_hub_id(model: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", model)) and not model.startswith((".", "/"))


# ------------------------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------------------------

REQUIRED = object()   # a Config getter's default: the key must be in the file


def _shown(value) -> str:
    """A config value as it is written in JSON, shortened."""
    try:
        text = json.dumps(value)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _kind(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "true/false", type(None): "null"}
    return names.get(type(value), "a number" if isinstance(value, (int, float)) else type(value).__name__)


def _at_least(minimum) -> str:
    return "" if minimum is None else f" >= {minimum}"


def _one_of(options: Sequence) -> str:
    if len(options) == 1:
        return f"{_shown(options[0])} (the only supported value)"
    return "one of " + ", ".join(_shown(o) for o in options)


class Config(dict):
    """A JSON config object with typed getters, so that every network reads its config.json the same way.

    ``source`` names the object in errors (the file's path). A getter returns the file's value for ``key`` or,
    when the key is absent, ``default`` (the library class's default; ``REQUIRED``: absent is an error).
    null is accepted where the default is None or ``optional`` is set (a getter then returns None).
    Every bad value is a ModelError ``"{source}: {key}: must be ..., got ..."``; reading an absent key with
    ``config[key]`` is one too.
    """

    def __init__(self, data, source="config"):
        if not isinstance(data, dict):
            raise ModelError(f"{source}: must be a JSON object {{...}}, got {_kind(data)}")
        super().__init__(data)
        self.source = str(source)

    @classmethod
    def of(cls, config, source: str) -> "Config":
        """``config`` itself when it is a Config (it keeps its file name), else ``config`` named ``source``."""
        return config if isinstance(config, Config) else cls(config, source)

    def __missing__(self, key):
        raise self.error(key, "is missing")

    def error(self, key: str, problem: str) -> ModelError:
        return ModelError(f"{self.source}: {key}: {problem}")

    def require(self, ok: bool, key: str, problem: str) -> None:
        """A consistency check between values: ``problem`` is reported against ``key`` unless ``ok``."""
        if not ok:
            raise self.error(key, problem)

    def value(self, key: str, default=REQUIRED):
        """The raw value: the file's (null included), else ``default``."""
        if key in self:
            return dict.__getitem__(self, key)
        if default is REQUIRED:
            raise self.error(key, "is missing")
        return default

    def int(self, key: str, default=REQUIRED, min=None, optional=False):
        """An integer (not true/false), at least ``min``."""
        value = self.value(key, default)
        return None if self._null_ok(value, default, optional) else self._int(key, value, min)

    def float(self, key: str, default=REQUIRED, min=None, optional=False):
        """A finite number, at least ``min``, as a Python float."""
        value = self.value(key, default)
        return None if self._null_ok(value, default, optional) else self._float(key, value, min)

    def bool(self, key: str, default=REQUIRED, optional=False):
        """true or false (strings and numbers are not accepted: bool("false") would be True)."""
        value = self.value(key, default)
        return None if self._null_ok(value, default, optional) else self._bool(key, value)

    def str(self, key: str, default=REQUIRED, optional=False):
        value = self.value(key, default)
        return None if self._null_ok(value, default, optional) else self._str(key, value)

    def choice(self, key: str, options: Sequence, default=REQUIRED):
        """One of ``options`` (which may include None for null)."""
        return self._choice(key, self.value(key, default), options)

    def list(self, key: str, default=REQUIRED, of=None, min=None, options=None, optional=False):
        """A non-empty list whose items are ``of`` (int, float, str or bool; ints/floats at least ``min``) or
        one of ``options``. Returns a new list."""
        value = self.value(key, default)
        if self._null_ok(value, default, optional):
            return None
        if not isinstance(value, (list, tuple)) or not value:
            raise self.error(key, f"must be a non-empty list, got {_shown(value)}")
        return [self._item(f"{key}[{i}]", v, of, min, options) for i, v in enumerate(value)]

    def per_block(self, key: str, n: int, default=REQUIRED, of=None, min=None, optional=False):
        """diffusers' per-block values: one value for all ``n`` blocks, or a list of exactly ``n`` values.
        With ``optional``, null (or a null item) stands for "not set" and comes back as None."""
        value = self.value(key, default)
        if isinstance(value, (list, tuple)):
            if len(value) != n:
                raise self.error(key, f"must have one entry per block ({n}), got {len(value)}: {_shown(value)}")
            labelled = [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        else:
            labelled = [(key, value)] * n
        return [None if v is None and optional else self._item(label, v, of, min, None) for label, v in labelled]

    # -- single values --------------------------------------------------------------------------------------
    @staticmethod
    def _null_ok(value, default, optional) -> bool:
        return value is None and (optional or default is None)

    def _item(self, label, value, of, minimum, options):
        if options is not None:
            return self._choice(label, value, options)
        checks = {int: lambda: self._int(label, value, minimum), float: lambda: self._float(label, value, minimum),
                  str: lambda: self._str(label, value), bool: lambda: self._bool(label, value)}
        return checks[of]()

    def _int(self, label, value, minimum):
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            raise self.error(label, f"must be an integer{_at_least(minimum)}, got {_shown(value)}")
        return value

    def _float(self, label, value, minimum):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or \
                (minimum is not None and value < minimum):
            raise self.error(label, f"must be a number{_at_least(minimum)}, got {_shown(value)}")
        return float(value)

    def _bool(self, label, value):
        if not isinstance(value, bool):
            raise self.error(label, f"must be true or false, got {_shown(value)}")
        return value

    def _str(self, label, value):
        if not isinstance(value, str):
            raise self.error(label, f"must be a string, got {_shown(value)}")
        return value

    def _choice(self, label, value, options):
        if not any(type(value) is type(o) and value == o for o in options):
            raise self.error(label, f"must be {_one_of(options)}, got {_shown(value)}")
        return value


def read_json(path: Path):
    """A JSON file's value; a missing or invalid file is a ModelError naming it."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise ModelError(f"missing file {path}") from None
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None


def read_config(component_dir: Path, name: str = "config.json") -> Config:
    """``component_dir/name`` as a Config named after the file (it must hold a JSON object)."""
    path = Path(component_dir) / name
    return Config(read_json(path), path)


def read_model_index(root: Path, components: Sequence[str]) -> Config:
    """A pipeline folder's model_index.json: an object listing (at least) the ``components`` that get loaded."""
    index = read_config(root, "model_index.json")
    for name in components:
        if name not in index:
            raise index.error(name, f"is missing: the folder has no {name} component (is it the right kind of "
                                    f"pipeline folder? it says {_shown(index.get('_class_name'))})")
    return index


def read_scheduler_config(scheduler_dir: Path) -> Config:
    """scheduler_config.json with the types of the keys diffusers' schedulers share checked (which values a
    sampler supports is the sampler's business). Without this a string "false" would enable clip_sample."""
    cfg = read_config(scheduler_dir, "scheduler_config.json")
    cfg.int("num_train_timesteps", 1000, min=1)
    cfg.int("steps_offset", 0, min=0)
    for key in ("beta_start", "beta_end", "clip_sample_range"):
        cfg.float(key, None, min=0)
    cfg.list("trained_betas", None, of=float, min=0)
    for key in ("beta_schedule", "prediction_type", "variance_type", "timestep_spacing"):
        cfg.str(key, None)
    for key in ("clip_sample", "set_alpha_to_one", "thresholding", "rescale_betas_zero_snr"):
        cfg.bool(key, None)
    return cfg


def build_scheduler(make: Callable[[Config], "object"], scheduler_dir: Path):
    """``make(scheduler_config.json)`` (a sampler class), every problem with the file a ModelError."""
    config = read_scheduler_config(scheduler_dir)
    with config_errors(config.source):
        return make(config)


# Errors that a network's constructor can still raise on a config value its checks did not foresee.
_BUILD_ERRORS = (ValueError, KeyError, TypeError, AttributeError, IndexError, ZeroDivisionError)


@contextmanager
def config_errors(source):
    """Turn an error raised while building from a config into a ModelError naming the file: the last
    resort behind the networks' own checks, so that a malformed folder never ends in a traceback."""
    try:
        yield
    except UserError:
        raise
    except _BUILD_ERRORS as exc:
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise ModelError(f"{source}: cannot build the network from this config: {detail}") from exc


def build_from_config(build: Callable[[Config], "object"], component_dir: Path, name: str = "config.json"):
    """``build(config)`` for ``component_dir/name``, every config problem a ModelError naming the file."""
    config = read_config(component_dir, name)
    with config_errors(config.source):
        return build(config)


# ------------------------------------------------------------------------------------------------------------------
# weights
# ------------------------------------------------------------------------------------------------------------------

def _shards(index: Path) -> list:
    """The shard file names of a ``*.safetensors.index.json``: the values of its weight_map."""
    weight_map = Config(read_json(index), index).value("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise ModelError(f"{index}: weight_map: must be a non-empty object {{tensor: file}}, got {_kind(weight_map)}")
    shards = sorted(set(weight_map.values()), key=str)
    for shard in shards:
        if not isinstance(shard, str) or Path(shard).name != shard:
            raise ModelError(f"{index}: weight_map: must name files in this folder, got {_shown(shard)}")
    return shards


def weight_files(component_dir: Path, base: str, variant: Optional[str] = None) -> list:
    """The safetensors files of one component: ``base[.variant].safetensors`` or its shards."""
    component_dir = Path(component_dir)
    candidates = ([f"{base}.{variant}"] if variant else []) + [base]
    for stem in candidates:
        single = component_dir / f"{stem}.safetensors"
        if single.is_file():
            return [single]
        index = component_dir / f"{stem}.safetensors.index.json"
        if index.is_file():
            shards = _shards(index)
            missing = [s for s in shards if not (component_dir / s).is_file()]
            if missing:
                raise ModelError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
            return [component_dir / s for s in shards]
    bins = [p.name for p in component_dir.glob("*.bin")] + [p.name for p in component_dir.glob("*.ckpt")]
    hint = (f" (only pickle files {', '.join(bins)} are present; they are never loaded: convert them to safetensors)"
            if bins else "")
    raise ModelError(f"no {base}.safetensors in {component_dir}{hint}")


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as exc:  # SafetensorError, OSError, bad headers
        raise ModelError(f"cannot read weights {path}: corrupt, truncated or unsupported safetensors file "
                         f"({exc})") from None


class TensorInfo(NamedTuple):
    shape: tuple
    dtype: str     # the safetensors name: "F32", "BF16", "I64", ...
    path: Path


def safetensors_headers(files: Sequence[Path]) -> Dict[str, TensorInfo]:
    """{key: (shape, dtype, file)} from the files' headers, without reading any tensor data."""
    infos: Dict[str, TensorInfo] = {}
    for path in files:
        with _open_safetensors(path) as f:
            for key in f.keys():
                if key in infos:
                    raise ModelError(f"tensor {key} is stored twice: in {infos[key].path} and in {path}")
                tensor = f.get_slice(key)
                infos[key] = TensorInfo(tuple(tensor.get_shape()), tensor.get_dtype(), Path(path))
    return infos


def safetensors_shapes(files: Sequence[Path]) -> Dict[str, tuple]:
    """{key: shape} from the files' headers, without reading any tensor data."""
    return {key: info.shape for key, info in safetensors_headers(files).items()}


# safetensors dtype names -> numpy. BF16 has no numpy type: it is read as uint16 and widened to float32
# (a bfloat16 is the upper half of a float32, so the conversion is exact).
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
                      "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8,
                      "U64": np.uint64, "U32": np.uint32, "U16": np.uint16, "U8": np.uint8, "BOOL": np.bool_}
FLOAT_DTYPES = ("F64", "F32", "F16", "BF16")
INTEGER_DTYPES = ("I64", "I32", "I16", "I8", "U64", "U32", "U16", "U8")


def _bfloat16_to_float32(raw: np.ndarray) -> np.ndarray:
    wide = raw.astype(np.uint32)
    wide <<= 16
    return wide.view(np.float32)


def _read_header(f, path: Path):
    """(header dict, offset of the data section) of an open safetensors file."""
    raw = f.read(8)
    size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    header = json.loads(f.read(size)) if size > 0 else None
    if not isinstance(header, dict):
        raise ModelError(f"cannot read weights {path}: corrupt safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + size


def iter_tensors(path: Path, keys: Iterable[str]):
    """Yield (key, array) for ``keys`` of one safetensors file, each read with plain file reads into a fresh
    array (BF16 comes back as float32). No memory map: mapped file pages count in the process RSS until
    unmapped, which would double the peak while a multi-GB component loads."""
    with open(path, "rb") as f:
        header, base = _read_header(f, path)
        for key in keys:
            info = header[key]
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise ModelError(f"cannot read tensor {key} from {path}: unsupported dtype {info['dtype']} "
                                 f"(supported: {', '.join(SAFETENSORS_DTYPES)})")
            begin, end = info["data_offsets"]
            arr = np.empty(info["shape"], dtype=dtype)
            if arr.nbytes != end - begin:
                raise ModelError(f"cannot read tensor {key} from {path}: size does not match its shape")
            f.seek(base + begin)
            if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != arr.nbytes:
                raise ModelError(f"cannot read tensor {key} from {path}: file is truncated")
            yield key, (_bfloat16_to_float32(arr) if info["dtype"] == "BF16" else arr)


def prefetch(folder: Path) -> None:
    """Ask the OS to read every ``.safetensors`` under ``folder`` into its page cache, in the background: the
    decoder's ~7 GB are then read while the prior computes instead of after it (a cold start). Advice only: it
    allocates nothing in this process and the OS may drop the pages again."""
    import threading

    def advise() -> None:
        for path in sorted(Path(folder).rglob("*.safetensors")):
            try:
                fd = os.open(path, os.O_RDONLY)
                try:
                    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_WILLNEED)
                finally:
                    os.close(fd)
            except (OSError, AttributeError):    # no such call on this system: nothing to gain
                return

    threading.Thread(target=advise, name="kandinsky-prefetch", daemon=True).start()


def _rename_legacy(key: str) -> str:
    for pattern, repl in LEGACY_ATTENTION_NAMES:
        if pattern.search(key):
            return pattern.sub(repl, key)
    return key


# Compiled networks of this process, one entry per kind: (key, networks). See :func:`compiled_once`.
_COMPILED: Dict[str, tuple] = {}


def compiled_once(kind: str, folders: Sequence[Path], mode: str, variant: tuple, build: Callable[[], "object"]):
    """``build()`` (networks and their compiled functions), or in graph mode what it returned earlier in this
    process for the same component ``folders`` (the same weights: :func:`cache.weights_identity`) and ``variant``
    (dtype, bf16): a second engine on the same model (a test's, a server's) reuses the networks and their compiled
    graphs instead of loading and compiling them again. MindSpore never frees a compiled network's parameters, so
    holding them costs nothing; eager networks (``mode`` pynative) are built afresh and freed with their owner. One
    entry per ``kind``: building other weights drops the previous entry first."""
    if mode != "graph":
        return build()
    from .cache import weights_identity

    key = (tuple(weights_identity(Path(f)) for f in folders), variant)
    held = _COMPILED.get(kind)
    if held is not None and held[0] == key:
        return held[1]
    _COMPILED.pop(kind, None)
    networks = build()
    _COMPILED[kind] = (key, networks)
    return networks


def build_and_load(build: Callable[[Config], "object"], component_dir: Path, base: str, dtype=None,
                   variant: Optional[str] = None):
    """``build(config.json)``, strictly load its weights, switch it to inference mode: every network's
    ``from_pretrained``. Every config problem is a ModelError naming config.json, found before any weights."""
    component_dir = Path(component_dir)
    cell = build_from_config(build, component_dir)
    load_weights(cell, component_dir, base, dtype, variant)
    cell.set_train(False)
    return cell


def _accepted_dtypes(param) -> tuple:
    """The safetensors dtypes that may fill ``param``: any float for a float parameter (cast to the compute
    dtype), integers for an integer one, BOOL for a bool one. Reinterpreting other data is never right."""
    from mindspore.common import dtype as mstype

    if param.dtype in mstype.float_type:
        return FLOAT_DTYPES
    if param.dtype in mstype.int_type + mstype.uint_type:
        return INTEGER_DTYPES
    return ("BOOL",)


def _check_tensors(params: dict, names: Dict[str, str], infos: Dict[str, TensorInfo], where: Path) -> None:
    """Every checkpoint tensor against its parameter, from the headers: the shape, then the kind of dtype."""
    for key, name in names.items():
        info, param = infos[key], params[name]
        if info.shape != tuple(param.shape):
            raise ModelError(f"{where}: tensor {name} has shape {info.shape} in the checkpoint but "
                             f"config.json gives {tuple(param.shape)}")
        accepted = _accepted_dtypes(param)
        if info.dtype not in accepted:
            raise ModelError(f"{info.path}: tensor {key} is stored as {info.dtype}, but parameter {name} needs "
                             f"{' / '.join(accepted)} data: the file does not hold these weights")


def load_weights(cell, component_dir: Path, base: str, dtype=None, variant: Optional[str] = None,
                 ignore: Iterable = KNOWN_IGNORED, rename: Optional[Callable[[str], str]] = _rename_legacy):
    """Strictly load a component's safetensors into ``cell``: every parameter exactly once, same shapes,
    a float tensor for every float parameter.

    A missing, unexpected, wrongly shaped or wrongly typed tensor is a ModelError naming the key (and the
    file), found from the file headers before any data is read. Tensors are then read one at a time and
    handed to the parameter without a second copy, so peak memory is the model plus one tensor.
    ``dtype`` (a MindSpore dtype) casts floating-point weights; None keeps float32. In float16 the component's
    ``fp16`` variant files are read where it has them (what ``kandinsky download --dtype float16`` fetches).
    """
    import mindspore as ms

    if variant is None and dtype == ms.float16:
        variant = "fp16"
    files = weight_files(component_dir, base, variant)
    infos = safetensors_headers(files)
    params = dict(cell.parameters_and_names())
    names: Dict[str, str] = {}   # checkpoint key -> parameter name
    unexpected = []
    for key in infos:
        name = key if key in params else (rename(key) if rename else key)
        if name in params:
            names[key] = name
        elif not any(p.search(key) for p in ignore):
            unexpected.append(key)
    where = Path(component_dir)
    missing = sorted(set(params) - set(names.values()))
    if missing:
        raise ModelError(f"{where}: checkpoint lacks {len(missing)} parameter(s) that config.json builds, first: "
                         f"{missing[0]} (shape {tuple(params[missing[0]].shape)})")
    if unexpected:
        raise ModelError(f"{where}: checkpoint has {len(unexpected)} unexpected tensor(s), first: {unexpected[0]} "
                         f"(shape {infos[unexpected[0]].shape}); is config.json right for these weights?")
    _check_tensors(params, names, infos, where)
    target = dtype or ms.float32
    np_dtype = np.float16 if target == ms.float16 else np.float32
    for path in files:
        keys = [key for key, info in infos.items() if info.path == Path(path) and key in names]
        for key, arr in iter_tensors(path, keys):
            param = params[names[key]]
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.ascontiguousarray(arr, dtype=np_dtype)
                param.set_dtype(target)
                param.set_data(ms.Tensor.from_numpy(arr))
            else:
                param.set_data(ms.Tensor.from_numpy(arr).astype(param.dtype))
            del arr
    return cell
