"""Every option of the tool, defined once: flag, YAML key, type, default, range and help.

The command line (cli.py), batch files and folder mode (batchfile.py), the request objects (core.py), the PNG and
manifest metadata and the option tables of docs/options.md all come from :data:`OPTIONS`:

* the YAML key of an option is its ``key``; its flag is the key with dashes (``prior_steps`` <-> ``--prior-steps``),
  except repeatable flags, whose YAML key is the plural (``--mask-rect`` <-> ``mask_rects``, a list);
* old spellings stay accepted as hidden aliases (``--guidance`` for ``--guidance-scale``);
* a value is checked by the same function wherever it comes from, so every entry point has the same ranges and the
  same message (``--steps: must be an integer from 1 to 1000, got 2000`` on the command line, ``jobs.yaml:
  jobs[1].steps: ...`` in a batch file);
* :func:`command` builds a Typer command's options from the definitions (:func:`typer_parameters`).

Nothing heavy is imported here: ``kandinsky --help`` reads this module.
"""
from __future__ import annotations

import functools
import inspect
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, Iterable, List, Mapping, Optional, Sequence, Tuple

from .errors import UserError
from .files import IMAGE_SUFFIXES
from .model_io import DEFAULT_DECODER, DEFAULT_PRIOR
from .precision import DTYPES
from .region import FILLS as EXTEND_FILLS, REGIONS, Extend, parse_extend
from .schedulers import DECODER_SCHEDULERS as SCHEDULERS
from .system import DEVICES as _TARGETS

REQUIRED = object()
SEED_MAX = 2**32 - 1
MAX_TEXT_CHARS = 4096           # far beyond the 77 tokens the text encoders read
MIX_TOTAL_MIN = 1e-6            # mix weights summing to less than this (in absolute value) are refused as zero


class Invalid(Exception):
    """A problem with one value; the caller adds where it came from (flag, or file, job and key)."""


# ------------------------------------------------------------------------------------------ value checks

def describe(value: Any) -> str:
    """A value with its kind, for messages: ``'abc' (a string)``, ``2.5 (a number)``, ``null``."""
    names = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list",
             dict: "a mapping"}
    if value is None:
        return "null"
    kind = names.get(type(value), type(value).__name__)
    return f"{str(value).lower() if isinstance(value, bool) else repr(value)} ({kind})"


def integer(lo: int, hi: Optional[int] = None, multiple: int = 1) -> Callable[[Any], int]:
    def check(value: Any) -> int:
        what = f"a multiple of {multiple} " if multiple > 1 else ""
        span = f"from {lo} to {hi}" if hi is not None else f">= {lo}"
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(f"must be an integer {what}{span}, got {describe(value)}")
        if value < lo or (hi is not None and value > hi) or value % multiple:
            near = ""
            if value % multiple and lo < value < (hi if hi is not None else value + 1):
                below = value // multiple * multiple
                near = f" (nearest valid: {below} or {below + multiple})"
            raise Invalid(f"must be {what or 'an integer '}{span}, got {value}{near}")
        return int(value)
    check.range = (lo, hi, multiple)   # type: ignore[attr-defined]
    return check


def number(lo: float, hi: float) -> Callable[[Any], float]:
    def check(value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise Invalid(f"must be a number from {lo:g} to {hi:g}, got {describe(value)}")
        if not math.isfinite(value) or not lo <= value <= hi:
            raise Invalid(f"must be a number from {lo:g} to {hi:g}, got {value}")
        return float(value)
    check.range = (lo, hi, None)   # type: ignore[attr-defined]
    return check


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise Invalid(f"must be true or false, got {describe(value)}")
    return value


def check_text(value: Any, nonempty: bool) -> str:
    """The one rule for text (prompts): a string of valid Unicode without control characters (tabs and newlines are
    fine), at most :data:`MAX_TEXT_CHARS` characters; a required prompt must have a visible character."""
    if not isinstance(value, str):
        raise Invalid(f"must be text (quote it in YAML), got {describe(value)}")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise Invalid("is not valid UTF-8 text (check the terminal's or the file's encoding)")
    bad = next((c for c in value if unicodedata.category(c) == "Cc" and c not in "\t\n\r"), None)
    if bad is not None:
        raise Invalid(f"contains the control character U+{ord(bad):04X} at position {value.index(bad)}")
    if len(value) > MAX_TEXT_CHARS:
        raise Invalid(f"is {len(value)} characters long; at most {MAX_TEXT_CHARS} are accepted "
                      f"(the text encoders read 77 tokens)")
    if nonempty and not value.strip():
        raise Invalid("must not be empty or only white space")
    return value


def text(nonempty: bool) -> Callable[[Any], str]:
    return lambda value: check_text(value, nonempty)


def path(suffixes: Optional[Tuple[str, ...]] = None) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if isinstance(value, Path):
            value = str(value)
        if not isinstance(value, str) or not value.strip():
            raise Invalid(f"must be a file path (a string), got {describe(value)}")
        if "\0" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            raise Invalid(f"{value!r} is not a usable file name")
        if suffixes and Path(value).suffix.lower() not in suffixes:
            raise Invalid(f"{value!r} must end in {', '.join(suffixes)}")
        return value
    return check


def choice(names: Sequence[str]) -> Callable[[Any], str]:
    def check(value: Any) -> str:
        if not isinstance(value, str) or value.strip().lower() not in names:
            raise Invalid(f"must be one of {', '.join(names)}, got {describe(value)}")
        return value.strip().lower()
    check.choices = tuple(names)   # type: ignore[attr-defined]
    return check


def rects(value: Any) -> Tuple[str, ...]:
    from .masks import parse_rect

    example = 'a list of quoted "ROWS,COLS" strings such as ["0:250,250:518"]'
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)):
        raise Invalid(f"must be {example}, got {describe(value)}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise Invalid(f"item {i} must be a quoted string such as \"0:250,250:518\", got {describe(item)}"
                          " (YAML reads some unquoted values like 1:30 as numbers)")
        try:
            parse_rect(item)
        except UserError as e:
            raise Invalid(f"item {i}: {e}") from None
    return tuple(value)




def mix_items(value: Any) -> Tuple[Tuple[str, float], ...]:
    """``["a cat=0.3", "photo.png=0.7"]`` -> ``(("a cat", 0.3), ("photo.png", 0.7))``; images are opened later."""
    items = []
    for item in [value] if isinstance(value, str) else list(value):
        if isinstance(item, (list, tuple)) and len(item) == 2:   # already parsed
            what, weight = item
        else:
            if not isinstance(item, str):
                raise Invalid(f"expected TEXT_OR_IMAGE=WEIGHT, got {describe(item)}")
            what, sep, weight = item.rpartition("=")
            if not sep or not what:
                raise Invalid(f"bad item {item!r}: expected TEXT_OR_IMAGE=WEIGHT, e.g. 'a cat=0.3' or photo.png=0.7")
        try:
            value_ = float(weight)
        except (TypeError, ValueError):
            raise Invalid(f"bad weight {weight!r} in {item!r}: not a number") from None
        if not math.isfinite(value_):
            raise Invalid(f"bad weight {weight!r} in {item!r}: must be finite")
        if Path(what).suffix.lower() not in IMAGE_SUFFIXES:
            check_text(what, nonempty=True)
        items.append((what, value_))
    return tuple(items)


def extend_margins(value: Any):
    """``"top=N,right=N,bottom=N,left=N"`` (any subset) or the same as a mapping -> :class:`region.Extend`."""

    if isinstance(value, Extend):
        return value
    try:
        return parse_extend(value)
    except UserError as e:
        raise Invalid(str(e)) from None


def optional(check: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def check_optional(value: Any) -> Any:
        return None if value is None else check(value)
    for attr in ("range", "choices"):
        if hasattr(check, attr):
            setattr(check_optional, attr, getattr(check, attr))
    return check_optional


# ------------------------------------------------------------------------------------------ the options

@dataclass(frozen=True)
class Option:
    """One option. ``scopes`` says where it exists:

    * ``job``: a key of an inpainting job (``kandinsky inpaint``, batch-file jobs and ``defaults``);
    * ``folder``: an option of ``kandinsky batch`` folder mode (the same value for every image);
    * ``prior``: an option of ``kandinsky prior``;
    * ``engine``: how the models are loaded and run (every model command);
    * ``mask``: an option of ``kandinsky mask``.
    """

    key: str
    check: Callable[[Any], Any]
    default: Any
    help: str
    scopes: FrozenSet[str]
    type: Any = str                      # the Python type Typer parses the flag into
    metavar: Optional[str] = None
    aliases: Tuple[str, ...] = ()        # hidden old spellings of the flag
    short: Optional[str] = None
    repeatable: bool = False
    negatable: bool = False              # --paste-back/--no-paste-back
    flag_name: Optional[str] = None      # the flag, when it is not the key with dashes
    argument: bool = False               # a positional argument on the command line (named by its metavar)
    default_doc: Optional[str] = None    # how the docs show the default, when not the value itself

    @property
    def flag(self) -> str:
        if self.argument:
            return str(self.metavar)
        return self.flag_name or "--" + self.key.replace("_", "-")

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def validate(self, value: Any) -> Any:
        return self.check(value)

    def default_text(self) -> str:
        """The default as the docs and ``--help`` show it."""
        if self.required:
            return "required"
        if self.default_doc is not None:
            return self.default_doc
        if self.default is None or self.default == ():
            return ""
        if isinstance(self.default, bool):
            return "on" if self.default else "off"
        return str(self.default)

    def range_text(self) -> str:
        rng = getattr(self.check, "range", None)
        if getattr(self.check, "choices", None):
            return " \\| ".join(self.check.choices)   # type: ignore[attr-defined]
        if rng is None:
            return ""
        lo, hi, multiple = rng
        text_ = f"{lo:g} .. {hi:g}" if hi is not None else f">= {lo:g}"
        if isinstance(lo, int):
            text_ = f"{lo} .. {hi}" if hi is not None else f">= {lo}"
        return text_ + (f", multiple of {multiple}" if multiple and multiple > 1 else "")


JOB, FOLDER, PRIOR, ENGINE, MASK = "job", "folder", "prior", "engine", "mask"


def _scopes(*names: str) -> FrozenSet[str]:
    return frozenset(names)


MODES = ("graph", "pynative")         # layers.compiled: graph mode compiles each network once per shape
DEVICES = tuple(_TARGETS)

OPTIONS: Tuple[Option, ...] = (
    # -- what to paint
    Option("image", path(), REQUIRED, "Input image (PNG/JPEG/WebP).", _scopes(JOB), Path, "IMAGE", argument=True),
    Option("prompt", text(nonempty=True), REQUIRED, "What to paint into the masked area.",
           _scopes(JOB, FOLDER, PRIOR), str, "TEXT", short="-p"),
    Option("negative_prompt", optional(text(nonempty=False)), None,
           "What to avoid (used by both stages; \"\" is an empty negative prompt).",
           _scopes(JOB, FOLDER, PRIOR), str, "TEXT"),
    # -- the mask
    Option("mask", optional(path()), None,
           "Mask file: PNG/JPEG/WebP (white = repaint; RGBA/LA: opaque = repaint) or .npy (H, W) floats in [0, 1]; "
           ">= 0.5 repaints. Resized to the image if needed. Combined with --mask-rect by union.",
           _scopes(JOB, FOLDER, MASK), Path, "PATH"),
    Option("mask_rects", rects, (),
           "Area to repaint in Python slice syntax, rows first, in pixels of the image: 0:250,250:518 or :250,-100: "
           "(negative counts from the end, empty = edge). Repeatable: the union is taken.",
           _scopes(JOB, FOLDER, MASK), List[str], "ROWS,COLS", repeatable=True, flag_name="--mask-rect"),
    Option("invert_mask", boolean, False, "Flip the mask (repaint what it would keep).",
           _scopes(JOB, FOLDER, MASK), bool),
    Option("grow", integer(0), 0, "Dilate the repaint area by N pixels (a disc), after --invert-mask.",
           _scopes(JOB, FOLDER, MASK), int, "N"),
    Option("feather", integer(0), 0,
           "Blend the result into the original over N pixels outside the repaint area (the model still sees the "
           "hard mask); farther pixels stay the original, bit for bit.", _scopes(JOB, FOLDER, MASK), int, "N"),
    # -- the prior
    Option("image_embeds", optional(path((".npy",))), None,
           "Image embeddings from `kandinsky prior` (skips the prior; with --negative-image-embeds).",
           _scopes(JOB), Path, "F.npy"),
    Option("negative_image_embeds", optional(path((".npy",))), None,
           "Negative image embeddings from `kandinsky prior`.", _scopes(JOB), Path, "F.npy"),
    Option("prior_steps", integer(2, 1000), 25, "Prior (UnCLIP) steps.", _scopes(JOB, FOLDER, PRIOR), int, "N"),
    Option("prior_guidance_scale", number(0.0, 100.0), 4.0, "Prior classifier-free guidance (> 1 turns it on).",
           _scopes(JOB, FOLDER, PRIOR), float, "G", aliases=("--prior-guidance",)),
    Option("mix", mix_items, (),
           "Mix prompts and images (.png/.jpg/.webp paths) with weights, as diffusers' interpolate(); repeatable. "
           "The prompt, if given, joins the mix with weight 1.", _scopes(PRIOR), List[str], "TEXT_OR_IMAGE=WEIGHT",
           repeatable=True),
    # -- the decoder
    Option("scheduler", choice(SCHEDULERS), "dpmpp-2m",
           "Decoder sampler, each equal to diffusers' with that scheduler: ddim (the decoder folder's own; with "
           "--steps 100 diffusers' default pipeline), ddpm (the original Kandinsky sampler, learned variance), "
           "dpmpp-2m (DPM-Solver++ 2M), dpmpp-2m-karras (Karras sigmas), dpmpp-2m-sde (stochastic).",
           _scopes(JOB, FOLDER), str, "NAME"),
    Option("steps", integer(1, 1000), 25, "Decoder steps (of --scheduler).", _scopes(JOB, FOLDER), int, "N"),
    Option("guidance_scale", number(0.0, 100.0), 4.0, "Decoder classifier-free guidance (> 1 turns it on).",
           _scopes(JOB, FOLDER), float, "G", aliases=("--guidance",)),
    Option("resolution", integer(64, 4096), 768,
           "Without --height/--width, the working size keeps the aspect ratio of what is inpainted (the image, or "
           "the region) with an area close to R x R, both sides multiples of 64 (a square input: R x R).",
           _scopes(JOB, FOLDER, MASK), int, "R"),
    Option("height", optional(integer(64, 4096, multiple=64)), None,
           "Working height (with --width): what is inpainted is resized to exactly this size.",
           _scopes(JOB, FOLDER, MASK), int, "H", default_doc="from --resolution"),
    Option("width", optional(integer(64, 4096, multiple=64)), None,
           "Working width (with --height).", _scopes(JOB, FOLDER, MASK), int, "W", default_doc="from --resolution"),
    Option("region", choice(REGIONS), "full",
           "full: inpaint the whole image at the working size; mask: only the box around the mask (plus "
           "--region-padding, widened to the working aspect ratio), so a small mask on a large photo is repainted at "
           "the model's full resolution; pixels outside the box stay the input's, bit for bit.",
           _scopes(JOB, FOLDER, MASK), str, "|".join(REGIONS)),
    Option("region_padding", integer(0, 16384), 32, "Pixels of context around the mask's box with --region mask.",
           _scopes(JOB, FOLDER, MASK), int, "N"),
    Option("extend", optional(extend_margins), None,
           "Outpainting: grow the canvas by these margins in pixels (top=N,right=N,bottom=N,left=N, any subset; "
           "repeated flags are merged, a side given twice is an error); the new area is added to the mask (on its own "
           "it is the mask) and the output has the extended size.",
           _scopes(JOB, FOLDER, MASK), List[str], "SIDE=N,..."),
    Option("extend_fill", choice(EXTEND_FILLS), "edge",
           "What the new margin starts from: edge (replicate the nearest edge pixel), blur (that, blurred), mean (the "
           "image's mean colour) or noise.", _scopes(JOB, FOLDER), str, "|".join(EXTEND_FILLS)),
    Option("num_images", integer(1, 64), 1, "Images to generate (OUT-1.png ... OUT-N.png).",
           _scopes(JOB, FOLDER, PRIOR), int, "N"),
    Option("seed", optional(integer(0, SEED_MAX)), None,
           "Noise seed (numpy default_rng; the same result on CPU, GPU and Ascend). Default: random, reported "
           "(in a batch: derived from --base-seed and the job's index).", _scopes(JOB, FOLDER, PRIOR), int, "N"),
    # -- the output
    Option("out", optional(path((".png",))), None,
           "Output PNG; several images: OUT-1.png ... OUT-N.png. Default: IMAGE-inpainted.png here "
           "(batch: outputs/<image stem>.png next to the batch file).", _scopes(JOB), Path, "PATH", short="-o"),
    Option("paste_back", boolean, True,
           "Resize the result to the input's size and keep every pixel outside the (grown, feathered) mask from the "
           "input, bit for bit; off: the raw model output at the working size.", _scopes(JOB, FOLDER), bool,
           negatable=True),
    Option("save_grid", boolean, False, "Also write OUT-grid.png: input | mask | outputs.", _scopes(JOB, FOLDER),
           bool),
    # -- the engine
    Option("prior_model", path(), DEFAULT_PRIOR,
           "Prior pipeline: a local diffusers folder or a hub id (downloaded once into the HF cache).",
           _scopes(ENGINE), str, "ID_OR_DIR"),
    Option("decoder_model", path(), DEFAULT_DECODER, "Inpaint decoder pipeline: a local diffusers folder or a hub id.",
           _scopes(ENGINE), str, "ID_OR_DIR"),
    Option("dtype", choice(DTYPES), "auto",
           "Compute precision. auto: bfloat16 on a CPU with bf16 instructions, float16 on GPU/Ascend, else float32; "
           "float32: the parity reference (equals diffusers); float16: for GPU/Ascend; bfloat16: CPUs with bf16 "
           "instructions (AVX512_BF16/AMX): the large products in bf16 with float32 sums, the rest float32.", _scopes(ENGINE), str, "|".join(DTYPES)),
    Option("mode", choice(MODES), "graph",
           "graph: networks compiled once per shape (fast); pynative: eager execution, for debugging.",
           _scopes(ENGINE), str, "|".join(MODES)),
    Option("device", optional(choice(DEVICES)), None,
           "Where the networks run (default: $KANDINSKY_DEVICE, else what MindSpore picks); a device that cannot run "
           "here is one error naming those that can.", _scopes(ENGINE), str, "|".join(DEVICES),
           default_doc="MindSpore's choice"),
    Option("offline", boolean, False,
           "Never touch the network: hub ids must already be in the HF cache (also HF_HUB_OFFLINE=1).",
           _scopes(ENGINE), bool),
)

BY_KEY: Dict[str, Option] = {o.key: o for o in OPTIONS}
#: The keys of a batch job (and of ``defaults:``), in the order of the definitions.
JOB_KEYS: Tuple[str, ...] = tuple(o.key for o in OPTIONS if JOB in o.scopes)
#: The engine's keys (every model command).
ENGINE_KEYS: Tuple[str, ...] = tuple(o.key for o in OPTIONS if ENGINE in o.scopes)
#: Keys of ``kandinsky prior`` (besides the engine's).
PRIOR_KEYS: Tuple[str, ...] = tuple(o.key for o in OPTIONS if PRIOR in o.scopes)


def in_scope(scope: str) -> List[Option]:
    return [o for o in OPTIONS if scope in o.scopes]


def flag_of(key: str) -> str:
    return BY_KEY[key].flag


def defaults(keys: Iterable[str]) -> Dict[str, Any]:
    """Every key's default (required keys are left out)."""
    return {k: BY_KEY[k].default for k in keys if not BY_KEY[k].required}


def check_value(key: str, value: Any, where: str) -> Any:
    """One value through its option's check; ``where`` prefixes the message (``--steps`` or ``f.yaml: jobs[1].steps``)."""
    option = BY_KEY[key]
    if value is None and option.required:
        raise UserError(f"{where}: must not be empty (null)")
    try:
        return option.validate(value)
    except Invalid as e:
        raise UserError(f"{where}: {e}") from None


def check_flags(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Command-line values (``None`` = not given) checked, with messages naming the flag."""
    return {k: (None if v is None else check_value(k, v, flag_of(k))) for k, v in values.items()}


# ------------------------------------------------------------------------------------------ rules between options

class Conflict(UserError):
    """A rule between options, worded for the entry point: ``str()`` names the flags (the command line),
    :meth:`in_file` the keys of a batch file (``jobs.yaml: jobs[3]: height and width go together ...``). The
    template names each option as ``{key}``; ``text`` holds literal parts that are the same everywhere."""

    def __init__(self, template: str, keys: Sequence[str], **text: str):
        self.template, self.keys, self.text = template, tuple(keys), text
        super().__init__(self.worded(flag_of))

    def worded(self, name: Callable[[str], str]) -> str:
        return self.template.format(**{k: name(k) for k in self.keys}, **self.text)

    def in_file(self, where: str) -> UserError:
        return UserError(f"{where}: {self.worded(str)}")


class IgnoredOption(UserWarning):
    """An option that was given but has no effect because of others (one ``warning:`` line)."""


def has_mask(values: Mapping[str, Any]) -> bool:
    """A mask file or rectangles were given (with ``extend`` alone the margins are the mask)."""
    return values.get("mask") is not None or bool(values.get("mask_rects"))


def check_mask_given(values: Mapping[str, Any], masks_dir: Optional[bool] = None) -> None:
    """The one "no mask given" rule: a mask file, rectangles, or margins to outpaint (which alone are the mask).
    ``masks_dir``: folder mode's further source, ``--masks DIR``, was given (True) or not (False); None elsewhere."""
    if has_mask(values) or values.get("extend") is not None or masks_dir:
        return
    raise Conflict("no mask given (what to repaint): give {mask_rects} and/or {mask}{more}, or {extend} to outpaint "
                   "(the margins alone are the mask)",
                   ("mask_rects", "mask", "extend"), more=", or --masks DIR (one per image)" if masks_dir is not None
                   else "")


def check_pairs(values: Mapping[str, Any]) -> None:
    """Options that go together: ``height``/``width`` and the two embeddings files."""
    if (values.get("height") is None) != (values.get("width") is None):
        raise Conflict("{height} and {width} go together: give both or neither (without them the working size "
                       "follows {resolution})", ("height", "width", "resolution"))
    if (values.get("image_embeds") is None) != (values.get("negative_image_embeds") is None):
        raise Conflict("{image_embeds} and {negative_image_embeds} go together: give both or neither",
                       ("image_embeds", "negative_image_embeds"))


#: Options without effect because of others: (key, when it is ignored, why; in the words of :class:`Conflict`).
IGNORED: Tuple[Tuple[str, Callable[[Mapping[str, Any]], bool], str, Tuple[str, ...]], ...] = (
    ("resolution", lambda v: v.get("height") is not None and v.get("width") is not None,
     "{resolution} is ignored: {height} and {width} set the working size", ("resolution", "height", "width")),
    ("region_padding", lambda v: v.get("region", BY_KEY["region"].default) != "mask",
     "{region_padding} is ignored: it applies with {region} mask only", ("region_padding", "region")),
    ("extend_fill", lambda v: v.get("extend") is None,
     "{extend_fill} is ignored without {extend}: there is no margin to fill", ("extend_fill", "extend")),
)


def ignored(values: Mapping[str, Any], given: Iterable[str]) -> List[Conflict]:
    """The options among ``given`` (those the user set, not defaults) that ``values`` makes ineffective."""
    given = set(given)
    return [Conflict(template, keys) for key, applies, template, keys in IGNORED if key in given and applies(values)]


def warn_ignored(values: Mapping[str, Any], given: Iterable[str]) -> None:
    """One ``warning:`` line per option the user gave that others make ineffective (worded with flags)."""
    import warnings

    for conflict in ignored(values, given):
        warnings.warn(IgnoredOption(str(conflict)))


def check_mix(prompt: Optional[str], mix: Sequence[Tuple[str, float]]) -> None:
    """The weights of a mix (with the prompt, which joins it with weight 1) must not sum to zero: the embeddings
    would be all zeros (or an unscaled difference of embeddings)."""
    if not mix:
        return
    weights = ([1.0] if prompt else []) + [float(w) for _, w in mix]
    if abs(math.fsum(weights)) <= MIX_TOTAL_MIN:
        what = "are all zero" if not any(weights) else f"sum to {math.fsum(weights):g}"
        raise Conflict("the weights of {mix}" + (" (with the prompt's 1)" if prompt else "") + f" {what}: the "
                       "embeddings would be zeros; give weights with a non-zero sum (e.g. 'a cat=0.3' 'a dog=0.7')",
                       ("mix",))


# ------------------------------------------------------------------------------------------ requests

class Settings:
    """Validated option values with every default filled in, read as attributes (``request.steps``)."""

    KEYS: Tuple[str, ...] = ()

    def __init__(self, values: Mapping[str, Any]):
        unknown = set(values) - set(self.KEYS)
        if unknown:
            raise TypeError(f"unknown settings: {', '.join(sorted(unknown))}")
        full = {**defaults(self.KEYS), **values}
        missing = [k for k in self.KEYS if k not in full]
        if missing:
            raise UserError(f"missing {', '.join(flag_of(k) for k in missing)}")
        object.__setattr__(self, "_values", full)

    def __getattr__(self, key: str) -> Any:
        try:
            return self.__dict__["_values"][key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("settings are read-only; use replace()")

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._values == self._values   # type: ignore[attr-defined]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._values!r})"

    def values(self) -> Dict[str, Any]:
        return dict(self._values)

    def replace(self, **changes: Any):
        return type(self)({**self._values, **changes})

    def parameters(self) -> Dict[str, Any]:
        """The values as JSON-able metadata (paths as strings, tuples as lists)."""
        def plain(v: Any) -> Any:
            if hasattr(v, "as_dict"):
                return v.as_dict()
            return str(v) if isinstance(v, Path) else list(v) if isinstance(v, tuple) else v
        return {k: plain(v) for k, v in self._values.items()}


# ------------------------------------------------------------------------------------------ Typer

def _typer_option(option: Option, flags: Sequence[str], hidden: bool, panel: Optional[str], prefix: str):
    import typer

    default = option.default_text()
    show = f" [default: {default}]" if default and not option.required and not hidden else ""
    names = list(flags)
    if option.negatable:
        names = ["/".join(f"{f}/--no-{f[2:]}" for f in flags)]
    if option.short and not hidden:
        names.append(option.short)
    return typer.Option(*names, metavar=option.metavar, show_default=False, hidden=hidden, rich_help_panel=panel,
                        help=(prefix + option.help + show) if not hidden else None)


def _annotation(option: Option):
    if option.type is bool:
        return Optional[bool] if option.negatable else bool
    return Optional[option.type]


Panels = Mapping[str, Tuple[Optional[str], str]]   # key -> (help panel, help prefix)


def _aliases(option: Option, extra: Optional[Mapping[str, Sequence[str]]]) -> List[str]:
    return list(option.aliases) + list((extra or {}).get(option.key, ()))


def typer_parameters(opts: Sequence[Option], aliases: Optional[Mapping[str, Sequence[str]]] = None,
                     panels: Optional[Panels] = None) -> List[inspect.Parameter]:
    """Keyword parameters for a Typer command: one per option (default None = not given, or False for plain flags)
    and one hidden parameter per alias, named ``KEY__alias_N``."""
    from typing import Annotated

    params = []
    for option in opts:
        panel, prefix = (panels or {}).get(option.key, (None, ""))
        default = False if option.type is bool and not option.negatable else None
        params.append(inspect.Parameter(
            option.key, inspect.Parameter.KEYWORD_ONLY, default=default,
            annotation=Annotated[_annotation(option), _typer_option(option, [option.flag], False, panel, prefix)]))
        for n, alias in enumerate(_aliases(option, aliases)):
            params.append(inspect.Parameter(
                f"{option.key}__alias_{n}", inspect.Parameter.KEYWORD_ONLY, default=default,
                annotation=Annotated[_annotation(option), _typer_option(option, [alias], True, panel, prefix)]))
    return params


def _collect(opts: Sequence[Option], kwargs: Dict[str, Any],
             aliases: Optional[Mapping[str, Sequence[str]]]) -> Dict[str, Any]:
    """Pop the options' values (and their aliases') out of ``kwargs``: {key: value, or None when not given}."""
    values = {}
    for option in opts:
        value = kwargs.pop(option.key)
        absent = (None, False) if option.type is bool and not option.negatable else (None,)
        for n, alias in enumerate(_aliases(option, aliases)):
            alias_value = kwargs.pop(f"{option.key}__alias_{n}")
            if alias_value in absent:
                continue
            if value not in absent and value != alias_value:
                raise UserError(f"{option.flag} and {alias} are the same option; give it once")
            value = alias_value
        values[option.key] = None if value in absent else value
    return values


def command(opts: Sequence[Option], aliases: Optional[Mapping[str, Sequence[str]]] = None,
            panels: Optional[Panels] = None):
    """Decorate ``func(..., values: dict)``: Typer sees ``func``'s own parameters plus one flag per option; ``func``
    receives the options as ``values`` ({key: checked value, None when not given})."""
    def wrap(func: Callable[..., Any]) -> Callable[..., Any]:
        own = [p for name, p in inspect.signature(func).parameters.items() if name != "values"]

        @functools.wraps(func)
        def run(**kwargs: Any) -> Any:
            values = check_flags(_collect(opts, kwargs, aliases))
            return func(**kwargs, values=values)

        params = own + typer_parameters(opts, aliases, panels)
        run.__signature__ = inspect.Signature(params)   # type: ignore[attr-defined]
        run.__annotations__ = {p.name: p.annotation for p in params}
        return run
    return wrap


# ------------------------------------------------------------------------------------------ documentation

def kind_text(option: Option) -> str:
    """What kind of value an option takes, for the docs."""
    if option.range_text():
        return option.range_text()
    if option.type is bool:
        return "true/false"
    if option.repeatable:
        return "list of strings"
    return "file path" if option.type is Path else "text"


def markdown_table(scope: str, aliases: Optional[Mapping[str, Sequence[str]]] = None) -> str:
    """The docs table of one scope's options: flag (and old spellings), YAML key, default, range, meaning."""
    rows = ["| flag | YAML key | default | values | meaning |", "|---|---|---|---|---|"]
    for o in in_scope(scope):
        flag = f"`{o.flag}/--no-{o.flag[2:]}`" if o.negatable else f"`{o.flag}`"
        if o.argument:
            flag += " (argument)"
        old = _aliases(o, aliases)
        if old:
            flag += " (also " + ", ".join(f"`{a}`" for a in old) + ")"
        key = f"`{o.key}`" if JOB in o.scopes else ""
        rows.append(f"| {flag} | {key} | {o.default_text()} | {kind_text(o)} | {o.help.replace('|', '&#124;')} |")
    return "\n".join(rows)


def table_markers(scope: str) -> Tuple[str, str]:
    """The docs lines around the generated table of ``scope``."""
    return f"<!-- options:{scope} -->", "<!-- /options -->"


def yaml_key_docs() -> str:
    """The comment block of configs/batch-example.yaml that lists every job key (between its markers)."""
    lines = ["# Job keys: the options of `kandinsky inpaint` (flag = key with dashes; mask_rects is --mask-rect).",
             "#   key                      range; default",
             "#     meaning"]
    for o in in_scope(JOB):
        rng = kind_text(o).replace(" \\| ", " | ")
        lines.append(f"#   {o.key:<24} {rng}; {o.default_text() or 'none'}")
        words, line = o.help.split(), "#    "
        for word in words:
            if len(line) + len(word) > 110:
                lines.append(line)
                line = "#    "
            line += " " + word
        lines.append(line)
    return "\n".join(lines)


def replace_between(text: str, begin: str, end: str, body: str) -> str:
    """``text`` with what stands between the lines ``begin`` and ``end`` replaced by ``body``."""
    head, sep, rest = text.partition(begin + "\n")
    if not sep:
        raise ValueError(f"marker {begin!r} not found")
    _, sep, tail = rest.partition(end)
    if not sep:
        raise ValueError(f"marker {end!r} not found after {begin!r}")
    return head + begin + "\n" + body + "\n" + end + tail


YAML_MARKERS = ("# <job-keys>", "# </job-keys>")

