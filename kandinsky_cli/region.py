"""The geometry of a run on a real photo: the working size, the region that is inpainted, the outpainting canvas.

Pure numpy and Pillow, no model. Sizes are ``(width, height)`` pairs; boxes are integer pixel boxes
``(x0, y0, x1, y1)`` with ``x1`` and ``y1`` exclusive (Pillow's ``crop`` order), so a box covers
``array[y0:y1, x0:x1]``.

**Working size** (``--resolution R``, without ``--height``/``--width``): the size the model runs at keeps the
aspect ratio ``a`` of what is inpainted (the image, or the region box) with an area close to ``R x R`` and both
sides multiples of 64. ``a`` is first capped to ``[64^2 / R^2, R^2 / 64^2]`` so that neither ideal side falls
below 64. The ideal sides ``sqrt(R^2 a)`` and ``sqrt(R^2 / a)`` are each rounded down and up to multiples of 64
(at least 64); of those (up to four) pairs, the ones with an area of at most ``(1 + AREA_TOLERANCE) R^2`` are
kept and the one whose aspect is nearest ``a`` (smallest ``|ln(W / H / a)|``) wins, ties going to the area
nearest ``R^2``. Both sides rounded down is always allowed, so there is always an answer. A square input gives
``R x R`` when ``R`` is a multiple of 64 (768x768 by default).

**Region** (``--region full|mask``, ``--region-padding N``): ``full`` inpaints the whole canvas, as before.
``mask`` inpaints a box around the final mask: the bounding box of its set pixels grown by
``max(N, feather)`` pixels on each side (so a feather ramp is never cut off by the box edge) and intersected
with the image; that box's size gives the working size (above), unless ``--height``/``--width`` fix it. The box
is then widened along one axis, around its centre, to the working aspect ratio (the widened side is rounded
up, so the aspect matches up to one pixel), and shifted to lie inside the image. Where the image is too small
for the widened side, that side is the image's whole width (or height) and the crop is resized with a
correspondingly small distortion. The box is cropped exactly (no resampling: the pipeline resizes its input
to the working size as always), inpainted, and the result is pasted back into the box only.

**Extend** (``--extend top=N,right=N,bottom=N,left=N``): the canvas grows by those margins. The new pixels are
added to the mask (with no other mask they are the mask) and start from a fill (:data:`FILLS`; edge
replication by default) that the model repaints completely, since the margins are repainted with weight 1;
the original pixels keep their values bit for bit outside the user's own (feathered) mask.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Mapping, Optional, Tuple, Union

import numpy as np
from PIL import Image, ImageFilter

from .errors import UserError
from .files import check_pixels
from .masks import MAX_SIDE, paste_back

SizeWH = Tuple[int, int]
Box = Tuple[int, int, int, int]

SIDES = ("top", "right", "bottom", "left")
REGIONS = ("full", "mask")                          # --region
FILLS = ("edge", "blur", "mean", "noise")           # --extend-fill
DEFAULT_RESOLUTION = 768
DEFAULT_PADDING = 32
SIZE_MULTIPLE = 64
#: A working size may exceed R x R by this fraction (memory grows with the area).
AREA_TOLERANCE = 0.05

_EXTEND_SYNTAX = "expected SIDE=N[,SIDE=N...] with sides top, right, bottom, left and N >= 0 pixels, e.g. left=256"
_PIXELS_RE = re.compile(r"^\s*[0-9]+\s*$")


def _is_int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


# ------------------------------------------------------------------------------------------ checks

def check_resolution(resolution: int) -> None:
    if not _is_int(resolution) or not SIZE_MULTIPLE <= resolution <= MAX_SIDE:
        raise UserError(f"bad resolution {resolution!r}: must be a whole number of pixels "
                        f"from {SIZE_MULTIPLE} to {MAX_SIDE}")


def check_options(region: str, padding: int, resolution: int) -> None:
    """UserError for a bad ``--region``, ``--region-padding`` or ``--resolution`` (checkable before any work)."""
    if region not in REGIONS:
        raise UserError(f"bad region {region!r}: use full (the whole image) or mask (a box around the mask)")
    if not _is_int(padding) or padding < 0:
        raise UserError(f"bad region padding {padding!r}: must be a whole number of pixels >= 0")
    check_resolution(resolution)


# ------------------------------------------------------------------------------------------ working size

def _multiples_around(x: float, multiple: int) -> Tuple[int, ...]:
    """The multiples of ``multiple`` just below and just above ``x``, at least ``multiple``."""
    return tuple(sorted({max(multiple, math.floor(x / multiple) * multiple),
                         max(multiple, math.ceil(x / multiple) * multiple)}))


def working_size(width: int, height: int, resolution: int = DEFAULT_RESOLUTION,
                 multiple: int = SIZE_MULTIPLE) -> SizeWH:
    """The aspect-true working size ``(W, H)`` for a ``width x height`` input (see the module docstring)."""
    check_resolution(resolution)
    if width <= 0 or height <= 0:
        raise ValueError(f"no working size for a {width}x{height} input")
    area = resolution * resolution
    aspect = min(max(width / height, multiple * multiple / area), area / (multiple * multiple))
    pairs = [(w, h) for w in _multiples_around(math.sqrt(area * aspect), multiple)
             for h in _multiples_around(math.sqrt(area / aspect), multiple)
             if w * h <= area * (1 + AREA_TOLERANCE)]
    return min(pairs, key=lambda wh: (abs(math.log(wh[0] / wh[1] / aspect)), abs(wh[0] * wh[1] - area)))


# ------------------------------------------------------------------------------------------ region box

def mask_bbox(mask: np.ndarray) -> Box:
    """The bounding box of the set pixels of a (H, W) mask; UserError if none is set."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        raise UserError("the mask selects no pixel: nothing to repaint")
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


def padded_box(mask: np.ndarray, padding: int) -> Box:
    """The mask's bounding box grown by ``padding`` on each side, intersected with the image."""
    height, width = np.shape(mask)
    x0, y0, x1, y1 = mask_bbox(mask)
    return max(x0 - padding, 0), max(y0 - padding, 0), min(x1 + padding, width), min(y1 + padding, height)


def _grow(start: int, stop: int, size: int, limit: int) -> Tuple[int, int]:
    """``[start, stop)`` grown to ``size`` around its centre, then shifted to lie inside ``[0, limit)``."""
    start -= (size - (stop - start)) // 2
    start = min(max(start, 0), limit - size)
    return start, start + size


def widen_to_aspect(box: Box, aspect_wh: SizeWH, image_size: SizeWH) -> Box:
    """``box`` widened along one axis to the aspect ``aspect_wh[0] : aspect_wh[1]`` (the new side rounded up),
    shifted inside the image, and clamped to the image's side where it is too small."""
    x0, y0, x1, y1 = box
    (aw, ah), (width, height) = aspect_wh, image_size
    if (x1 - x0) * ah < (y1 - y0) * aw:   # too narrow: widen
        x0, x1 = _grow(x0, x1, min(-(-(y1 - y0) * aw // ah), width), width)
    else:                                 # too flat (or exact): heighten
        y0, y1 = _grow(y0, y1, min(-(-(x1 - x0) * ah // aw), height), height)
    return x0, y0, x1, y1


def region_box(mask: np.ndarray, padding: int, aspect_wh: SizeWH) -> Box:
    """The region of a mask: its padded box widened to ``aspect_wh`` (e.g. the working size) inside the image."""
    height, width = np.shape(mask)
    return widen_to_aspect(padded_box(mask, padding), aspect_wh, (width, height))


# ------------------------------------------------------------------------------------------ the plan

@dataclass(frozen=True)
class Plan:
    """Where and at which size one inpainting run works on a canvas (the image, extended if asked)."""

    image_size: SizeWH
    working_size: SizeWH
    region: str
    region_box: Box
    resolution: int = DEFAULT_RESOLUTION
    region_padding: int = DEFAULT_PADDING
    extend: Optional["Extend"] = None

    def _slices(self) -> Tuple[slice, slice]:
        x0, y0, x1, y1 = self.region_box
        return slice(y0, y1), slice(x0, x1)

    def _check_size(self, size_wh: SizeWH, what: str) -> None:
        if tuple(size_wh) != tuple(self.image_size):
            raise ValueError(f"{what} is {size_wh[0]}x{size_wh[1]} but the plan is for "
                             f"{self.image_size[0]}x{self.image_size[1]}")

    def crop(self, image: Image.Image, mask: np.ndarray) -> Tuple[Image.Image, np.ndarray]:
        """The pipeline's input: the region box cut out of the canvas and of the final mask, no resampling."""
        self._check_size(image.size, "the image")
        mask = np.asarray(mask, dtype=bool)
        self._check_size(mask.shape[::-1], "the mask")
        return image.crop(self.region_box), mask[self._slices()].copy()

    def compose(self, original: np.ndarray, generated: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """The output canvas: ``generated`` (uint8, any size) pasted into the region box of ``original`` (uint8
        (H, W, 3)) by :func:`masks.paste_back` with the box's part of ``weights`` (H, W) -- which resizes it to
        the box (bicubic, as the full-image paste always did). Outside the box the original, bit for bit."""
        original = np.asarray(original, dtype=np.uint8)
        weights = np.asarray(weights, dtype=np.float32)
        self._check_size(original.shape[1::-1], "the original")
        self._check_size(weights.shape[::-1], "the blend weights")
        inside = self._slices()
        if np.count_nonzero(weights) != np.count_nonzero(weights[inside]):
            raise ValueError(f"blend weights reach outside the region box {self.region_box}: plan with the feather")
        out = original.copy()
        out[inside] = paste_back(original[inside], generated, weights[inside])
        return out

    def parameters(self) -> dict:
        """The plan as JSON-able parameters (for PNG metadata)."""
        return {"working_size": list(self.working_size), "region": self.region,
                "region_box": list(self.region_box), "extend": self.extend.as_dict() if self.extend else None,
                "resolution": self.resolution, "region_padding": self.region_padding}


def plan(image_size: SizeWH, mask: np.ndarray, region: str = "full", padding: int = DEFAULT_PADDING,
         resolution: int = DEFAULT_RESOLUTION, height: Optional[int] = None, width: Optional[int] = None, *,
         feather: float = 0, extend: Optional["Extend"] = None) -> Plan:
    """The plan for a canvas of ``image_size`` and its final (H, W) mask.

    ``height`` and ``width`` (both or neither) fix the working size; otherwise it follows ``resolution``.
    ``feather`` is the blend feather: with ``region="mask"`` the box reaches at least that far past the mask.
    ``extend`` is only recorded (the canvas and mask are already extended, see :func:`extend_canvas`).
    """
    check_options(region, padding, resolution)
    if (height is None) != (width is None):    # requests.InpaintRequest states the rule to users
        raise ValueError("height and width go together")
    mask = np.asarray(mask, dtype=bool)
    if mask.shape != (image_size[1], image_size[0]):
        raise ValueError(f"a mask of shape {mask.shape} for a {image_size[0]}x{image_size[1]} image")
    fixed = (width, height) if width is not None else None
    if region == "full":
        box = (0, 0, image_size[0], image_size[1])
        size = fixed or working_size(image_size[0], image_size[1], resolution)
    else:
        box = padded_box(mask, max(padding, math.ceil(feather)))
        size = fixed or working_size(box[2] - box[0], box[3] - box[1], resolution)
        box = widen_to_aspect(box, size, image_size)
    return Plan(tuple(image_size), tuple(size), region, box, resolution, padding, extend or None)


# ------------------------------------------------------------------------------------------ extend

@dataclass(frozen=True)
class Extend:
    """Margins in pixels added to each side of the canvas; false when it adds nothing."""

    top: int = 0
    right: int = 0
    bottom: int = 0
    left: int = 0

    @classmethod
    def none(cls) -> "Extend":
        return cls()

    def __bool__(self) -> bool:
        return any(self.as_dict().values())

    def as_dict(self) -> dict:
        return {side: getattr(self, side) for side in SIDES}

    def canvas_size(self, image_size: SizeWH) -> SizeWH:
        """The extended size; a UserError when it breaks the image size policy (files.check_pixels), before any
        pixel of it exists."""
        size = image_size[0] + self.left + self.right, image_size[1] + self.top + self.bottom
        margins = ",".join(f"{side}={n}" for side, n in self.as_dict().items() if n)
        check_pixels(size, f"the extended canvas (the {image_size[0]}x{image_size[1]} image plus margins {margins})")
        return size

    def inner(self, image_size: SizeWH) -> Tuple[slice, slice]:
        """Where the original image lies on the canvas, as (rows, cols) slices."""
        return slice(self.top, self.top + image_size[1]), slice(self.left, self.left + image_size[0])

    def pad(self, array: np.ndarray, value=0, mode: str = "constant") -> np.ndarray:
        """An (H, W) or (H, W, C) array placed on the canvas, the margins ``value`` (or ``numpy.pad``'s mode).

        The blend weights of an extended run are ``extend.pad(weights, 1.0)``: the margins are taken from the
        model whole and the original pixels blend as the user's mask says (feather included)."""
        array = np.asarray(array)
        self.canvas_size((array.shape[1], array.shape[0]))   # the size policy, before the canvas is allocated
        widths = ((self.top, self.bottom), (self.left, self.right)) + ((0, 0),) * (array.ndim - 2)
        if mode == "constant":
            return np.pad(array, widths, mode, constant_values=value)
        return np.pad(array, widths, mode)


def parse_extend(value: Union[str, Mapping]) -> Extend:
    """``'top=N,right=N,bottom=N,left=N'`` (any subset, N >= 0, at least one > 0), the same as a mapping, or a list of
    such specs (repeated flags), merged: a side may be given once in all of them."""
    sides = {}
    for side, number in _extend_pairs(value):
        if side not in SIDES:
            raise _bad_extend(value, f"unknown side {side!r}")
        if side in sides:
            raise _bad_extend(value, f"side {side} is given twice")
        sides[side] = _margin(value, side, number)
    extend = Extend(**sides)
    if not extend:
        raise _bad_extend(value, "it adds nothing (at least one side must be > 0)")
    return extend


def _extend_pairs(value):
    if isinstance(value, Mapping):
        return [(str(side).strip(), number) for side, number in value.items()]
    if isinstance(value, (list, tuple)):   # repeated --extend flags (or a YAML list of specs): their sides merged
        if not value:
            raise _bad_extend(value, "nothing given")
        return [pair for item in value for pair in _extend_pairs(item)]
    if not isinstance(value, str) or not value.strip():
        raise _bad_extend(value, "nothing given")
    pairs = []
    for part in value.split(","):
        side, equals, number = part.partition("=")
        if not equals:
            raise _bad_extend(value, f"{part.strip()!r} is not SIDE=N")
        pairs.append((side.strip(), number))
    return pairs


def _margin(value, side: str, number) -> int:
    if isinstance(number, str) and _PIXELS_RE.match(number):
        number = int(number)
    if not _is_int(number) or not 0 <= number <= MAX_SIDE:
        shown = number.strip() if isinstance(number, str) else number
        raise _bad_extend(value, f"{side}={shown} is not a whole number of pixels from 0 to {MAX_SIDE}")
    return int(number)


def _bad_extend(value, reason: str) -> UserError:
    shown = ", ".join(map(repr, value)) if isinstance(value, (list, tuple)) and value else repr(value)
    return UserError(f"bad extend {shown}: {reason}; {_EXTEND_SYNTAX}")


def _fill(pixels: np.ndarray, extend: Extend, fill: str) -> np.ndarray:
    """A canvas-size uint8 array whose margins hold the starting pixels of the new area."""
    width, height = extend.canvas_size((pixels.shape[1], pixels.shape[0]))
    shape = (height, width, pixels.shape[2])
    if fill == "edge":
        return extend.pad(pixels, mode="edge")
    if fill == "blur":  # edge replication without its streaks: a Gaussian a quarter of the widest margin wide
        radius = max(extend.as_dict().values()) / 4
        return np.asarray(Image.fromarray(extend.pad(pixels, mode="edge")).filter(ImageFilter.GaussianBlur(radius)))
    if fill == "mean":
        return np.broadcast_to(np.rint(pixels.mean(axis=(0, 1))).astype(np.uint8), shape)
    return np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)  # noise, fixed for reproducibility


def extend_canvas(image: Image.Image, mask: Optional[np.ndarray], extend: Extend,
                  fill: str = "edge") -> Tuple[Image.Image, np.ndarray]:
    """The extended canvas (RGB) and its mask: the user's (H, W) mask (or none) at the offset, margins True.

    ``fill`` (one of :data:`FILLS`) starts the new pixels: ``edge`` replicates the nearest edge pixel, ``blur``
    is that blurred, ``mean`` the image's mean colour, ``noise`` uniform noise (fixed seed). The original pixels
    are copied unchanged. UserError for an unknown fill or when nothing is to be repainted.
    """
    if fill not in FILLS:
        raise UserError(f"bad extend fill {fill!r}: use one of {', '.join(FILLS)}")
    extend.canvas_size(image.size)   # the size policy, from the numbers
    pixels = np.asarray(image.convert("RGB"))
    size = (pixels.shape[1], pixels.shape[0])
    canvas = np.array(_fill(pixels, extend, fill))
    canvas[extend.inner(size)] = pixels
    user = np.zeros(pixels.shape[:2], dtype=bool) if mask is None else np.asarray(mask, dtype=bool)
    if user.shape != pixels.shape[:2]:
        raise ValueError(f"a mask of shape {user.shape} for a {size[0]}x{size[1]} image")
    new_mask = extend.pad(user, True)
    if not new_mask.any():
        raise UserError("nothing to repaint: no mask given and --extend adds no margin")
    return Image.fromarray(canvas, "RGB"), new_mask
