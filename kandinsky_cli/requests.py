"""The requests: what a job asks for (the values of the options in options.py), and :func:`prepare`, the one
path from a request to its checked inputs (image, canvas, mask, plan, embeddings, seed), shared by ``inpaint``,
``batch`` (runs and ``--check``), ``mask`` and the server. Reading inputs needs no model; what the model folders
say about a request (sampler limits, memory) is the engine's pre-flight (:meth:`core.Kandinsky.preflight`).

An input that fails is an :class:`errors.InputError` naming the request key at fault, so that a batch file can
say ``jobs.yaml: jobs[3].mask: ...`` where the command line says the same rule without the key.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from . import options
from .errors import UserError, about
from .files import IMAGE_SUFFIXES, check_writable_output, load_image, numbered_paths
from .masks import MaskSpec
from .noise import random_seed
from .options import Settings
from .region import Plan, plan as region_plan

Embeddings = Tuple[np.ndarray, np.ndarray]


def load_embeddings(path: Path, what: str, key: Optional[str] = None) -> np.ndarray:
    """A float (N, E) or (E,) ``.npy`` written by ``kandinsky prior``, as float32 (N, E); errors name ``key``."""
    with about(key):
        return _load_embeddings(Path(path), what)


def _load_embeddings(path: Path, what: str) -> np.ndarray:
    if not path.is_file():
        raise UserError(f"{what} file not found: {path}")
    try:
        arr = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise UserError(f"cannot read {what} {path}: not a valid .npy file ({exc})") from None
    if not np.issubdtype(arr.dtype, np.floating):
        raise UserError(f"{what} {path} has dtype {arr.dtype}; expected float32 embeddings from `kandinsky prior`")
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[0] < 1 or arr.shape[1] < 1:
        raise UserError(f"{what} {path} has shape {arr.shape}; expected (N, E)")
    if not np.all(np.isfinite(arr)):
        raise UserError(f"{what} {path} contains NaN or infinite values")
    return arr.astype(np.float32)


class PriorRequest(Settings):
    """Stage 1: prompt (and/or a mix of prompts and images) -> image embeddings."""

    KEYS = options.PRIOR_KEYS

    def __init__(self, values, mix_images: Optional[Dict[int, Image.Image]] = None):
        super().__init__({"prompt": None, **values})
        if not self.mix and self.prompt is None:
            raise UserError("no prompt given: give PROMPT (or --prompt), or --mix")
        options.check_mix(self.prompt, self.mix)
        # the images of --mix by position, as :func:`check_mix_images` decoded them (not a setting: the prior
        # decodes any that are missing)
        object.__setattr__(self, "mix_images", dict(mix_images or {}))

    def cache_key(self) -> tuple:
        return tuple(sorted(self.values().items()))


class InpaintRequest(Settings):
    """Stage 2 (and stage 1 when no embeddings are given): one inpainting job, every option of options.JOB_KEYS."""

    KEYS = options.JOB_KEYS

    def __init__(self, values):
        super().__init__({"prompt": None, **values})
        if self.prompt is None and not self.mix:
            raise options.Conflict("no prompt given: give {prompt} (what to paint), or {mix}", ("prompt", "mix"))
        options.check_mix(self.prompt, self.mix)
        options.check_pairs(self.values())
        if self.out is None:
            raise UserError("no output file given (--out)")

    @property
    def decoder_prompt(self) -> str:
        """The text the decoder reads: the prompt, or "" for a --mix without one (as diffusers' interpolate docs)."""
        return "" if self.prompt is None else self.prompt

    @property
    def has_mask(self) -> bool:
        """A mask file or rectangles were given (with --extend alone the margins are the mask)."""
        return options.has_mask(self.values())

    @property
    def uses_prior(self) -> bool:
        """False when the job brings its own image embeddings."""
        return self.image_embeds is None

    @property
    def outputs(self) -> List[Path]:
        """The files this request writes: ``out``, or ``<stem>-1.png`` ... ``<stem>-N.png`` for several images."""
        return numbered_paths(self.out, self.num_images)

    @property
    def grid_path(self) -> Optional[Path]:
        out = Path(self.out)
        return out.with_name(f"{out.stem}-grid.png") if self.save_grid else None

    def mask_spec(self) -> MaskSpec:
        return MaskSpec(path=self.mask, rects=self.mask_rects, invert=self.invert_mask, grow=self.grow,
                        feather=self.feather)

    def prior_request(self, seed: int, mix_images: Optional[Dict[int, Image.Image]] = None) -> PriorRequest:
        return PriorRequest({"prompt": self.prompt, "negative_prompt": self.negative_prompt, "mix": self.mix,
                             "prior_steps": self.prior_steps, "prior_guidance_scale": self.prior_guidance_scale,
                             "num_images": self.num_images, "seed": seed}, mix_images)


@dataclass
class Prepared:
    """A request with its inputs read and checked: what the model stages need."""

    request: InpaintRequest
    image: Image.Image             # the canvas: the input image, extended by --extend
    mask: np.ndarray               # bool (H, W) of the canvas, True = repaint: the hard mask the model sees
    seed: int
    plan: Plan                     # working size and region box
    blend: np.ndarray              # float (H, W) paste-back weights: the user's feathered mask, margins 1
    input_size: Tuple[int, int]    # (H, W) of the input image (the canvas without --extend's margins)
    embeddings: Optional[Embeddings] = None   # from --image-embeds files; None: the prior makes them
    mix_images: Dict[int, Image.Image] = field(default_factory=dict)   # the --mix images, by position
    unet_rows: Optional[int] = None           # UNet rows per call (the engine's pre-flight); None: the whole batch
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class InpaintResult:
    outputs: List[Path]
    grid: Optional[Path]
    seed: int
    parameters: dict
    timings: Dict[str, float]


def canvas_and_mask(req: InpaintRequest, image: Image.Image) -> Tuple[Image.Image, np.ndarray, np.ndarray]:
    """(canvas, hard mask, paste-back weights) of a request and its decoded input ``image``: the image with its mask, extended by --extend (the
    margins join the mask and paste back whole; the original pixels blend as the user's feathered mask says).
    With --soft the weights are the soft change map and the hard mask is where it is above 0."""
    from .masks import feather_weights
    from .region import extend_canvas

    size_hw = (image.height, image.width)
    if req.soft and req.has_mask:
        blend = req.mask_spec().soft_map(size_hw)
        mask = blend > 0
    else:
        mask = req.mask_spec().build(size_hw) if req.has_mask else np.zeros(size_hw, dtype=bool)
        blend = feather_weights(mask, req.feather) if req.has_mask else np.zeros(size_hw, dtype=np.float32)
    if req.extend is None:
        return image, mask, blend
    with about("extend"):
        canvas, mask = extend_canvas(image, mask if req.has_mask else None, req.extend, req.extend_fill)
    return canvas, mask, req.extend.pad(blend, 1.0)


def make_plan(req: InpaintRequest, canvas_size: Tuple[int, int], mask: np.ndarray) -> Plan:
    """Working size and region box of a request on its canvas."""
    return region_plan(canvas_size, mask, req.region, req.region_padding, req.resolution, req.height, req.width,
                       feather=req.feather, extend=req.extend)


def prepare(req: InpaintRequest) -> Prepared:
    """Read and check every input of a request and its output locations; no model folder is touched. Each image is
    decoded once here: the engine and the batch keep the result."""
    options.check_mask_given(req.values())
    for path in req.outputs + ([req.grid_path] if req.grid_path else []):
        with about("out"):
            check_writable_output(path)
    with about("image"):
        image = load_image(req.image)
    mix_images = check_mix_images(req.mix)
    input_size = (image.height, image.width)
    image, mask, blend = canvas_and_mask(req, image)
    where = "region" if req.region == "mask" else "extend" if req.extend is not None else "mask"
    with about(where):
        plan = make_plan(req, image.size, mask)
    embeddings = None
    if not req.uses_prior:
        embeddings = tuple(load_embeddings(getattr(req, key), what, key) for key, what in
                           (("image_embeds", "image embeddings"), ("negative_image_embeds", "negative image embeddings")))
    seed = req.seed if req.seed is not None else random_seed()
    return Prepared(req, image, mask, seed, plan, blend, input_size, embeddings, mix_images=mix_images)


def prepare_mask(values: dict, size_hw: Tuple[int, int]) -> Tuple[np.ndarray, Plan, Optional[MaskSpec],
                                                                   Optional[np.ndarray]]:
    """:func:`prepare` by size alone, for ``kandinsky mask``: the hard mask on the (extended) canvas, the plan, the
    mask's specification (None when the margins alone are the mask) and, with ``soft``, the change map on the canvas
    (else None; the hard mask is where it is above 0). ``values`` holds the job keys."""
    options.check_mask_given(values)
    options.check_pairs(values)
    spec, hard, change = None, np.zeros(size_hw, dtype=bool), None
    if options.has_mask(values):
        spec = MaskSpec(path=values["mask"], rects=values["mask_rects"], invert=values["invert_mask"],
                        grow=values["grow"], feather=values["feather"])
        change = spec.soft_map(size_hw) if values.get("soft") else None
        hard = spec.build(size_hw) if change is None else change > 0
    extend = values["extend"]
    if extend is not None:
        hard = extend.pad(hard, True)
        change = None if change is None else extend.pad(change, 1.0)
    plan = region_plan(hard.shape[::-1], hard, values["region"], values["region_padding"], values["resolution"],
                       values["height"], values["width"], feather=values["feather"], extend=extend)
    return hard, plan, spec, change


def prior_request(values: dict) -> PriorRequest:
    """``kandinsky prior``'s request from its option values (a random seed, reported, when none is given); the
    images of ``--mix`` are opened here, before any model loads."""
    job = {k: v for k, v in values.items() if k in options.PRIOR_KEYS and v is not None}
    request = PriorRequest({**job, "seed": job.get("seed", random_seed())})
    return PriorRequest(request.values(), check_mix_images(request.mix))


def check_mix_images(mix) -> Dict[int, Image.Image]:
    """Every image of a --mix, decoded by position (before any model loads); errors name ``mix[i]``."""
    images = {}
    for i, (what, _) in enumerate(mix or ()):
        if Path(what).suffix.lower() in IMAGE_SUFFIXES:
            with about(f"mix[{i}]"):
                images[i] = load_image(what)
    return images
