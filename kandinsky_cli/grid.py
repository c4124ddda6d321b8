"""A grid of images, like diffusers' ``make_image_grid``: for comparing inputs, masks and results.

Cells have the size of the first image (the others are resized to it with Pillow's Lanczos filter) and
are filled row-major; cells without an image stay black. Inputs are PNG/JPEG/WebP images or masks
(a ``.png``, or a float ``.npy`` (H, W) in [0, 1], shown as grey levels).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from .errors import UserError
from .files import PathLike, load_image
from .masks import read_mask_file


def load_grid_input(path: PathLike) -> Image.Image:
    """An image file as RGB, or a ``.npy`` mask as grey RGB (0 -> black, 1 -> white)."""
    if Path(path).suffix.lower() == ".npy":
        grey = np.rint(read_mask_file(path) * 255).astype(np.uint8)
        return Image.fromarray(grey, "L").convert("RGB")
    return load_image(path)


def grid_shape(count: int, rows: int, cols: Optional[int] = None) -> Tuple[int, int]:
    """``(rows, cols)`` for ``count`` images; ``cols`` defaults to ``ceil(count / rows)``."""
    if rows < 1 or (cols is not None and cols < 1):
        raise UserError(f"bad grid {rows}x{cols}: rows and cols must be >= 1")
    if count < 1:
        raise UserError("no images for the grid")
    cols = math.ceil(count / rows) if cols is None else cols
    if count > rows * cols:
        raise UserError(f"{count} images do not fit in a grid of {rows} rows x {cols} cols "
                        f"({rows * cols} cells)")
    return rows, cols


def make_image_grid(images: Sequence[Image.Image], rows: int, cols: Optional[int] = None) -> Image.Image:
    """Paste ``images`` row-major into a ``rows x cols`` grid of cells the size of the first image."""
    rows, cols = grid_shape(len(images), rows, cols)
    width, height = images[0].size
    grid = Image.new("RGB", (cols * width, rows * height))
    for i, image in enumerate(images):
        if image.size != (width, height):
            image = image.resize((width, height), Image.Resampling.LANCZOS)
        grid.paste(image.convert("RGB"), (i % cols * width, i // cols * height))
    return grid
