"""How much memory a decoder run will need, checked against what the machine has before any model loads.

The estimate is the decoder's weights (from the safetensors headers) plus the UNet's working memory, a function of
the latent pixels fitted to the peak RSS measured for the real Kandinsky 2.1 UNet in float32 with guidance (batch
2): 6.6 GB at 256x256, 8.4 GB at 512x512, 13.7 GB at 768x768 (docs/performance.md). The working part scales with
the batch and with the UNet's first block width (384 in the real model); the quadratic term is attention, whose
score matrices grow with the square of the number of latent pixels. ``KANDINSKY_MEMORY_CHECK=0`` turns the check off.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from .errors import UserError

GB = 1024 ** 3
# Fitted working memory per megapixel of the working size (batch 2, 384-wide UNet, float32).
_LINEAR_GB_PER_MP = 4.78
_QUADRATIC_GB_PER_MP2 = 13.36
_RUNTIME_GB = 1.4          # MindSpore, the MoVQ's activations, the text encodings
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


def decoder_peak_bytes(root: Path, height: int, width: int, batch: int, dtype: str = "float32") -> int:
    """Estimated peak memory of a decoder run at ``height`` x ``width`` with ``batch`` UNet rows (x2 with guidance)."""
    from . import model_io

    root = Path(root)
    value_bytes = 2 if dtype == "float16" else 4
    weights = sum(weight_bytes(root / part, value_bytes) for part in ("unet", "movq"))
    from .unet import resolve_config

    channels = resolve_config(model_io.read_config(root / "unet"))["block_out_channels"]
    scale = (batch / _REFERENCE_BATCH) * (float(channels[0]) / _REFERENCE_WIDTH)
    mp = height * width / 1e6
    working = scale * (_LINEAR_GB_PER_MP * mp + _QUADRATIC_GB_PER_MP2 * mp * mp) * GB
    return int(weights + working + _RUNTIME_GB * GB)


def check_decoder_fits(root: Path, height: int, width: int, batch: int, dtype: str = "float32") -> None:
    """A UserError with the estimate and the limit when a decoder run would not fit in the available memory."""
    if os.environ.get("KANDINSKY_MEMORY_CHECK", "1").strip().lower() in ("0", "false", "no", "off"):
        return
    available = available_bytes()
    if available is None:
        return
    need = decoder_peak_bytes(root, height, width, batch, dtype)
    if need > available:
        raise UserError(f"a {width}x{height} run of {batch} UNet row(s) needs about {need / GB:.1f} GB but "
                        f"{available / GB:.1f} GB are available: use a smaller size (--height/--width), fewer "
                        f"--num-images, or set KANDINSKY_MEMORY_CHECK=0 to try anyway")
