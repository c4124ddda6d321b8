"""The thin core behind the CLI: loads each stage once, runs prior and inpaint requests, writes outputs.

No command-line parsing here (cli.py does that) and no network math (the pipelines do that). Everything a
request needs is checked before any model is loaded, so bad input fails fast with a UserError.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
from PIL import Image

from . import __version__, model_io
from .errors import UserError
from .files import load_image, numbered_paths, save_json, save_npy, save_png
from .masks import MaskSpec, mask_to_image
from .noise import random_seed

DTYPES = ("float32", "float16")
MODES = ("graph", "pynative")

# progress(stage, step, total): stage is "prior" or "decoder"
Progress = Optional[Callable[[str, int, int], None]]


def check_size(height: int, width: int, multiple: int = 64) -> None:
    for name, value in (("height", height), ("width", width)):
        if value <= 0 or value % multiple:
            lower = max(multiple, value // multiple * multiple)
            raise UserError(f"bad {name} {value}: must be a positive multiple of {multiple} "
                            f"(nearest valid: {lower} or {lower + multiple})" if value > multiple else
                            f"bad {name} {value}: must be a positive multiple of {multiple} (e.g. {multiple})")


def check_steps(steps: int, what: str, minimum: int = 1) -> None:
    if steps < minimum:
        raise UserError(f"bad {what} {steps}: must be at least {minimum}")


def check_guidance(guidance: float, what: str) -> None:
    if not np.isfinite(guidance) or guidance < 0:
        raise UserError(f"bad {what} {guidance}: must be a number >= 0")


def load_embeddings(path: Path, what: str) -> np.ndarray:
    """A float (N, E) or (E,) ``.npy`` written by ``kandinsky prior``, as float32 (N, E)."""
    path = Path(path)
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


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float HWC -> uint8 the way diffusers' ``numpy_to_pil`` does: round(x * 255)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


@dataclass
class PriorRequest:
    prompt: Optional[str]
    negative_prompt: Optional[str] = None
    steps: int = 25
    guidance_scale: float = 4.0
    num_images: int = 1
    seed: Optional[int] = None
    mix: List[Tuple[str, float]] = field(default_factory=list)   # (text or image path, weight)

    def validate(self) -> None:
        check_steps(self.steps, "prior steps", 2)
        check_guidance(self.guidance_scale, "prior guidance")
        check_steps(self.num_images, "number of images")
        if not self.mix and not (self.prompt or self.prompt == ""):
            raise UserError("no prompt given")


@dataclass
class InpaintRequest:
    image: Path
    mask: MaskSpec
    prompt: str
    negative_prompt: Optional[str] = None
    image_embeds: Optional[Path] = None
    negative_image_embeds: Optional[Path] = None
    steps: int = 100
    guidance_scale: float = 4.0
    prior_steps: int = 25
    prior_guidance_scale: float = 4.0
    height: int = 768
    width: int = 768
    num_images: int = 1
    seed: Optional[int] = None
    out: Path = Path("inpainted.png")
    paste_back: bool = True
    save_grid: bool = False

    def validate(self) -> None:
        check_size(self.height, self.width)
        check_steps(self.steps, "steps")
        check_guidance(self.guidance_scale, "guidance")
        check_steps(self.prior_steps, "prior steps", 2)
        check_guidance(self.prior_guidance_scale, "prior guidance")
        check_steps(self.num_images, "number of images")
        if (self.image_embeds is None) != (self.negative_image_embeds is None):
            raise UserError("--image-embeds and --negative-image-embeds go together: give both or neither")
        if Path(self.out).suffix.lower() != ".png":
            raise UserError(f"cannot write {self.out}: inpainting outputs are PNG (name must end in .png)")

    def grid_path(self) -> Path:
        return Path(self.out).with_name(f"{Path(self.out).stem}-grid.png")


@dataclass
class InpaintResult:
    outputs: List[Path]
    grid: Optional[Path]
    seed: int
    parameters: dict
    timings: Dict[str, float]


class Kandinsky:
    """Both stages, each loaded on first use and kept for every later request of the process."""

    def __init__(self, prior_model: str = model_io.DEFAULT_PRIOR, decoder_model: str = model_io.DEFAULT_DECODER,
                 dtype: str = "float32", offline: bool = False, mode: str = "graph"):
        if dtype not in DTYPES:
            raise UserError(f"bad dtype {dtype!r}: use one of {', '.join(DTYPES)}")
        if mode not in MODES:
            raise UserError(f"bad mode {mode!r}: use graph (compiled, the default) or pynative (eager, for debugging)")
        self.mode = mode
        self.prior_model, self.decoder_model = prior_model, decoder_model
        self.dtype_name, self.offline = dtype, offline
        self._prior = self._decoder = None
        self._roots: Dict[str, Path] = {}
        # Free the prior (~1.5 B parameters at real size) once its embeddings are made, before the decoder
        # loads. MindSpore keeps a compiled network's parameters alive for the whole process, so such a prior
        # runs eagerly (pynative): measured at real size, unloading it then returns ~2.7 GB, compiled none.
        self.release_prior_after_use = False
        self.counters = {"prior_loads": 0, "decoder_loads": 0, "prior_runs": 0, "decoder_runs": 0}
        self._embedding_cache: Dict[tuple, Tuple[np.ndarray, np.ndarray]] = {}

    def counter_snapshot(self) -> Dict[str, int]:
        """Loads and runs so far, with the decoder's text encoder loads (it is freed after each use)."""
        text_loads = self._decoder.text_encoder_loads if self._decoder is not None else 0
        return {**self.counters, "text_encoder_loads": text_loads}

    @property
    def ms_dtype(self):
        import mindspore as ms

        return ms.float16 if self.dtype_name == "float16" else ms.float32

    def root(self, stage: str) -> Path:
        """The local folder of a stage ("prior" or "decoder"), downloading it once if it is a hub id."""
        if stage not in self._roots:
            model = self.prior_model if stage == "prior" else self.decoder_model
            self._roots[stage] = model_io.resolve_model_dir(model, offline=self.offline)
        return self._roots[stage]

    def embedding_widths(self) -> Tuple[int, int]:
        """(prior embedding width, decoder image-embedding width), from the configs alone."""
        prior = model_io.read_config(self.root("prior") / "prior")
        unet = model_io.read_config(self.root("decoder") / "unet")
        return int(prior.get("clip_embed_dim") or prior.get("embedding_dim", 768)), int(unet["cross_attention_dim"])

    def unload_prior(self) -> None:
        """Drop the prior's networks (they are reloaded on next use)."""
        import gc

        self._prior = None
        gc.collect()

    @property
    def prior(self):
        if self._prior is None:
            from .prior_pipeline import PriorPipeline

            mode = "pynative" if self.release_prior_after_use else self.mode
            self._prior = PriorPipeline(self.root("prior"), self.ms_dtype, mode)
            self.counters["prior_loads"] += 1
        return self._prior

    @property
    def decoder(self):
        if self._decoder is None:
            from .inpaint_pipeline import InpaintPipeline

            self._decoder = InpaintPipeline(self.root("decoder"), self.ms_dtype, self.mode)
            self.counters["decoder_loads"] += 1
        return self._decoder

    def encode_texts(self, texts: List[str]) -> None:
        """Encode (and cache) every text coming decoder runs need with one load of the text encoder, which is
        then freed again."""
        decoder = self.decoder
        with decoder.holding_text_encoder():
            decoder.encode_text(list(texts))

    # -- stage 1 ------------------------------------------------------------------------------------------
    def run_prior(self, req: PriorRequest, progress: Progress = None) -> Tuple[np.ndarray, np.ndarray]:
        """(image_embeds, negative_image_embeds), float32 (N, E); cached per distinct request."""
        from .noise import Noise

        req.validate()
        key = (req.prompt, req.negative_prompt, req.steps, req.guidance_scale, req.num_images, req.seed,
               tuple(req.mix))
        if req.seed is not None and key in self._embedding_cache:
            return self._embedding_cache[key]
        step = (lambda i, n: progress("prior", i, n)) if progress else None
        noise = Noise(req.seed if req.seed is not None else random_seed())
        if req.mix:
            items, weights = self._mix_items(req)
            emb, neg = self.prior.interpolate(items, weights, num_images_per_prompt=req.num_images,
                                              num_inference_steps=req.steps, noise=noise,
                                              negative_prior_prompt=req.negative_prompt,
                                              guidance_scale=req.guidance_scale, callback=step)
            emb = np.repeat(emb, neg.shape[0], axis=0)
        else:
            emb, neg = self.prior(req.prompt, negative_prompt=req.negative_prompt,
                                  num_images_per_prompt=req.num_images, num_inference_steps=req.steps,
                                  guidance_scale=req.guidance_scale, noise=noise, callback=step)
        self.counters["prior_runs"] += 1
        result = (emb.astype(np.float32), neg.astype(np.float32))
        if req.seed is not None:
            self._embedding_cache[key] = result
        return result

    @staticmethod
    def _mix_items(req: PriorRequest):
        items, weights = [], []
        if req.prompt:
            items.append(req.prompt)
            weights.append(1.0)
        for what, weight in req.mix:
            path = Path(what)
            items.append(load_image(path) if path.suffix.lower() in (".png", ".jpg", ".jpeg", ".webp") else what)
            weights.append(weight)
        return items, weights

    # -- stage 2 ------------------------------------------------------------------------------------------
    def inpaint(self, req: InpaintRequest, progress: Progress = None, write: bool = True) -> InpaintResult:
        from .grid import make_image_grid
        from .masks import paste_back
        from .noise import Noise

        req.validate()
        image = load_image(req.image)
        mask = req.mask.build((image.height, image.width))
        embeds = None
        if req.image_embeds is not None:
            embeds = (load_embeddings(req.image_embeds, "image embeddings"),
                      load_embeddings(req.negative_image_embeds, "negative image embeddings"))
        seed = req.seed if req.seed is not None else random_seed()
        timings: Dict[str, float] = {}

        if embeds is None:
            width_p, width_d = self.embedding_widths()
            if width_p != width_d:
                raise UserError(f"the prior {self.prior_model} makes {width_p}-wide embeddings but "
                                f"the decoder {self.decoder_model} expects {width_d}: the checkpoints do not match")
            t0 = time.perf_counter()
            embeds = self.run_prior(PriorRequest(req.prompt, req.negative_prompt, req.prior_steps,
                                                 req.prior_guidance_scale, req.num_images, seed), progress)
            timings["prior_s"] = time.perf_counter() - t0
            if self.release_prior_after_use:
                self.unload_prior()
        decoder = self.decoder
        width_e = decoder.image_embed_dim
        emb, neg = embeds
        for arr, what in ((emb, "image embeddings"), (neg, "negative image embeddings")):
            if arr.shape[1] != width_e:
                raise UserError(f"{what} have width {arr.shape[1]} but the decoder expects {width_e}")
        rows = emb.shape[0]
        if neg.shape[0] not in (1, rows):
            raise UserError(f"{neg.shape[0]} negative image embeddings for {rows} image embeddings")
        if rows > 1 and req.num_images not in (1, rows):
            raise UserError(f"the embeddings hold {rows} rows but --num-images is {req.num_images}")
        if rows == 1:
            prompts, per_prompt = req.prompt, req.num_images
        else:  # one output per embedding row, as diffusers' combined pipeline does after a prior run
            prompts, per_prompt = [req.prompt] * rows, 1
            neg = np.repeat(neg, rows // neg.shape[0], axis=0)
        count = rows * per_prompt
        pil_mask = mask_to_image(mask)
        step = (lambda i, n: progress("decoder", i, n)) if progress else None
        t0 = time.perf_counter()
        images = decoder(prompts, image, pil_mask, emb, neg, negative_prompt=req.negative_prompt,
                         height=req.height, width=req.width, num_inference_steps=req.steps,
                         guidance_scale=req.guidance_scale, num_images_per_prompt=per_prompt,
                         noise=Noise(seed), callback=step)
        timings["decoder_s"] = time.perf_counter() - t0
        self.counters["decoder_runs"] += 1

        outputs = [to_uint8(im) for im in images]
        if req.paste_back:
            weights = req.mask.blend_weights(mask)
            outputs = [paste_back(np.asarray(image), out, weights) for out in outputs]
        parameters = self.parameters(req, seed, count, embeds_given=req.image_embeds is not None)
        paths = numbered_paths(req.out, count)
        grid_path = req.grid_path() if req.save_grid else None
        if write:
            for path, out, k in zip(paths, outputs, range(count)):
                save_png(path, out, {**parameters, "index": k})
            if grid_path is not None:
                cells = [image, pil_mask.convert("RGB")] + [Image.fromarray(o) for o in outputs]
                save_png(grid_path, make_image_grid(cells, rows=1), parameters)
        return InpaintResult(paths, grid_path, seed, parameters, timings)

    def parameters(self, req: InpaintRequest, seed: int, count: int, embeds_given: bool) -> dict:
        return {
            "tool": "kandinsky", "version": __version__, "command": "inpaint",
            "image": str(req.image), **req.mask.parameters(), "prompt": req.prompt,
            "negative_prompt": req.negative_prompt, "seed": seed, "noise": "numpy.default_rng",
            "steps": req.steps, "guidance_scale": req.guidance_scale,
            "prior_steps": None if embeds_given else req.prior_steps,
            "prior_guidance_scale": None if embeds_given else req.prior_guidance_scale,
            "image_embeds": str(req.image_embeds) if embeds_given else None,
            "negative_image_embeds": str(req.negative_image_embeds) if embeds_given else None,
            "height": req.height, "width": req.width, "num_images": count, "paste_back": req.paste_back,
            "prior_model": None if embeds_given else self.prior_model, "decoder_model": self.decoder_model,
            "dtype": self.dtype_name,
        }


def write_prior_outputs(out_dir: Path, name: str, emb: np.ndarray, neg: np.ndarray, parameters: dict) -> dict:
    """``NAME.image_embeds.npy``, ``NAME.negative_image_embeds.npy`` and ``NAME.json``; returns the paths."""
    out_dir = Path(out_dir)
    paths = {"image_embeds": out_dir / f"{name}.image_embeds.npy",
             "negative_image_embeds": out_dir / f"{name}.negative_image_embeds.npy",
             "parameters": out_dir / f"{name}.json"}
    save_npy(paths["image_embeds"], emb.astype(np.float32))
    save_npy(paths["negative_image_embeds"], neg.astype(np.float32))
    save_json(paths["parameters"], {**parameters, "shape": list(emb.shape)})
    return {k: str(v) for k, v in paths.items()}
