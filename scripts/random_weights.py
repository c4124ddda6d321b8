"""Random weights for the real-size Kandinsky 2.1 networks, shared by scripts/bench.py and make_random_pipeline.py.

Nothing is downloaded: a network is built from its config and every parameter gets a random value by name, so
that activations keep a plausible scale through every layer (no overflow in float16, no vanishing signal):
norm scales 1, biases and other vectors 0, matrices and convolution kernels N(0, 1 / fan_in) unless a fixed
``std`` is asked for.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import numpy as np

# Files of a pipeline folder that are not weights: copied from a template pipeline (the tiny test fixture).
SUPPORT_FILES = ("model_index.json",)
SUPPORT_FOLDERS = ("tokenizer", "scheduler", "image_processor")


def random_array(rng: np.random.Generator, name: str, shape, std: Optional[float] = None) -> np.ndarray:
    """One float32 parameter: vectors are 1 (``*weight``: norm scales) or 0 (biases and the rest), with no
    draw from ``rng``; everything else is N(0, std**2), std defaulting to 1 / sqrt(fan_in)."""
    shape = tuple(int(s) for s in shape)
    if len(shape) <= 1:
        return (np.ones if name.endswith("weight") else np.zeros)(shape, np.float32)
    fan_in = int(np.prod(shape[1:]))
    scale = np.float32(fan_in ** -0.5 if std is None else std)
    return rng.standard_normal(shape, dtype=np.float32) * scale


def random_weights(cell, rng: np.random.Generator, std: Optional[float] = None) -> Iterator[Tuple[str, np.ndarray]]:
    """(checkpoint name, random array) for every parameter of ``cell``, in its parameter order, one at a time
    (a caller that sets them one by one never holds a second copy of a large network)."""
    for name, param in cell.parameters_and_names():
        yield name, random_array(rng, name, param.shape, std)


def copy_support_files(template: Path, dst: Path) -> None:
    """model_index.json and the tokenizer / scheduler / image_processor folders of a pipeline folder."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in SUPPORT_FILES:
        shutil.copy(template / name, dst / name)
    for sub in SUPPORT_FOLDERS:
        if (template / sub).is_dir():
            shutil.copytree(template / sub, dst / sub, dirs_exist_ok=True)


def write_component(folder: Path, config: dict, weights_name: str, tensors: Dict[str, np.ndarray]) -> None:
    """``folder/config.json`` and ``folder/<weights_name>.safetensors``, as diffusers and transformers lay them out."""
    from safetensors.numpy import save_file

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    save_file(tensors, str(folder / f"{weights_name}.safetensors"))
