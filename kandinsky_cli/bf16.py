"""bfloat16 products on CPU: MindSpore custom operators (``ops.Custom``, ``func_type="aot"``) over oneDNN.

MindSpore 2.8 has no bf16 kernels on CPU. ``csrc/bf16_ops.cpp`` (compiled by the package build into
``kandinsky_cli/_bf16_ops*.so``; ``KANDINSKY_BF16=0`` turns the path off) multiplies bf16 x bf16 with fp32
accumulation through oneDNN's matmul, using the copy of oneDNN that MindSpore itself ships (``mindspore/lib/libdnnl.so.2``), which runs AVX512_BF16
(and AMX) kernels on CPUs that have them. Operands are float32 tensors (rounded to bf16 inside the operator)
or bf16 bits held as uint16 (weights converted once, see :func:`to_bits`); results are float32.

:func:`unavailable_reason` says why the path cannot run here (None when it can); nothing in this module
touches MindSpore or the library until :func:`ops` is called.
"""
from __future__ import annotations

import ctypes
import functools
import os
import platform
from pathlib import Path
from typing import Optional

import numpy as np

PACKAGE = Path(__file__).resolve().parent
CPU_FLAG = "avx512_bf16"      # AMX CPUs (amx_bf16) have it too


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> set:
    """The feature flags of the first CPU listed in ``cpuinfo`` (Linux; empty elsewhere)."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.partition(":")[2].split())
    return set()


def library() -> Optional[Path]:
    """The compiled operator library, if the package build made one."""
    found = sorted(PACKAGE.glob("_bf16_ops*.so"))
    return found[0] if found else None


def onednn() -> Optional[Path]:
    """MindSpore's own oneDNN (found without importing MindSpore)."""
    import importlib.util

    spec = importlib.util.find_spec("mindspore")
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / "lib" / "libdnnl.so.2"
        if path.is_file():
            return path
    return None


@functools.lru_cache(maxsize=None)
def unavailable_reason() -> Optional[str]:
    """Why bfloat16 cannot run on this machine, in a few words; None when it can."""
    if os.environ.get("KANDINSKY_BF16", "1").strip().lower() in ("0", "false", "no", "off"):
        return "it is turned off (KANDINSKY_BF16=0)"
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return f"bfloat16 needs Linux on x86_64 (this is {platform.system()} on {platform.machine()})"
    if CPU_FLAG not in cpu_flags():
        return f"this CPU has no bf16 instructions ({CPU_FLAG} is not among its flags)"
    if library() is None:
        return "the bf16 operators were not built (install the package with a C++ compiler present)"
    if onednn() is None:
        return "MindSpore's oneDNN (mindspore/lib/libdnnl.so.2) was not found"
    return None


def available() -> bool:
    return unavailable_reason() is None


def resolve_dtype(requested: str, device: str) -> str:
    """The dtype a run uses for ``--dtype requested`` on ``device`` (cpu, gpu, ascend): "auto" becomes bfloat16
    on a CPU that can run it, float16 on GPU/Ascend (the seed's own choice), float32 on other CPUs; "bfloat16" where it cannot run is a UserError saying why."""
    from .errors import UserError

    if requested == "auto":
        if device != "cpu":
            return "float16"
        return "bfloat16" if available() else "float32"
    if requested == "bfloat16":
        if device != "cpu":
            raise UserError(f"--dtype bfloat16 runs on the CPU only (this run is on {device}); use --dtype float16 "
                            "or float32 there")
        reason = unavailable_reason()
        if reason:
            raise UserError(f"--dtype bfloat16 is unavailable here: {reason}; use --dtype float32 or auto")
    return requested


def to_bits(array) -> np.ndarray:
    """float32 -> bf16 bits (uint16), rounding to nearest even, as the operators round their inputs."""
    f = np.ascontiguousarray(array, dtype=np.float32)
    u = f.view(np.uint32)
    rounded = (u >> 16) & 1
    rounded += 0x7FFF
    rounded += u            # wraps only for NaN bit patterns, which are set apart below
    rounded >>= 16
    bits = rounded.astype(np.uint16)
    nan = np.isnan(f)
    if nan.any():
        bits[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)    # stays a (quiet) NaN, as the CPU converts
    return bits


def from_bits(bits) -> np.ndarray:
    """bf16 bits (uint16) -> float32."""
    return (np.asarray(bits, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


@functools.lru_cache(maxsize=None)
def _host_library() -> ctypes.CDLL:
    """The operator library for its host-side conversion functions (ctypes). It leaves oneDNN's symbols to the
    process, so MindSpore's copy is made global first (before MindSpore itself loads the library, too)."""
    reason = unavailable_reason()
    if reason:
        raise RuntimeError(reason)
    ctypes.CDLL(str(onednn()), mode=ctypes.RTLD_GLOBAL)
    lib = ctypes.CDLL(str(library()))
    pointer, size = ctypes.c_void_p, ctypes.c_int64
    lib.bf16_round.argtypes = [pointer, pointer, size]
    lib.bf16_winograd_weights.argtypes = [pointer, pointer, size, size]
    lib.bf16_round.restype = lib.bf16_winograd_weights.restype = None
    return lib


def round_weights(array) -> np.ndarray:
    """:func:`to_bits` in the operator library with the CPU's conversion instruction: one multithreaded pass, no
    temporaries (a real-size UNet's 1.2 B values take seconds instead of the ~half minute of the numpy version).
    Equal to :func:`to_bits` except below ~1.2e-38 (subnormals), where the instruction rounds differently."""
    src = np.ascontiguousarray(array, dtype=np.float32)
    out = np.empty(src.shape, np.uint16)
    _host_library().bf16_round(src.ctypes.data, out.ctypes.data, src.size)
    return out


class _Ops:
    """The three operators; made once per process."""

    def __init__(self):
        _host_library()     # checks availability and makes MindSpore's oneDNN global first
        import mindspore as ms
        from mindspore import ops

        lib = str(library())
        f32 = ms.float32

        def mm_nn_shape(a, b):
            return [max(a[0], b[0]), a[1], b[2]]

        def mm_nt_shape(a, b):
            return [max(a[0], b[0]), a[1], b[1]]

        def winograd_shape(x, u, bias):
            return [x[0], u[1], x[2], x[3]]

        self.mm_nn = ops.Custom(f"{lib}:bf16_mm_nn", out_shape=mm_nn_shape, out_dtype=lambda a, b: f32,
                                func_type="aot")
        self.mm_nt = ops.Custom(f"{lib}:bf16_mm_nt", out_shape=mm_nt_shape, out_dtype=lambda a, b: f32,
                                func_type="aot")
        self.winograd3x3 = ops.Custom(f"{lib}:bf16_winograd3x3", out_shape=winograd_shape,
                                      out_dtype=lambda x, u, bias: f32, func_type="aot")


@functools.lru_cache(maxsize=None)
def ops() -> _Ops:
    """The operators: ``mm_nn(A, B)`` = A @ B and ``mm_nt(A, B)`` = A @ B^T on (batch, rows, cols) tensors
    (a batch of 1 broadcasts), ``winograd3x3(x, U, bias)`` a 3x3 convolution (stride 1, padding 1) of NCHW ``x``
    with the transformed weights of :func:`winograd_weights`. RuntimeError with the reason where unavailable."""
    return _Ops()


# Winograd F(2x2, 3x3): U = G g G^T per (out, in) channel pair, laid out (16, out, in). F(2x2) rather than the
# float32 path's F(4x4): F(4x4)'s larger transform coefficients multiply the error of bf16 operands (measured on
# the tiny UNet: rel-L2 8.7e-2 against 1.4e-2). Measured against a bf16 direct convolution (the 9 shifted copies
# of x times (out, 9 in) weights) at 4x4 to 96x96 maps with 384-1536 channels, batch 2, it was faster at all.
WINOGRAD_G = np.array([[1, 0, 0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0, 0, 1]], np.float32)


def winograd_weights(weight: np.ndarray) -> np.ndarray:
    """(out, in, 3, 3) float32 convolution weights -> (16, out, in) transformed weights G g G^T as bf16 bits
    (computed in the operator library)."""
    g = np.ascontiguousarray(weight, dtype=np.float32)
    co, ci = g.shape[:2]
    out = np.empty((16, co, ci), np.uint16)
    _host_library().bf16_winograd_weights(g.ctypes.data, out.ctypes.data, co, ci)
    return out
