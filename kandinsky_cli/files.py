"""Reading input images and writing every output file atomically.

Every output (PNG, JPEG/WebP, ``.npy``, JSON) goes through :func:`atomic_write`: the bytes are written to a
temporary file in the target directory, flushed to disk, then renamed over the target. After an error or a
Ctrl-C no partial or zero-byte output exists. Files that belong together (the images of one run, or
embeddings and their parameters) can be written all-or-nothing with :func:`atomic_set`. PNG outputs carry
tEXt metadata (tool, version and the caller's parameters as JSON) so that an image can be reproduced from
its own file. :func:`check_writable_output` and :func:`check_output_dir` check an output location before
any work is done.

Input images and image masks may have at most :data:`MAX_IMAGE_PIXELS` pixels (8192 x 8192, about 67
megapixels, in any shape); the size is checked from the file's header, before anything is decoded.
"""
from __future__ import annotations

import collections
import json
import os
import shutil
import stat
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, ContextManager, Dict, Iterator, List, Mapping, Optional, Tuple, Union

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
#: Most pixels (width x height) of an input image or image mask: 8192 x 8192. Below Pillow's own
#: decompression-bomb warning (about 89 megapixels), so Pillow never warns about an accepted image.
MAX_IMAGE_PIXELS = 8192 * 8192

#: Image files the tool reads (as Pillow reads them: PNG, JPEG, WebP), by extension.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")


# --------------------------------------------------------------------------------------------- writing

def _default_umask_mode() -> int:
    """The mode a plain ``open(path, 'w')`` would give a new file (mkstemp makes files 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _write_error(target: Path, error: OSError) -> UserError:
    return UserError(f"cannot write {target}: {error.strerror or error}")


def _make_parents(target: Path) -> List[Path]:
    """Create the missing folders above ``target``; returns those it created, outermost first."""
    missing = [parent for parent in target.parents if not parent.exists()][::-1]
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _write_error(target, e) from None
    return missing


@contextmanager
def _temporary_file(target: Path, rename: bool) -> Iterator[Tuple[IO[bytes], Path]]:
    """``(file, temporary path)`` next to ``target``; after the block the file is complete (not empty,
    flushed to disk, normal permissions) and, with ``rename``, renamed to ``target``. On any exception
    it is removed."""
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as e:
        raise _write_error(target, e) from None
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f, tmp
            f.flush()
            if f.tell() == 0:
                raise UserError(f"cannot write {target}: nothing to write")
            os.fsync(f.fileno())
        os.chmod(tmp, _default_umask_mode())
        if rename:
            os.replace(tmp, target)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise _write_error(target, e) from None
        raise


@contextmanager
def atomic_write(path: PathLike) -> Iterator[IO[bytes]]:
    """Open a binary file whose content replaces ``path`` only if the ``with`` block succeeds.

    Parent directories are created. On any exception (``KeyboardInterrupt`` included) the temporary file
    is removed and ``path`` is left as it was; writing nothing at all is an error too. ``OSError`` from
    the file system becomes a :class:`UserError` naming the path.
    """
    target = Path(path)
    _make_parents(target)
    with _temporary_file(target, rename=True) as (f, _):
        yield f


@dataclass
class _Staged:
    """One file of a :class:`FileSet`: its target, its written temporary file and, once the target is
    about to be replaced, a backup of the old file (same folder)."""

    target: Path
    tmp: Path
    backup: Optional[Path] = None


class FileSet:
    """Files written all-or-nothing; made by :func:`atomic_set`, whose documentation explains it."""

    def __init__(self) -> None:
        self._staged: List[_Staged] = []
        self._created_dirs: List[Path] = []
        self._committed = False

    @contextmanager
    def open(self, path: PathLike) -> Iterator[IO[bytes]]:
        """A binary file for ``path``, written to a temporary name now and renamed when the set commits.

        As :func:`atomic_write`: parent folders are created, an empty file is an error, an exception in
        the block removes the temporary file (and propagates, which rolls the whole set back).
        """
        target = Path(path)
        if any(staged.target == target for staged in self._staged):
            raise ValueError(f"{target} is written twice in one file set")
        self._created_dirs += _make_parents(target)
        staged = None
        try:
            with _temporary_file(target, rename=False) as (f, tmp):
                staged = _Staged(target, tmp)
                self._staged.append(staged)
                yield f
        except BaseException:  # the temporary file is gone: the set must not try to rename it
            if staged is not None:
                self._staged.remove(staged)
            raise

    def _commit(self) -> None:
        """Rename every file to its target, backing up any old file first (a hard link, else a copy)."""
        for staged in self._staged:
            try:
                if os.path.lexists(staged.target):
                    staged.backup = staged.tmp.with_suffix(".old")
                    _backup(staged.target, staged.backup)
                os.replace(staged.tmp, staged.target)
            except OSError as e:
                raise _write_error(staged.target, e) from None
        self._committed = True
        for staged in self._staged:
            if staged.backup is not None:
                staged.backup.unlink(missing_ok=True)

    def _roll_back(self) -> None:
        """Undo everything not committed: remove the temporary and the new files, restore the old ones,
        remove the folders this set created. Judged from what exists, so an interrupt at any point of
        :meth:`_commit` is undone too."""
        if self._committed:
            return
        for staged in reversed(self._staged):
            try:
                if staged.tmp.exists():              # not renamed: the target is untouched
                    staged.tmp.unlink()
                    if staged.backup is not None:
                        staged.backup.unlink(missing_ok=True)
                elif staged.backup is not None and staged.backup.exists():
                    os.replace(staged.backup, staged.target)   # renamed over an old file: put it back
                else:
                    staged.target.unlink(missing_ok=True)      # renamed to a new name: remove it
            except OSError:
                pass  # undo as much as possible; the original error is the one to report
        for folder in reversed(self._created_dirs):
            try:
                folder.rmdir()
            except OSError:
                pass  # not empty: something else lives there now


def _backup(target: Path, backup: Path) -> None:
    """A second name for the old file (no copy) where the file system allows hard links, else a copy.
    A symbolic link is kept as the link itself."""
    try:
        os.link(target, backup, follow_symlinks=False)
    except OSError:
        shutil.copy2(target, backup, follow_symlinks=False)


@contextmanager
def atomic_set() -> Iterator[FileSet]:
    """Write several files all-or-nothing: every file of the set exists afterwards, or none changed.

    Each file is written with ``files.open(path)`` (or ``save_png(..., into=files)`` and the other
    ``save_*`` functions) to a temporary name in its target folder. When the ``with`` block ends without
    an exception, all of them are renamed to their targets. On any exception, ``KeyboardInterrupt``
    included and also between two renames, everything is undone: temporary and already renamed files
    are removed and folders the set created are removed again.

    Files that existed before are replaced, as :func:`atomic_write` replaces them, and nothing of them is
    lost: before its rename each old file gets a second name next to it (a hard link, or a copy where the
    file system has none), which is renamed back if the set fails and deleted once every file is in
    place. Only if the process is killed outright (SIGKILL, power loss) during the renames can the set be
    half done; then the old files survive under those hidden names (``.NAME.*.old``).
    """
    files = FileSet()
    try:
        yield files
        files._commit()
    except BaseException:
        files._roll_back()
        raise


def _nearest_existing(path: Path) -> Path:
    """``path`` itself or the closest of its parents that exists."""
    for candidate in (path, *path.parents):
        if os.path.lexists(candidate):
            return candidate
    return Path(".")


def _check_creatable(folder: Path, what: str, path: Path) -> None:
    """UserError unless ``folder`` is, or can be created as, a writable folder."""
    existing = _nearest_existing(folder)
    if not existing.is_dir():
        raise UserError(f"cannot write {what} {path}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {what} {path}: the folder {existing} is not writable")


def _stat_or_none(path: Path, what: str) -> Optional[os.stat_result]:
    """``os.stat`` of ``path``, None if nothing is there; a UserError for names the system refuses."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except (OSError, ValueError) as e:  # a name too long, a NUL byte, a symbolic-link loop, ...
        raise UserError(f"cannot write {what} {path}: {getattr(e, 'strerror', None) or e}") from None


def check_writable_output(path: PathLike, what: str = "output") -> None:
    """UserError unless ``path`` can be written as a file: it is not a folder or a special file (a
    device, a pipe), and its folder exists as a writable folder or can be created. Nothing is created.

    ``what`` names the output in the message, e.g. ``"output image"``: ``cannot write output image
    out.png: ...``. Call it before any model is loaded.
    """
    target = Path(path)
    st = _stat_or_none(target, what)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise UserError(f"cannot write {what} {target}: it is a folder; give a file name")
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise UserError(f"cannot write {what} {target}: it exists and is not a regular file")
    _check_creatable(target.parent, what, target)


def check_output_dir(path: PathLike, what: str = "output folder") -> None:
    """UserError unless ``path`` is a writable folder or can be created as one (nothing is created)."""
    folder = Path(path)
    st = _stat_or_none(folder, what)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        raise UserError(f"cannot write {what} {folder}: it exists and is not a folder")
    _check_creatable(folder, what, folder)


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


def _output(path: PathLike, into: Optional[FileSet]) -> ContextManager[IO[bytes]]:
    """Where a ``save_*`` function writes: a file of the set ``into``, or :func:`atomic_write`."""
    return into.open(path) if into is not None else atomic_write(path)


def save_png(path: PathLike, image: ImageLike, metadata: Optional[Mapping[str, Any]] = None,
             into: Optional[FileSet] = None) -> Path:
    """Write a PNG atomically with tEXt metadata (see :func:`png_info`); returns the path.

    With ``into`` (from :func:`atomic_set`) the file is one of a set written all-or-nothing.
    """
    pil = to_pil(image)
    with _output(path, into) as f:
        pil.save(f, format="PNG", pnginfo=png_info(metadata))
    return Path(path)


def save_image(path: PathLike, image: ImageLike, metadata: Optional[Mapping[str, Any]] = None,
               into: Optional[FileSet] = None) -> Path:
    """Write an image in the format its extension names (.png, .jpg/.jpeg, .webp), atomically.

    Only PNG carries the metadata; JPEG and WebP are written at quality 95. ``into``: see :func:`save_png`.
    """
    fmt = output_image_format(path)
    if fmt == "PNG":
        return save_png(path, image, metadata, into)
    pil = to_pil(image)
    if pil.mode not in ("RGB", "L"):
        pil = pil.convert("RGB")
    with _output(path, into) as f:
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


def save_npy(path: PathLike, array: np.ndarray, into: Optional[FileSet] = None) -> Path:
    """Write one array as ``.npy`` atomically (no pickles). ``into``: see :func:`save_png`."""
    with _output(path, into) as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def save_json(path: PathLike, obj: Any, into: Optional[FileSet] = None) -> Path:
    """Write JSON (indented, sorted keys, trailing newline) atomically. ``into``: see :func:`save_png`."""
    text = to_json(obj, indent=2) + "\n"
    with _output(path, into) as f:
        f.write(text.encode("utf-8"))
    return Path(path)


# --------------------------------------------------------------------------------------------- reading

class ImageTooLarge(UserError):
    """An image over the size policy (:func:`check_image_pixels`); the server answers it with HTTP 413."""


def check_image_pixels(size_wh: Tuple[int, int], path: PathLike, what: str = "image") -> None:
    """UserError if an image of ``(width, height)`` has more than :data:`MAX_IMAGE_PIXELS` pixels."""
    check_pixels(size_wh, f"{what} {path}")


def check_pixels(size_wh: Tuple[int, int], what: str) -> None:
    """The image size policy, for inputs and for every canvas made from them (``--extend``): a UserError
    ``<what> is too large: WxH pixels ...; the limit is ...`` above :data:`MAX_IMAGE_PIXELS`, judged from the
    numbers alone (call it before anything of that size is allocated)."""
    width, height = size_wh
    if width * height > MAX_IMAGE_PIXELS:
        raise ImageTooLarge(f"{what} is too large: {width}x{height} pixels ({width * height / 1e6:.1f} "
                        f"megapixels); the limit is {MAX_IMAGE_PIXELS} pixels "
                        f"({MAX_IMAGE_PIXELS / 1e6:.1f} megapixels, e.g. 8192x8192)")


@contextmanager
def _without_pillow_pixel_limit() -> Iterator[None]:
    """Pillow's decompression-bomb check off while a file is opened (only its header is read then).

    :func:`check_image_pixels` applies a lower limit itself, from the same header, with a clear message;
    Pillow's own check would print a raw DecompressionBombWarning above ~89 megapixels and fail with a
    "DOS attack" message above ~179 megapixels, before that size could be looked at.
    """
    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def _open_header(path: Path) -> Image.Image:
    """``Image.open`` (PNG, JPEG or WebP): the header is read, no pixel is decoded."""
    with _without_pillow_pixel_limit():
        return Image.open(path, formats=IMAGE_FORMATS)


def open_image(path: PathLike, what: str = "image") -> Image.Image:
    """Open and fully decode a PNG/JPEG/WebP file, EXIF orientation applied, in its own mode.

    Missing, unreadable, truncated or corrupt files, other formats and images of more than
    :data:`MAX_IMAGE_PIXELS` pixels (judged from the header, before decoding) raise a UserError naming
    the path (``what`` says what the file was meant to be: "image", "mask", ...).
    """
    p = Path(path)
    if not p.exists():
        raise UserError(f"{what} not found: {p}")
    if p.is_dir():
        raise UserError(f"{what} {p} is a directory, not a file")
    try:
        with _open_header(p) as im:
            check_image_pixels(im.size, p, what)
            im.load()
            return ImageOps.exif_transpose(im)
    except UserError:
        raise
    except Image.UnidentifiedImageError:
        raise UserError(f"cannot read {what} {p}: not a PNG, JPEG or WebP image") from None
    except OSError as e:
        raise UserError(f"cannot read {what} {p}: {e.strerror or e}") from None
    except Exception as e:  # Pillow raises assorted errors (SyntaxError, ValueError, ...) on corrupt data
        raise UserError(f"cannot read {what} {p}: corrupt image ({e})") from None


#: Input images decoded in this process, by path (a batch decodes each job's image once: tests read this).
DECODED: "collections.Counter[str]" = collections.Counter()


def load_image(path: PathLike) -> Image.Image:
    """An input image as RGB (alpha dropped, as diffusers' ``load_image`` does); UserError if unusable."""
    image = open_image(path, "image")
    DECODED[str(Path(path).resolve())] += 1
    return image if image.mode == "RGB" else image.convert("RGB")


def read_png_metadata(path: PathLike) -> Dict[str, Any]:
    """The tEXt metadata of a PNG written by :func:`save_png`, with ``parameters`` decoded from JSON."""
    with Image.open(path, formats=["PNG"]) as im:
        im.load()
        text = dict(getattr(im, "text", {}))
    if PNG_KEY_PARAMETERS in text:
        text[PNG_KEY_PARAMETERS] = json.loads(text[PNG_KEY_PARAMETERS])
    return text

