"""The machine the tool runs on: choosing the MindSpore device, and what `--version` and `kandinsky info` report.

MindSpore 2.8's wheel carries plugins for CPU, GPU (CUDA 11.1 and 11.6) and Ascend; ``import mindspore`` loads
the plugins whose system libraries are present, and only those devices can run. Asking for another one
(``ms.set_device("GPU")`` on a machine without NVIDIA driver) logs several ERROR lines and raises RuntimeError,
so :func:`select_device` checks ``mindspore.device_context.<device>.is_available()`` first (with MindSpore's
own warnings about it silenced) and turns an unavailable device into one UserError.
"""
from __future__ import annotations

import ctypes.util
import importlib.metadata
import importlib.util
import logging
import os
import platform
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, List, Optional, Tuple

from . import TOOL_NAME, __version__
from .errors import UserError

DEVICES = {"cpu": "CPU", "gpu": "GPU", "ascend": "Ascend"}   # --device name (options.DEVICES) -> MindSpore target
DEVICE_VARIABLE = "KANDINSKY_DEVICE"
DEVICE_ID_VARIABLE = "DEVICE_ID"            # the card of this process (msrun sets it for each worker)
VERSIONED = ("numpy", "huggingface_hub", "tokenizers")       # packages whose versions `info` reports


# ------------------------------------------------------------------------------------------ devices

def requested_device(name: Optional[str] = None) -> Tuple[Optional[str], str]:
    """(device name or None for MindSpore's choice, where it came from): ``name``, else $KANDINSKY_DEVICE."""
    source = "--device"
    if name is None:
        name, source = os.environ.get(DEVICE_VARIABLE, "").strip() or None, DEVICE_VARIABLE
    if name is None:
        return None, "MindSpore's default"
    if name.lower() not in DEVICES:
        raise UserError(f"bad device {name!r} ({source}): use one of {', '.join(DEVICES)}")
    return name.lower(), source


def select_device(name: Optional[str] = None, device_id: Optional[int] = None) -> str:
    """Put this process on a MindSpore device; call it before any network is built. Returns the device name.

    ``name``: cpu, gpu or ascend; None: $KANDINSKY_DEVICE, else the target MindSpore picked at import.
    ``device_id``: the card on a GPU/Ascend host; None: $DEVICE_ID (what msrun gives each worker), else 0.
    A device that cannot run here is a UserError naming what can.
    """
    import mindspore as ms

    wanted, source = requested_device(name)
    target = DEVICES[wanted] if wanted else ms.get_context("device_target")
    if target not in usable_targets():
        raise UserError(_unavailable(target, source))
    if device_id is None:
        device_id = _env_device_id()
    if target != ms.get_context("device_target") or (device_id is not None and target != "CPU"):
        try:
            ms.set_device(target, device_id if target != "CPU" else None)
        except (RuntimeError, ValueError) as exc:   # already set otherwise, or the runtime already started
            card = "" if device_id is None else f" {device_id}"
            raise UserError(f"cannot put this process on {target}{card}: {str(exc).strip().splitlines()[0]}") from None
    return target.lower()


def usable_targets() -> List[str]:
    """The MindSpore device targets whose plugin loaded in this process (imports MindSpore)."""
    import mindspore.device_context as contexts

    with _quiet_logging():   # an unavailable device logs why at WARNING level
        return [target for target in DEVICES.values() if getattr(contexts, target.lower()).is_available()]


def installed_plugins() -> List[str]:
    """The device plugins the installed MindSpore wheel carries (from its files; no import)."""
    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return []
    plugin_dir = Path(list(spec.submodule_search_locations)[0]) / "lib" / "plugin"
    names = sorted(p.name for p in plugin_dir.glob("libmindspore_*.so*"))
    cuda = [n.split(".so.")[1] for n in names if n.startswith("libmindspore_gpu.so.")]
    return (["cpu"] + ([f"gpu (CUDA {', '.join(cuda)})"] if cuda else [])
            + (["ascend"] if any(n.startswith("libmindspore_ascend.so") for n in names) else []))


def default_device() -> Tuple[str, str]:
    """(the device a run would use, where that choice came from), without selecting it (imports MindSpore)."""
    import mindspore as ms

    wanted, source = requested_device(None)
    return wanted or ms.get_context("device_target").lower(), source


def _unavailable(target: str, source: str) -> str:
    import mindspore as ms

    usable = [t.lower() for t in usable_targets()]
    instead = (f"set {DEVICE_VARIABLE}={usable[0]} or unset it" if source == DEVICE_VARIABLE
               else f"use --device {usable[0]}")
    return (f"device {target.lower()} ({source}) cannot run here: MindSpore {ms.__version__} carries plugins for "
            f"{', '.join(installed_plugins())}, but on this machine only {', '.join(usable)} works "
            f"({_needs(target)}); {instead}")


def _needs(target: str) -> str:
    """What the plugin of ``target`` needs from the system, and whether it was found."""
    if target == "GPU":
        found = ctypes.util.find_library("cuda")
        return ("the GPU plugin needs an NVIDIA driver and the CUDA 11 runtime with cuDNN"
                + ("" if found else "; no NVIDIA driver library (libcuda.so) was found"))
    found = os.environ.get("ASCEND_HOME_PATH") or Path("/usr/local/Ascend").is_dir()
    return ("the Ascend plugin needs an Ascend NPU driver and the CANN toolkit (source CANN's set_env.sh)"
            + ("" if found else "; no CANN toolkit was found (ASCEND_HOME_PATH is not set)"))


def _env_device_id() -> Optional[int]:
    value = os.environ.get(DEVICE_ID_VARIABLE, "").strip()
    if not value:
        return None
    if not value.isdigit():
        raise UserError(f"{DEVICE_ID_VARIABLE}={value!r} is not a device number (0, 1, ...)")
    return int(value)


@contextmanager
def _quiet_logging() -> Iterator[None]:
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


# ------------------------------------------------------------------------------------------ reports

def version_line() -> str:
    """``kandinsky --version``: the tool's, MindSpore's version and the default device (imports MindSpore)."""
    import mindspore as ms

    device, source = default_device()
    origin = f" from {DEVICE_VARIABLE}" if source == DEVICE_VARIABLE else ""
    return f"{TOOL_NAME} {__version__} (MindSpore {ms.__version__}, default device {device}{origin})"


def machine_info(device: Optional[str] = None) -> dict:
    """``kandinsky info``: versions, device, threads, memory, the HF cache and its models. With ``device``,
    that device is selected (a UserError if it cannot run here)."""
    import mindspore as ms
    import psutil

    from . import bf16
    from . import cache as tool_cache
    from .download import cache_dir, cached_models

    if device is not None:
        chosen, source = select_device(device), "--device"
    else:
        chosen, source = default_device()
    memory = psutil.virtual_memory()
    return {
        "versions": {TOOL_NAME: __version__, "python": platform.python_version(), "mindspore": ms.__version__,
                     **{name: importlib.metadata.version(name) for name in VERSIONED}},
        "device": {"device": chosen, "source": source, "usable": [t.lower() for t in usable_targets()],
                   "plugins": installed_plugins(), "device_id": os.environ.get(DEVICE_ID_VARIABLE)},
        "threads": {"cpus": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
                    "mindspore_runtime_threads": ms.get_context("runtime_num_threads")},
        "memory": {"total_bytes": memory.total, "available_bytes": memory.available},
        "bfloat16": {"available": bf16.available(), "reason": bf16.unavailable_reason(),
                     "auto": bf16.resolve_dtype("auto", chosen)},
        "cache": {"hub_cache": str(cache_dir()), "models": cached_models(),
                  "tool_cache": str(tool_cache.cache_dir()), "tool_cache_bytes": tool_cache.folder_size(tool_cache.cache_dir())},
    }


