"""The one mask module: rectangles, mask files, invert, grow, feather and pasting the result back.

Convention (as in diffusers >= 0.19): **white / 1 / True = repaint, black / 0 / False = keep**.

A mask is built at the size of the input image, in this order:

1. the union of the mask file (``--mask``) and every rectangle (``--mask-rect``);
2. ``--invert-mask`` flips it;
3. ``--grow N`` dilates the repaint area by a disc of radius N pixels (Euclidean distance <= N);
4. it must select at least one pixel.

That boolean (H, W) array is the *hard* mask the model sees. ``--feather N`` only changes how the
generated image is blended back into the original: :func:`feather_weights` gives weights that are 1 on
the hard mask, fall off along a Gaussian ramp over the N pixels just outside it, and are exactly 0
further away, where :func:`paste_back` keeps the original pixels bit for bit.

A rectangle is ``ROWS,COLS`` in Python slice syntax, rows first, in pixel coordinates of the image:
``0:250,250:518``, ``:250,250:-250`` (negative counts from the end, an empty bound is the edge). Its
meaning is exactly ``mask[ROWS, COLS] = 1`` on a numpy array of the image's size.

Mask files: PNG/JPEG/WebP (L or RGB: luminance; RGBA/LA or a transparent palette: the alpha channel, so
opaque = repaint) or ``.npy`` (H, W) with values in [0, 1]. Values >= 0.5 (128 of 255) repaint. A mask
of another size than the image is resized to it (nearest) with a :class:`MaskWarning`.
"""
from __future__ import annotations

import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from .errors import InputError, UserError, about
from .files import ImageLike, PathLike, open_image, save_npy, save_png, to_pil

SizeHW = Tuple[int, int]

#: Largest side accepted by :func:`parse_size`.
MAX_SIDE = 16384
#: Extensions :func:`save_mask` writes.
MASK_OUTPUT_SUFFIXES = (".png", ".npy")

_BOUND = r"\s*([+-]?\d+)?\s*"
_SLICE_RE = re.compile(rf"^{_BOUND}:{_BOUND}$")
_SIZE_RE = re.compile(r"^\s*(\d+)\s*[xX]\s*(\d+)\s*$")


class MaskWarning(UserWarning):
    """Something about a mask the user should know but that is not an error (e.g. it was resized)."""


# ------------------------------------------------------------------------------------------ sizes

def parse_size(text: str) -> SizeHW:
    """``'WIDTHxHEIGHT'`` (e.g. ``'768x512'``) -> ``(height, width)``; each side 1..16384."""
    m = _SIZE_RE.match(text)
    if not m:
        raise UserError(f"malformed size {text!r}: expected WIDTHxHEIGHT such as 768x768")
    width, height = int(m.group(1)), int(m.group(2))
    if not (1 <= width <= MAX_SIDE and 1 <= height <= MAX_SIDE):
        raise UserError(f"bad size {text!r}: width and height must be between 1 and {MAX_SIDE}")
    return height, width


def format_size(size_hw: SizeHW) -> str:
    """``(height, width)`` -> ``'WIDTHxHEIGHT'``."""
    return f"{size_hw[1]}x{size_hw[0]}"


# ------------------------------------------------------------------------------------------ rectangles

@dataclass(frozen=True)
class Rect:
    """A parsed ``ROWS,COLS`` rectangle: two slices with step 1, applied as ``mask[rows, cols]``."""

    text: str
    rows: slice
    cols: slice


def _parse_slice(part: str) -> Optional[slice]:
    m = _SLICE_RE.match(part)
    if not m:
        return None
    start, stop = (int(g) if g is not None else None for g in m.groups())
    return slice(start, stop)


def parse_rect(text: str) -> Rect:
    """Parse ``'ROWS,COLS'`` such as ``'0:250,250:518'`` or ``':250,-100:'`` (size-independent check)."""
    if not isinstance(text, str):
        raise UserError(f"malformed rectangle {text!r}: expected a string ROWS,COLS such as 0:250,250:518")
    parts = text.split(",")
    slices = [_parse_slice(p) for p in parts] if len(parts) == 2 else [None]
    if any(s is None for s in slices):
        raise UserError(f"malformed rectangle {text!r}: expected ROWS,COLS in Python slice syntax, "
                        f"rows first, such as 0:250,250:518 or :250,-100:")
    return Rect(text=text.strip(), rows=slices[0], cols=slices[1])


def _empty_reason(s: slice, size: int, axis: str) -> str:
    """Why ``range(size)[s]`` is empty: the bounds lie outside the image, or they are in the wrong order."""
    start = 0 if s.start is None else s.start + (size if s.start < 0 else 0)
    stop = size if s.stop is None else s.stop + (size if s.stop < 0 else 0)
    bounds = f"{'' if s.start is None else s.start}:{'' if s.stop is None else s.stop}"
    extent = "height" if axis == "rows" else "width"
    if start >= size or stop <= 0:
        return f"{axis} {bounds} lie outside the image ({extent} {size})"
    return f"{axis} {bounds} select nothing ({extent} {size}: the range is empty)"


def rect_mask(rect: Union[Rect, str], size_hw: SizeHW) -> np.ndarray:
    """The boolean mask of one rectangle: exactly ``mask[rows, cols] = True``; UserError if it is empty."""
    if isinstance(rect, str):
        rect = parse_rect(rect)
    height, width = size_hw
    for s, size, axis in ((rect.rows, height, "rows"), (rect.cols, width, "cols")):
        if len(range(size)[s]) == 0:
            raise UserError(f"rectangle {rect.text!r} selects no pixel of the "
                            f"{format_size(size_hw)} image: {_empty_reason(s, size, axis)}")
    mask = np.zeros(size_hw, dtype=bool)
    mask[rect.rows, rect.cols] = True
    return mask


# ------------------------------------------------------------------------------------------ mask files

def read_mask_file(path: PathLike) -> np.ndarray:
    """A mask file as float32 (H, W) in [0, 1], at its own size (1 = repaint).

    Images: L/RGB -> luminance, RGBA/LA (or a palette with transparency) -> alpha, 16-bit -> /65535.
    ``.npy``: a 2-D array of numbers (or bools) in [0, 1]. Anything else raises a UserError.
    """
    p = Path(path)
    if p.suffix.lower() == ".npy":
        return _read_npy_mask(p)
    image = open_image(p, "mask")
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        image = image.getchannel("A")
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N"):
        return np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
    if image.mode != "L":
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32) / 255.0


def _read_npy_mask(p: Path) -> np.ndarray:
    if not p.exists():
        raise UserError(f"mask not found: {p}")
    try:
        array = np.load(p, allow_pickle=False)
    except (OSError, ValueError, EOFError) as e:
        raise UserError(f"cannot read mask {p}: not a valid .npy array ({e})") from None
    if not isinstance(array, np.ndarray):  # an .npz archive
        array.close()
        raise UserError(f"cannot read mask {p}: an .npz archive, not a single .npy array")
    if array.ndim != 2 or array.size == 0:
        raise UserError(f"mask {p} has shape {array.shape}: expected a 2-D (height, width) array")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise UserError(f"mask {p} has dtype {array.dtype}: expected floats in [0, 1]")
    array = array.astype(np.float32)
    if not np.isfinite(array).all():
        raise UserError(f"mask {p} contains NaN or infinite values: expected floats in [0, 1]")
    if array.min() < 0 or array.max() > 1:
        raise UserError(f"mask {p} has values outside [0, 1] (min {array.min():g}, max {array.max():g})")
    return array


def resize_mask(mask: np.ndarray, size_hw: SizeHW) -> np.ndarray:
    """Nearest-neighbour resize of a boolean mask to ``(height, width)`` (Pillow)."""
    if mask.shape == tuple(size_hw):
        return mask.copy()
    image = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    resized = image.resize((size_hw[1], size_hw[0]), Image.Resampling.NEAREST)
    return np.asarray(resized) >= 128


def load_mask_file(path: PathLike, size_hw: SizeHW) -> np.ndarray:
    """A mask file as a boolean (H, W) mask at the image size: values >= 0.5 repaint.

    A file of another size is resized (nearest) with a :class:`MaskWarning`.
    """
    mask = read_mask_file(path) >= 0.5
    if mask.shape != tuple(size_hw):
        warnings.warn(MaskWarning(
            f"mask {path} is {format_size(mask.shape)} but the image is {format_size(size_hw)}: "
            f"resized to the image (nearest neighbour)"), stacklevel=2)
        mask = resize_mask(mask, size_hw)
    return mask


# ------------------------------------------------------------------------------------------ grow / feather

def _squared_radius(radius: float, shape: SizeHW) -> int:
    """The largest squared integer offset ``dx^2 + dy^2`` within Euclidean ``radius``: ``floor(radius^2)``.

    The radius is capped at the image diagonal first (beyond it nothing changes).
    """
    radius = min(float(radius), math.hypot(*shape))
    return int(radius * radius) if radius > 0 else 0


def _fills_image(mask: np.ndarray, r2: int) -> bool:
    """True if every pixel lies within ``sqrt(r2)`` of some set pixel, judged from one set pixel alone.

    The farthest pixel from a point of a rectangle is one of its corners; if all four corners are within
    reach of one set pixel, so is every pixel. Saves the distance transform for radii as large as the image.
    """
    y, x = np.unravel_index(np.argmax(mask), mask.shape)
    far_y, far_x = max(y, mask.shape[0] - 1 - y), max(x, mask.shape[1] - 1 - x)
    return int(far_y) ** 2 + int(far_x) ** 2 <= r2


def _bounding_window(mask: np.ndarray, margin: int) -> Tuple[slice, slice]:
    """The rows and columns of the set pixels' bounding box grown by ``margin``, clipped to the image."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    height, width = mask.shape
    return (slice(max(rows[0] - margin, 0), min(rows[-1] + margin + 1, height)),
            slice(max(cols[0] - margin, 0), min(cols[-1] + margin + 1, width)))


def _squared_distances(mask: np.ndarray) -> np.ndarray:
    """The exact squared Euclidean distance (integers) from every pixel to the nearest set pixel.

    SciPy's exact distance transform gives the nearest set pixel's coordinates; the squared distance is
    computed from them in integers, so that comparing it with ``floor(radius^2)`` has no rounding.
    """
    from scipy import ndimage  # imported on first use: it costs ~0.3 s

    nearest = ndimage.distance_transform_edt(~mask, return_distances=False, return_indices=True)
    dtype = np.int32 if max(mask.shape) <= 32767 else np.int64  # 2 * 32767^2 < 2^31
    # in int32 these are views into SciPy's index array, reused in place to bound the memory
    rows, cols = (axis.astype(dtype, copy=False) for axis in nearest)
    rows -= np.arange(mask.shape[0], dtype=dtype)[:, None]
    cols -= np.arange(mask.shape[1], dtype=dtype)[None, :]
    np.square(rows, out=rows)
    np.square(cols, out=cols)
    rows += cols
    return rows


def _within(mask: np.ndarray, radii: Sequence[float]) -> List[np.ndarray]:
    """For each radius, the pixels within Euclidean distance ``radius`` of a set pixel of ``mask``.

    One distance transform serves every radius. A radius that reaches every pixel of the image needs
    none; for the others it runs on the set pixels' bounding box grown by the largest of them, which
    holds every pixel that can be in reach.
    """
    r2s = [_squared_radius(radius, mask.shape) for radius in radii]
    if not mask.any():
        return [mask.copy() for _ in r2s]
    fills = [_fills_image(mask, r2) for r2 in r2s]
    if all(fills):
        return [np.ones_like(mask) for _ in r2s]
    window = _bounding_window(mask, math.isqrt(max(r2 for r2, full in zip(r2s, fills) if not full)))
    distances = _squared_distances(mask[window])
    grown = []
    for r2, full in zip(r2s, fills):
        out = np.ones_like(mask) if full else np.zeros_like(mask)
        if not full:
            out[window] = distances <= r2
        grown.append(out)
    return grown


def dilate(mask: np.ndarray, radius: float) -> np.ndarray:
    """Grow a boolean mask by a disc: a pixel is set if some set pixel lies within Euclidean ``radius``.

    Exact (integer offsets with ``dx^2 + dy^2 <= radius^2``) and, through a distance transform, at a
    cost that does not depend on the radius.
    """
    return _within(np.asarray(mask, dtype=bool), [radius])[0]


def feather_weights(mask: np.ndarray, feather: float) -> np.ndarray:
    """Blend weights (float32 (H, W) in [0, 1]) for pasting the generated image back.

    ``feather == 0``: the hard mask as 0/1. Otherwise (``feather`` capped at the image diagonal) the mask
    is grown by ``feather / 2`` and blurred with a Gaussian of sigma ``feather / 6`` (Pillow), so the
    weight ramps from ~1 at the mask's edge to ~0 at ``feather`` pixels from it; then the weight is forced
    to exactly 1 on the mask and exactly 0 farther than ``feather`` pixels from it. The cost does not
    depend on ``feather``: one distance transform (see :func:`dilate`) and Pillow's box-blur Gaussian.
    """
    mask = np.asarray(mask, dtype=bool)
    if feather <= 0:
        return mask.astype(np.float32)
    feather = min(float(feather), math.hypot(*mask.shape))
    core, reach = _within(mask, [feather / 2, feather])
    core_image = Image.fromarray(core.view(np.uint8) * 255, "L")
    weights = np.asarray(core_image.filter(ImageFilter.GaussianBlur(feather / 6)), dtype=np.float32) / 255.0
    weights[~reach] = 0.0
    weights[mask] = 1.0
    return weights


def paste_back(original: ImageLike, generated: ImageLike, weights: np.ndarray) -> np.ndarray:
    """Blend ``generated`` into ``original`` (both uint8 RGB) with per-pixel ``weights`` (H, W).

    Where a weight is 0 the output is the original pixel bit for bit, where it is 1 the generated pixel;
    in between ``round(original + w * (generated - original))``. A generated image of another size is
    first resized to the original's (Pillow, bicubic) -- the model works at its own resolution.
    """
    orig = np.asarray(original, dtype=np.uint8)
    height, width = orig.shape[:2]
    gen_image = to_pil(generated)
    if gen_image.size != (width, height):
        gen_image = gen_image.resize((width, height), Image.Resampling.BICUBIC)
    gen = np.asarray(gen_image.convert("RGB" if orig.ndim == 3 else "L"), dtype=np.uint8)
    w = np.asarray(weights, dtype=np.float32)
    if w.shape != (height, width):
        raise ValueError(f"weights of shape {w.shape} for an image of shape {orig.shape}")
    if orig.ndim == 3:
        w = w[:, :, None]
    mixed = np.rint(orig + w * (gen.astype(np.float32) - orig)).clip(0, 255).astype(np.uint8)
    return np.where(w <= 0, orig, np.where(w >= 1, gen, mixed))


# ------------------------------------------------------------------------------------------ the whole mask

def build_mask(size_hw: SizeHW, mask_path: Optional[PathLike] = None, rects: Iterable[Union[str, Rect]] = (),
               invert: bool = False, grow: int = 0) -> np.ndarray:
    """The hard mask (bool (H, W), True = repaint) that inpainting uses: file | rects, invert, grow.

    Raises a UserError for a bad rectangle or mask file, or when the result selects no pixel.
    """
    rects = list(rects)
    if grow < 0:
        raise UserError(f"bad grow {grow}: must be >= 0")
    mask = np.zeros(size_hw, dtype=bool)
    if mask_path is not None:
        with about("mask"):
            mask |= load_mask_file(mask_path, size_hw)
    for i, rect in enumerate(rects):
        with about(f"mask_rects[{i}]"):
            mask |= rect_mask(rect, size_hw)
    if invert:
        mask = ~mask
    if not mask.any():
        what = "the inverted mask" if invert else f"mask {mask_path}" if mask_path is not None else "the mask"
        hint = " (it covered the whole image)" if invert else " (it is all black; white = repaint)"
        raise InputError("invert_mask" if invert else "mask", f"{what} selects no pixel: nothing to repaint{hint}")
    return dilate(mask, grow) if grow else mask


@dataclass(frozen=True)
class MaskSpec:
    """Everything the user said about the mask (``--mask``, ``--mask-rect``, ``--invert-mask``, ``--grow``,
    ``--feather``, or the same keys of a batch job). Creating one checks what can be checked without the
    image: rectangle syntax and non-negative numbers. :meth:`build` makes the mask at an image's size.
    """

    path: Optional[Path] = None
    rects: Tuple[str, ...] = ()
    invert: bool = False
    grow: int = 0
    feather: int = 0
    parsed_rects: Tuple[Rect, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rects", tuple(self.rects))
        object.__setattr__(self, "parsed_rects", tuple(parse_rect(r) for r in self.rects))
        if self.path is not None:
            object.__setattr__(self, "path", Path(self.path))
        for name in ("grow", "feather"):
            if getattr(self, name) < 0:
                raise UserError(f"bad {name} {getattr(self, name)}: must be >= 0")

    @classmethod
    def from_options(cls, mask: Optional[PathLike] = None, mask_rect: Optional[Sequence[str]] = None,
                     invert_mask: bool = False, grow: int = 0, feather: int = 0) -> "MaskSpec":
        """From the CLI options ``--mask``, ``--mask-rect`` (list), ``--invert-mask``, ``--grow``, ``--feather``."""
        return cls(path=Path(mask) if mask is not None else None, rects=tuple(mask_rect or ()),
                   invert=invert_mask, grow=grow, feather=feather)

    def build(self, size_hw: SizeHW) -> np.ndarray:
        """The hard mask the model sees (bool (H, W), True = repaint)."""
        return build_mask(size_hw, self.path, self.parsed_rects, self.invert, self.grow)

    def parameters(self) -> dict:
        """The spec as JSON-able parameters (for PNG metadata)."""
        return {"mask": str(self.path) if self.path is not None else None, "mask_rects": list(self.rects),
                "invert_mask": self.invert, "grow": self.grow, "feather": self.feather}


# ------------------------------------------------------------------------------------------ writing

def mask_to_image(mask: np.ndarray) -> Image.Image:
    """A boolean mask as an 8-bit grey image: white (255) = repaint, black (0) = keep."""
    return Image.fromarray(np.asarray(mask, dtype=bool).astype(np.uint8) * 255, "L")


def save_mask(path: PathLike, mask: np.ndarray, metadata: Optional[dict] = None) -> Path:
    """Write a mask by extension: ``.png`` (white = repaint, with metadata) or ``.npy`` (float32 0/1)."""
    check_mask_output(path)
    if Path(path).suffix.lower() == ".npy":
        return save_npy(path, np.asarray(mask, dtype=np.float32))
    return save_png(path, mask_to_image(mask), metadata)


def check_mask_output(path: PathLike) -> None:
    """UserError unless ``path`` ends in .png or .npy (checked before any work is done)."""
    if Path(path).suffix.lower() not in MASK_OUTPUT_SUFFIXES:
        raise UserError(f"cannot write mask {path}: the file name must end in .png or .npy")
