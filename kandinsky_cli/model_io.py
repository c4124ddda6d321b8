"""Finding model folders, reading configs and loading safetensors weights into MindSpore cells.

One module owns every checkpoint detail: hub resolution, file names (single, sharded, fp16 variants),
strict one-to-one name matching, and the few documented key renames/ignores. Only safetensors are read.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Callable, Dict, Iterable, Optional, Sequence

import numpy as np

from .errors import UserError

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


def resolve_model_dir(model: str, offline: bool = False, revision: Optional[str] = None,
                      dtype: str = "float32") -> Path:
    """A local pipeline folder, or a hub id fetched into the HF cache: only the files a run at ``dtype``
    loads (download.select_files), from the cache alone when ``offline`` or HF_HUB_OFFLINE=1."""
    from . import download

    return download.locate(model, revision, dtype, offline_requested(offline), download.terminal_console()).folder


def read_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        raise UserError(f"missing file {path}") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read {path}: {exc}") from None


def read_config(component_dir: Path, name: str = "config.json") -> dict:
    return read_json(Path(component_dir) / name)


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
            shards = sorted(set(read_json(index).get("weight_map", {}).values()))
            missing = [s for s in shards if not (component_dir / s).is_file()]
            if missing:
                raise UserError(f"{index} names shard(s) that are missing: {', '.join(missing)}")
            return [component_dir / s for s in shards]
    bins = [p.name for p in component_dir.glob("*.bin")] + [p.name for p in component_dir.glob("*.ckpt")]
    hint = (f" (only pickle files {', '.join(bins)} are present; they are never loaded: convert them to safetensors)"
            if bins else "")
    raise UserError(f"no {base}.safetensors in {component_dir}{hint}")


def _open_safetensors(path: Path):
    from safetensors import safe_open

    try:
        return safe_open(str(path), framework="numpy")
    except Exception as exc:  # SafetensorError, OSError, bad headers
        raise UserError(f"cannot read weights {path}: corrupt, truncated or unsupported safetensors file "
                        f"({exc})") from None


def safetensors_shapes(files: Sequence[Path]) -> Dict[str, tuple]:
    """{key: shape} from the files' headers, without reading any tensor data."""
    shapes: Dict[str, tuple] = {}
    for path in files:
        with _open_safetensors(path) as f:
            for key in f.keys():
                shapes[key] = tuple(f.get_slice(key).get_shape())
    return shapes


# safetensors dtype names -> numpy (bfloat16 has no numpy type: a clear error instead)
SAFETENSORS_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32,
                      "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _read_header(f, path: Path):
    """(header dict, offset of the data section) of an open safetensors file."""
    raw = f.read(8)
    size = int.from_bytes(raw, "little") if len(raw) == 8 else -1
    header = json.loads(f.read(size)) if size > 0 else None
    if not isinstance(header, dict):
        raise UserError(f"cannot read weights {path}: corrupt safetensors header")
    header.pop("__metadata__", None)
    return header, 8 + size


def iter_tensors(path: Path, keys: Iterable[str]):
    """Yield (key, array) for ``keys`` of one safetensors file, each read with plain file reads into a fresh
    array. No memory map: mapped file pages count in the process RSS until unmapped, which would double the
    peak while a multi-GB component loads."""
    with open(path, "rb") as f:
        header, base = _read_header(f, path)
        for key in keys:
            info = header[key]
            dtype = SAFETENSORS_DTYPES.get(info["dtype"])
            if dtype is None:
                raise UserError(f"cannot read tensor {key} from {path}: unsupported dtype {info['dtype']} "
                                "(float32 or float16 checkpoints are supported)")
            begin, end = info["data_offsets"]
            arr = np.empty(info["shape"], dtype=dtype)
            if arr.nbytes != end - begin:
                raise UserError(f"cannot read tensor {key} from {path}: size does not match its shape")
            f.seek(base + begin)
            if f.readinto(memoryview(arr.reshape(-1)).cast("B")) != arr.nbytes:
                raise UserError(f"cannot read tensor {key} from {path}: file is truncated")
            yield key, arr


def _rename_legacy(key: str) -> str:
    for pattern, repl in LEGACY_ATTENTION_NAMES:
        if pattern.search(key):
            return pattern.sub(repl, key)
    return key


def build_and_load(build: Callable[[dict], "object"], component_dir: Path, base: str, dtype=None,
                   variant: Optional[str] = None):
    """``build(config.json)``, strictly load its weights, switch it to inference mode: every network's
    ``from_pretrained``."""
    component_dir = Path(component_dir)
    cell = build(read_config(component_dir))
    load_weights(cell, component_dir, base, dtype, variant)
    cell.set_train(False)
    return cell


def load_weights(cell, component_dir: Path, base: str, dtype=None, variant: Optional[str] = None,
                 ignore: Iterable = KNOWN_IGNORED, rename: Optional[Callable[[str], str]] = _rename_legacy):
    """Strictly load a component's safetensors into ``cell``: every parameter exactly once, same shapes.

    A missing, unexpected or wrongly shaped tensor is an error naming the key (and both shapes), found from
    the file headers before any data is read. Tensors are then read one at a time and handed to the
    parameter without a second copy, so peak memory is the model plus one tensor.
    ``dtype`` (a MindSpore dtype) casts floating-point weights; None keeps float32.
    """
    import mindspore as ms

    files = weight_files(component_dir, base, variant)
    shapes = safetensors_shapes(files)
    params = dict(cell.parameters_and_names())
    names: Dict[str, str] = {}   # checkpoint key -> parameter name
    unexpected = []
    for key in shapes:
        name = key if key in params else (rename(key) if rename else key)
        if name in params:
            names[key] = name
        elif not any(p.search(key) for p in ignore):
            unexpected.append(key)
    where = f"{Path(component_dir)}"
    missing = sorted(set(params) - set(names.values()))
    if missing:
        raise UserError(f"{where}: checkpoint lacks {len(missing)} parameter(s), first: {missing[0]} "
                        f"(shape {tuple(params[missing[0]].shape)})")
    if unexpected:
        raise UserError(f"{where}: checkpoint has {len(unexpected)} unexpected tensor(s), first: {unexpected[0]} "
                        f"(shape {shapes[unexpected[0]]}); is the config right for these weights?")
    for key, name in names.items():
        if shapes[key] != tuple(params[name].shape):
            raise UserError(f"{where}: tensor {name} has shape {shapes[key]} in the checkpoint but the "
                            f"config gives {tuple(params[name].shape)}")
    target = dtype or ms.float32
    np_dtype = np.float16 if target == ms.float16 else np.float32
    for path in files:
        with _open_safetensors(path) as f:
            keys = [key for key in f.keys() if key in names]
        for key, arr in iter_tensors(path, keys):
            param = params[names[key]]
            if np.issubdtype(arr.dtype, np.floating):
                arr = np.ascontiguousarray(arr, dtype=np_dtype)
                param.set_dtype(target)
            param.set_data(ms.Tensor.from_numpy(arr))
            del arr
    return cell
