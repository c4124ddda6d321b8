"""Reading input images and writing every output file atomically.

Every output (PNG, JPEG/WebP, ``.npy``, JSON) goes through :func:`atomic_write`: the bytes are written to a
temporary file in the target directory, flushed to disk, then renamed over the target. After an error or a
Ctrl-C no partial or zero-byte output exists. PNG outputs carry tEXt metadata (tool, version and the
caller's parameters as JSON) so that an image can be reproduced from its own file.
"""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Dict, Iterator, Mapping, Optional, Union

import numpy as np
from PIL import Image, ImageOps, PngImagePlugin

from . import TOOL_NAME, __version__
from .errors import UserError

PathLike = Union[str, "os.PathLike[str]"]
ImageLike = Union[np.ndarray, Image.Image]

#: Formats accepted for input images and image masks (Pillow format names).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP")
#: Output image formats, by file extension.
OUTPUT_IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}
#: PNG tEXt keys written by :func:`save_png`.
PNG_KEY_TOOL, PNG_KEY_VERSION, PNG_KEY_PARAMETERS = "tool", "version", "parameters"


# --------------------------------------------------------------------------------------------- writing

def _default_umask_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file (mkstemp makes files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path: PathLike) -> Iterator[IO[bytes]]:
    """Open a binary file whose content replaces ``path`` only if the ``with`` block succeeds.

    Parent directories are created. On any exception (``KeyboardInterrupt`` included) the temporary file
    is removed and ``path`` is left as it was; writing nothing at all is an error too. ``OSError`` from
    the file system becomes a :class:`UserError` naming the path.
    """
    target = Path(path)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise UserError(f"cannot write {target}: {e.strerror or e}") from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            if f.tell() == 0:
                raise UserError(f"cannot write {target}: nothing to write")
            os.fsync(f.fileno())
        os.chmod(tmp, _default_umask_mode())
        os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise UserError(f"cannot write {target}: {e.strerror or e}") from None
        raise


def _json_default(value: Any) -> Any:
    """JSON for the few non-JSON types that parameters contain: numpy scalars/arrays and paths."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def to_json(obj: Any, indent: Optional[int] = None) -> str:
    """``json.dumps`` with sorted keys, ASCII only (safe in PNG tEXt), numpy scalars and paths allowed."""
    return json.dumps(obj, indent=indent, sort_keys=True, ensure_ascii=True, default=_json_default)


def to_pil(image: ImageLike) -> Image.Image:
    """A PIL image from a PIL image or a uint8 array of shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4)."""
    if isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    if array.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image array, got {array.dtype}")
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim == 2:
        return Image.fromarray(array, "L")
    if array.ndim == 3 and array.shape[2] in (3, 4):
        return Image.fromarray(array, "RGB" if array.shape[2] == 3 else "RGBA")
    raise ValueError(f"expected an image array of shape (H, W) or (H, W, 3|4), got {array.shape}")


def png_info(metadata: Optional[Mapping[str, Any]] = None) -> PngImagePlugin.PngInfo:
    """tEXt chunks: tool name, version and (if given) the parameters as one JSON object."""
    info = PngImagePlugin.PngInfo()
    info.add_text("Software", f"{TOOL_NAME} {__version__}")
    info.add_text(PNG_KEY_TOOL, TOOL_NAME)
    info.add_text(PNG_KEY_VERSION, __version__)
    if metadata:
        info.add_text(PNG_KEY_PARAMETERS, to_json(dict(metadata)))
    return info


def save_png(path: PathLike, image: ImageLike, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write a PNG atomically with tEXt metadata (see :func:`png_info`); returns the path."""
    pil = to_pil(image)
    with atomic_write(path) as f:
        pil.save(f, format="PNG", pnginfo=png_info(metadata))
    return Path(path)


def save_image(path: PathLike, image: ImageLike, metadata: Optional[Mapping[str, Any]] = None) -> Path:
    """Write an image in the format its extension names (.png, .jpg/.jpeg, .webp), atomically.

    Only PNG carries the metadata; JPEG and WebP are written at quality 95.
    """
    fmt = output_image_format(path)
    if fmt == "PNG":
        return save_png(path, image, metadata)
    pil = to_pil(image)
    if pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    with atomic_write(path) as f:
        pil.save(f, format=fmt, quality=95)
    return Path(path)


def output_image_format(path: PathLike) -> str:
    """Pillow's format name for an output path, or a UserError for an unsupported extension."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_IMAGE_FORMATS:
        raise UserError(f"cannot write {path}: the file name must end in .png, .jpg, .jpeg or .webp")
    return OUTPUT_IMAGE_FORMATS[suffix]


def numbered_paths(out: PathLike, count: int) -> list:
    """The files of ``count`` outputs named ``out``: ``out`` itself for one, ``out-1.png`` ... ``out-N.png``."""
    out = Path(out)
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{i}{out.suffix}") for i in range(1, count + 1)]


def save_npy(path: PathLike, array: np.ndarray) -> Path:
    """Write one array as ``.npy`` atomically (no pickles)."""
    with atomic_write(path) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def save_json(path: PathLike, obj: Any) -> Path:
    """Write JSON (indented, sorted keys, trailing newline) atomically."""
    text = to_json(obj, indent=2) + "\n"
    with atomic_write(path) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


# --------------------------------------------------------------------------------------------- reading

def open_image(path: PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode a PNG/JPEG/WebP file, EXIF orientation applied, in its own mode.

    Missing, unreadable, truncated or corrupt files and other formats raise a UserError naming the path
    (``what`` says what the file was meant to be: "image", "mask", ...).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a file")
    try:
        with Image.open(p, formats=IMAGE_FORMATS) as im:
            im.load()
            return ImageOps.exif_transpose(im)
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {what} {p}: not a PNG, JPEG or WebP image") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    except Exception as e:  # Pillow raises assorted errors (SyntaxError, ValueError, ...) on corrupt data
        raise UserError(f"cannot read {what} {p}: corrupt image ({e})") from None


def load_image(path: PathLike) -> Image.Image:
    """An input image as RGB (alpha dropped, as diffusers' ``load_image`` does); UserError if unusable."""
    image = open_image(path, "image")
    return image if image.mode == "RGB" else image.convert("RGB")


def read_png_metadata(path: PathLike) -> Dict[str, Any]:
    """The tEXt metadata of a PNG written by :func:`save_png`, with ``parameters`` decoded from JSON."""
    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        text = dict(getattr(im, "text", {}))
    if PNG_KEY_PARAMETERS in text:
        text[PNG_KEY_PARAMETERS] = json.loads(text[PNG_KEY_PARAMETERS])
    return text


def check_output_path(path: PathLike) -> None:
    """A UserError, before any work is done, when ``path`` cannot be written as a file: it is a folder, or a part
    of its folder is a file."""
    p = Path(path)
    if p.is_dir():
        raise UserError(f"cannot write {p}: it is a folder (give a file name)")
    for parent in p.absolute().parents:
        if parent.exists():
            if not parent.is_dir():
                raise UserError(f"cannot write {p}: {parent} is a file, not a folder")
            break


def check_output_dir(path: PathLike) -> None:
    """A UserError, before any work is done, when ``path`` cannot be used as an output folder."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise UserError(f"cannot use {p} as the output folder: it is a file")
    check_output_path(p / "_")
