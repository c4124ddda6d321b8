"""How much memory a decoder run will need, checked against what the machine has before any model loads.

The estimate is the decoder's weights (from the safetensors headers) plus the UNet's working memory, a function of
the latent pixels fitted to the peak RSS measured for the real Kandinsky 2.1 UNet in float32 with guidance (batch
2; 4.9 GB of it weights): 6.3 GB at 256x256, 7.1 GB at 512x512, 9.1 GB at 768x768 (docs/performance.md), plus a
fixed part for MindSpore, the MoVQ and the text encodings, and what the MoVQ decode adds after the UNet loop (the
whole command at 768x768 peaks at 12.7 GB). The working part scales with the batch and with the
UNet's first block width (384 in the real model). ``KANDINSKY_MEMORY_CHECK=0`` turns the check off.

The working part also grows with the rows of one UNet call, so a step whose batch (the guidance halves times the
images) does not fit in one call runs in several (:func:`unet_call_rows`), and a run is refused only when one row
per call does not fit.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import UserError

GB = 1024 ** 3
# The UNet's working memory (batch 2, 384-wide UNet, float32), in GiB: a fixed part, a part per megapixel of the
# working size, and the attention at the 1/16 scale (12 heads): its scores and softmax (~2.5x the scores, measured on
# one such layer) grow with the square of the pixels. Fitted to 0.95 / 1.78 / 3.71 GB measured above the weights and
# the process at 256 / 512 / 768.
_FIXED_GB = 0.69
_LINEAR_GB_PER_MP = 2.67
_QUADRATIC_GB_PER_MP2 = 3.41
_RUNTIME_GB = 1.4          # MindSpore, the MoVQ's activations, the text encodings
# What the MoVQ decode after the UNet loop adds (one image, 128-wide MoVQ), in GiB per megapixel: the decoder process
# does not give back the UNet's working memory, and the compiled decode needs its own on top. Measured as the whole
# command's peak at 768x768 (empty compile cache) over the UNet step's alone: 12.7 GB against 9.1 GB.
_MOVQ_DECODE_GB_PER_MP = 4.3
_MOVQ_REFERENCE_WIDTH = 128
_REFERENCE_WIDTH = 384
_REFERENCE_BATCH = 2


def available_bytes() -> Optional[int]:
    """Memory this process can still use: MemAvailable, or the cgroup's limit minus its usage when lower."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        usage = Path("/sys/fs/cgroup/memory.current").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(usage))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


def weight_count(component_dir: Path) -> int:
    """The number of weight values of a component, from its safetensors headers (diffusers or transformers names)."""
    from . import model_io

    component_dir = Path(component_dir)
    base = model_io.DIFFUSERS_WEIGHTS if list(component_dir.glob(f"{model_io.DIFFUSERS_WEIGHTS}*")) \
        else model_io.TRANSFORMERS_WEIGHTS
    count = 0
    for shape in model_io.safetensors_shapes(model_io.weight_files(component_dir, base)).values():
        n = 1
        for d in shape:
            n *= int(d)
        count += n
    return count


def weight_bytes(component_dir: Path, bytes_per_value: int = 4) -> int:
    return weight_count(component_dir) * bytes_per_value


def _peak_for_rows(root: Path, height: int, width: int, dtype: str, loaded: bool):
    """:func:`decoder_peak_bytes` as a function of the rows per call: the folder's headers and configs read once."""
    from . import model_io
    from .movq import vq_arguments
    from .unet import resolve_config

    root = Path(root)
    value_bytes = 2 if dtype == "float16" else 4
    weights = 0 if loaded else sum(weight_bytes(root / part, value_bytes) for part in ("unet", "movq"))
    channels = resolve_config(model_io.read_config(root / "unet"))["block_out_channels"]
    mp = height * width / 1e6
    movq_width = vq_arguments(model_io.read_config(root / "movq"))["block_out_channels"][0]
    decode = _MOVQ_DECODE_GB_PER_MP * mp * (movq_width / _MOVQ_REFERENCE_WIDTH) * GB

    def peak(rows: int) -> int:
        scale = (rows / _REFERENCE_BATCH) * (float(channels[0]) / _REFERENCE_WIDTH)
        working = scale * (_FIXED_GB + _LINEAR_GB_PER_MP * mp + _QUADRATIC_GB_PER_MP2 * mp * mp) * GB
        return int(weights + working + decode + _RUNTIME_GB * GB)

    return peak


def decoder_peak_bytes(root: Path, height: int, width: int, rows: int, dtype: str = "float32",
                       loaded: bool = False) -> int:
    """Estimated peak memory of a decoder run at ``height`` x ``width`` with UNet calls of ``rows`` rows; with
    ``loaded`` the weights are in the process already (not counted again)."""
    return _peak_for_rows(root, height, width, dtype, loaded)(rows)


def equal_call_sizes(batch: int) -> list:
    """The rows per call that cut ``batch`` rows into equal calls (one compiled shape), largest first: the
    divisors of ``batch``."""
    return [d for d in range(batch, 0, -1) if batch % d == 0]


def unet_call_rows(root: Path, height: int, width: int, batch: int, dtype: str = "float32",
                   loaded: bool = False) -> int:
    """How many of a step's ``batch`` UNet rows (x2 with guidance) one UNet call takes: all of them when the run fits
    in the available memory, else the largest divisor of ``batch`` that fits (equal calls: one compiled shape). A
    UserError with the estimate and the limit when not even one row per call fits. ``loaded``: the decoder's
    weights are in the process already (a warm server)."""
    if os.environ.get("KANDINSKY_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "no", "off"):
        return batch
    available = available_bytes()
    if available is None:
        return batch
    peak = _peak_for_rows(root, height, width, dtype, loaded)
    for rows in equal_call_sizes(batch):
        if peak(rows) <= available:
            return rows
    need = peak(1)
    raise UserError(f"a {width}x{height} run needs about {need / GB:.1f} GB but {available / GB:.1f} GB are "
                    f"available: use a smaller size (--height/--width), or set KANDINSKY_MEMORY_CHECK=0 to try anyway")
