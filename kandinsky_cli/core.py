"""The thin core behind the CLI: the requests, and the engine that loads each stage once and runs them.

No command-line parsing here (cli.py does that) and no network math (the pipelines do that). A request holds the
values of the options defined in options.py; :meth:`Kandinsky.inpaint` runs one the way the pipeline reads:
prepare (read and check every input, before any model loads) -> embeddings (given files, or the prior) -> decode
-> compose (paste back) -> write. The batch runner calls the same steps.
"""
from __future__ import annotations

import gc
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from . import __version__, model_io, options
from .errors import UserError
from .files import atomic_set, check_writable_output, load_image, numbered_paths, save_json, save_npy, save_png
from .cache import Constants, compile_cache
from .masks import MaskSpec, mask_to_image
from .memory import check_decoder_fits
from .noise import random_seed
from .options import Settings
from .region import Plan, plan as region_plan

# progress(stage, step, total): stage is "prior" or "decoder"
Progress = Optional[Callable[[str, int, int], None]]
Embeddings = Tuple[np.ndarray, np.ndarray]
#: Priors with at least this many bytes of weights run in a child process when they are to be freed after use.
PRIOR_CHILD_BYTES = 512 * 1024 ** 2


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


# ------------------------------------------------------------------------------------------ requests

class PriorRequest(Settings):
    """Stage 1: prompt (and/or a mix of prompts and images) -> image embeddings."""

    KEYS = options.PRIOR_KEYS

    def __init__(self, values):
        super().__init__({"prompt": None, **values})
        if not self.mix and self.prompt is None:
            raise UserError("no prompt given: give PROMPT (or --prompt), or --mix")
        options.check_mix(self.prompt, self.mix)

    def cache_key(self) -> tuple:
        return tuple(sorted(self.values().items()))


class InpaintRequest(Settings):
    """Stage 2 (and stage 1 when no embeddings are given): one inpainting job, every option of options.JOB_KEYS."""

    KEYS = options.JOB_KEYS

    def __init__(self, values):
        super().__init__(values)
        options.check_pairs(self.values())
        if self.out is None:
            raise UserError("no output file given (--out)")

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

    def prior_request(self, seed: int) -> PriorRequest:
        return PriorRequest({"prompt": self.prompt, "negative_prompt": self.negative_prompt,
                             "prior_steps": self.prior_steps, "prior_guidance_scale": self.prior_guidance_scale,
                             "num_images": self.num_images, "seed": seed})


@dataclass
class Prepared:
    """A request with its inputs read and checked: what the model stages need."""

    request: InpaintRequest
    image: Image.Image             # the canvas: the input image, extended by --extend
    mask: np.ndarray               # bool (H, W) of the canvas, True = repaint: the hard mask the model sees
    seed: int
    plan: Plan                     # working size and region box
    blend: np.ndarray              # float (H, W) paste-back weights: the user's feathered mask, margins 1
    embeddings: Optional[Embeddings] = None   # from --image-embeds files; None: the prior makes them
    timings: Dict[str, float] = field(default_factory=dict)


@dataclass
class InpaintResult:
    outputs: List[Path]
    grid: Optional[Path]
    seed: int
    parameters: dict
    timings: Dict[str, float]


# ------------------------------------------------------------------------------------------ the engine

class Kandinsky:
    """Both stages, each loaded on first use.

    Memory policy: the prior (~1.5 B parameters at real size) is freed once the embeddings a decoder run needs are
    made, before the decoder loads, so the two are never resident together. MindSpore never frees a compiled
    network's parameters, so a prior that will be freed runs eagerly; the ``prior`` command keeps it compiled.
    """

    def __init__(self, prior_model: str = options.DEFAULT_PRIOR, decoder_model: str = options.DEFAULT_DECODER,
                 dtype: str = "auto", offline: bool = False, mode: str = "graph", device: Optional[str] = None,
                 device_id: Optional[int] = None):
        self.dtype_requested = options.check_value("dtype", dtype, "--dtype")
        self._dtype_name: Optional[str] = None
        self.mode = options.check_value("mode", mode, "--mode")
        self.device = options.check_value("device", device, "--device")
        self.device_id = device_id      # the card of an msrun worker; None: $DEVICE_ID
        self.device_target: Optional[str] = None
        self.prior_model, self.decoder_model, self.offline = prior_model, decoder_model, offline
        self._prior = self._decoder = None
        self._prior_mode: Optional[str] = None
        self._roots: Dict[str, Path] = {}
        self.counters = {"prior_loads": 0, "decoder_loads": 0, "prior_runs": 0, "decoder_runs": 0}
        self._embedding_cache: Dict[tuple, Embeddings] = {}

    def counter_snapshot(self) -> Dict[str, int]:
        """Loads and runs so far, with the decoder's text encoder loads (it is freed after each use)."""
        text_loads = self._decoder.text_encoder_loads if self._decoder is not None else 0
        return {**self.counters, "text_encoder_loads": text_loads}

    @property
    def dtype_name(self) -> str:
        """The dtype the networks run in: --dtype, with "auto" resolved for the device (see bf16.resolve_dtype)."""
        if self._dtype_name is None:
            from .bf16 import resolve_dtype

            self._dtype_name = resolve_dtype(self.dtype_requested, self.select_device())
        return self._dtype_name

    @property
    def ms_dtype(self):
        """The dtype of weights and activations (bfloat16 keeps both float32; its products use bf16 operators)."""
        import mindspore as ms

        return ms.float16 if self.dtype_name == "float16" else ms.float32

    @property
    def bf16(self) -> bool:
        return self.dtype_name == "bfloat16"

    def root(self, stage: str) -> Path:
        """The local folder of a stage ("prior" or "decoder"), downloading it once if it is a hub id."""
        if stage not in self._roots:
            model = self.prior_model if stage == "prior" else self.decoder_model
            # download.select_files: float16 reads the fp16 files where a repo has them, every other dtype float32
            self._roots[stage] = model_io.resolve_model_dir(model, offline=self.offline, dtype=self.dtype_requested)
        return self._roots[stage]

    def select_device(self) -> str:
        """Put the process on the engine's device, once, before any network is built."""
        if self.device_target is None:
            from .system import select_device

            self.device_target = select_device(self.device, self.device_id)
            compile_cache.configure(self.device_target, self.mode, self.dtype_name)
        return self.device_target

    def check_embedding_widths(self) -> None:
        """The prior's embeddings must have the width the decoder expects (from the configs alone)."""
        from .prior import embedding_width
        from .unet import image_embed_dim

        width_p = embedding_width(model_io.read_config(self.root("prior") / "prior"))
        width_d = image_embed_dim(model_io.read_config(self.root("decoder") / "unet"))
        if width_p != width_d:
            raise UserError(f"the prior {self.prior_model} makes {width_p}-wide embeddings but the decoder "
                            f"{self.decoder_model} expects {width_d}: the checkpoints do not match")

    def _load_prior(self, mode: str):
        if self._prior is None:
            from .prior_pipeline import PriorPipeline

            self.select_device()
            self._prior = PriorPipeline(self.root("prior"), self.ms_dtype, mode, bf16=self.bf16,
                                        constants=Constants(), dtype_name=self.dtype_name)
            self._prior_mode = mode
            self.counters["prior_loads"] += 1
        return self._prior

    def unload_prior(self) -> None:
        """Drop the prior's networks (they are reloaded on next use)."""
        self._prior = None
        gc.collect()

    @property
    def decoder(self):
        if self._decoder is None:
            from .inpaint_pipeline import InpaintPipeline

            self.select_device()
            self._decoder = InpaintPipeline(self.root("decoder"), self.ms_dtype, self.mode, bf16=self.bf16)
            self.counters["decoder_loads"] += 1
        return self._decoder

    # -- stage 1 ------------------------------------------------------------------------------------------
    def run_prior(self, req: PriorRequest, progress: Progress = None, keep: bool = True) -> Embeddings:
        """(image_embeds, negative_image_embeds), float32 (N, E); cached per distinct request with a seed.
        ``keep``: the prior stays loaded (compiled per the engine's mode); otherwise it runs eagerly."""
        from .noise import Noise

        key = req.cache_key()
        if req.seed is not None and key in self._embedding_cache:
            return self._embedding_cache[key]
        compile_cache.set_hint(f"prior images={req.num_images} negative={req.negative_prompt is not None} "
                               f"mix={len(req.mix or ())} guided={req.prior_guidance_scale > 1.0}")
        prior = self._load_prior(self.mode if keep else "pynative")
        step = (lambda i, n: progress("prior", i, n)) if progress else None
        noise = Noise(req.seed if req.seed is not None else random_seed())
        common = dict(num_inference_steps=req.prior_steps, guidance_scale=req.prior_guidance_scale, noise=noise,
                      callback=step)
        if req.mix:
            items, weights = self._mix_items(req)
            emb, neg = prior.interpolate(items, weights, num_images_per_prompt=req.num_images,
                                         negative_prior_prompt=req.negative_prompt, **common)
            emb = np.repeat(emb, neg.shape[0], axis=0)
        else:
            emb, neg = prior(req.prompt, negative_prompt=req.negative_prompt, num_images_per_prompt=req.num_images,
                             **common)
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
            is_image = Path(what).suffix.lower() in options.IMAGE_SUFFIXES
            items.append(load_image(what) if is_image else what)
            weights.append(weight)
        return items, weights

    def make_embeddings(self, requests: Sequence[PriorRequest], progress: Progress = None) -> None:
        """Run the prior for every request not cached yet, then free it: the decoder runs that follow find the
        embeddings in the cache and the prior's memory is back before the decoder loads. A large prior runs
        compiled in a child process (:mod:`.prior_process`); a small one eagerly in this process."""
        todo = list({r.cache_key(): r for r in requests if r.cache_key() not in self._embedding_cache}.values())
        if not todo:
            return
        self.check_embedding_widths()
        if self._decoder is None:
            model_io.prefetch(self.root("decoder"))    # read the decoder's weights while the prior computes
        if self._prior is None and self.prior_in_child():
            from .prior_process import run_prior_in_child

            report = (lambda n, i, total: progress("prior", i, total)) if progress else None
            results = run_prior_in_child(self.root("prior"), self.dtype_name, self.mode, self.device, self.device_id,
                                         todo, report)
            self.counters["prior_loads"] += 1
            for req, result in zip(todo, results):
                self._embedding_cache[req.cache_key()] = result
                self.counters["prior_runs"] += 1
            return
        try:
            for req in todo:
                self.run_prior(req, progress, keep=False)
        finally:
            self.unload_prior()

    def prior_in_child(self) -> bool:
        """Whether a prior that is freed after use runs in a child process: when it is compiled (graph mode) and its
        weights are large (real size: ~4 GB), or as $KANDINSKY_PRIOR_PROCESS says (child, inline or auto)."""
        choice = os.environ.get("KANDINSKY_PRIOR_PROCESS", "auto").strip().lower()
        if choice in ("child", "inline"):
            return choice == "child"
        if self.mode != "graph":
            return False
        from .memory import weight_bytes

        root = self.root("prior")
        return sum(weight_bytes(root / part) for part in ("prior", "text_encoder", "image_encoder")) >= PRIOR_CHILD_BYTES

    # -- stage 2, step by step ----------------------------------------------------------------------------
    def prepare(self, req: InpaintRequest) -> Prepared:
        """Read and check every input of a request and its output locations, find the model folders (downloading
        hub ids) and check that the run fits in memory; no network is built."""
        options.check_mask_given(req.values())
        for path in req.outputs + ([req.grid_path] if req.grid_path else []):
            check_writable_output(path)
        image, mask, blend = canvas_and_mask(req)
        plan = make_plan(req, image.size, mask)
        embeddings = None
        if not req.uses_prior:
            embeddings = (load_embeddings(req.image_embeds, "image embeddings"),
                          load_embeddings(req.negative_image_embeds, "negative image embeddings"))
        if req.uses_prior:
            self.root("prior")
        self.check_decoder_run(req, plan)
        seed = req.seed if req.seed is not None else random_seed()
        return Prepared(req, image, mask, seed, plan, blend, embeddings)

    def check_decoder_run(self, req: InpaintRequest, plan: Plan, dtype: Optional[str] = None) -> None:
        """What the decoder folder says about a request before anything is computed: the sampler takes its steps, the
        run fits in memory (at ``dtype``, default the engine's). ``batch --check`` makes the same checks."""
        self.check_sampler(req)
        rows = req.num_images * (2 if req.guidance_scale > 1.0 else 1)
        width, height = plan.working_size
        check_decoder_fits(self.root("decoder"), height, width, rows, dtype or self.dtype_name)

    def check_sampler(self, req: InpaintRequest) -> None:
        """The sampler can take the request's steps with the decoder folder's scheduler config."""
        check_steps(self.root("decoder"), req.scheduler, req.steps)

    def embeddings(self, job: Prepared, progress: Progress = None) -> Embeddings:
        """The job's embeddings: its files, or the prior's (made now, or earlier by :meth:`make_embeddings`)."""
        if job.embeddings is not None:
            return job.embeddings
        t0 = time.perf_counter()
        prior_req = job.request.prior_request(job.seed)
        self.make_embeddings([prior_req], progress)
        if job.request.uses_prior and "prior_s" not in job.timings:
            job.timings["prior_s"] = time.perf_counter() - t0
        return self._embedding_cache[prior_req.cache_key()]

    def decoder_texts(self, requests: Sequence[InpaintRequest]) -> List[str]:
        """Every text the decoder's text encoder will encode for these requests."""
        from .inpaint_pipeline import texts_to_encode

        return [t for r in requests for t in texts_to_encode(r.prompt, r.negative_prompt, r.guidance_scale)]

    def encode_texts(self, requests: Sequence[InpaintRequest]) -> None:
        """Encode (and cache) every text the requests' decoder runs need, with one load of the text encoder, which
        is then freed again."""
        decoder = self.decoder
        with decoder.holding_text_encoder():
            decoder.encode_text(self.decoder_texts(requests))

    def decode(self, job: Prepared, embeddings: Embeddings, progress: Progress = None) -> List[np.ndarray]:
        """The decoder's images, uint8 (H, W, 3) at the working size, one per output."""
        from .noise import Noise

        req = job.request
        t0 = time.perf_counter()
        decoder = self.decoder
        if time.perf_counter() - t0 > 0.01:
            job.timings["decoder_load_s"] = time.perf_counter() - t0
        emb, neg = embeddings
        width = decoder.image_embed_dim
        for arr, what in ((emb, "image embeddings"), (neg, "negative image embeddings")):
            if arr.shape[1] != width:
                raise UserError(f"{what} have width {arr.shape[1]} but the decoder expects {width}")
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
        step = (lambda i, n: progress("decoder", i, n)) if progress else None
        image, mask = job.plan.crop(job.image, job.mask)
        width, height = job.plan.working_size
        compile_cache.set_hint(f"decoder {height}x{width} rows={rows * per_prompt} cfg={req.guidance_scale > 1.0}")
        t0 = time.perf_counter()
        images = decoder(prompts, image, mask_to_image(mask), emb, neg, negative_prompt=req.negative_prompt,
                         height=height, width=width, num_inference_steps=req.steps, scheduler=req.scheduler,
                         guidance_scale=req.guidance_scale, num_images_per_prompt=per_prompt,
                         noise=Noise(job.seed), callback=step, timings=job.timings)
        job.timings["decoder_s"] = time.perf_counter() - t0
        self.counters["decoder_runs"] += 1
        return [to_uint8(im) for im in images]

    def compose(self, job: Prepared, images: List[np.ndarray]) -> List[np.ndarray]:
        """The final pixels: pasted back into the canvas (everything outside the grown, feathered mask and outside
        the region box is the input's, bit for bit), or the raw model output with ``paste_back`` off."""
        if not job.request.paste_back:
            return images
        canvas = np.asarray(job.image)
        return [job.plan.compose(canvas, image, job.blend) for image in images]

    def parameters(self, job: Prepared, count: int) -> dict:
        """Everything needed to reproduce the outputs, for the PNG metadata and the manifest."""
        req = job.request
        values = req.parameters()
        if not req.uses_prior:
            values.update(prior_steps=None, prior_guidance_scale=None)
        return {"tool": "kandinsky", "version": __version__, "command": "inpaint", **values, **job.plan.parameters(),
                "seed": job.seed, "noise": "numpy.default_rng", "num_images": count,
                "prior_model": self.prior_model if req.uses_prior else None, "decoder_model": self.decoder_model,
                "dtype": self.dtype_name, "dtype_requested": self.dtype_requested, "mode": self.mode}

    def write(self, job: Prepared, outputs: List[np.ndarray], write: bool = True) -> InpaintResult:
        """Write the outputs (and the grid) with their parameters as PNG metadata."""
        from .grid import make_image_grid

        req = job.request
        parameters = self.parameters(job, len(outputs))
        paths = numbered_paths(req.out, len(outputs))
        grid = req.grid_path
        if write:   # all-or-nothing: every output (and the grid) or none of them
            with atomic_set() as files:
                for k, (path, out) in enumerate(zip(paths, outputs)):
                    save_png(path, out, {**parameters, "index": k}, into=files)
                if grid is not None:
                    cells = [job.image, mask_to_image(job.mask).convert("RGB")] + [Image.fromarray(o) for o in outputs]
                    save_png(grid, make_image_grid(cells, rows=1), parameters, into=files)
        return InpaintResult(paths, grid, job.seed, parameters, job.timings)

    def run(self, job: Prepared, progress: Progress = None, write: bool = True) -> InpaintResult:
        """A prepared request: embeddings -> decode -> compose -> write."""
        embeddings = self.embeddings(job, progress)
        images = self.decode(job, embeddings, progress)
        return self.write(job, self.compose(job, images), write)

    def inpaint(self, req: InpaintRequest, progress: Progress = None, write: bool = True) -> InpaintResult:
        """One request: prepare -> embeddings -> decode -> compose -> write."""
        return self.run(self.prepare(req), progress, write)


def check_steps(decoder_root: Path, scheduler: str, steps: int) -> None:
    """The one rule for step counts a sampler can take, from the decoder folder's scheduler config: an
    :class:`options.Conflict` (flags on the command line, keys in batch files)."""
    from .schedulers import make_decoder_scheduler

    config = model_io.read_scheduler_config(Path(decoder_root) / "scheduler")
    with model_io.config_errors(config.source):
        sampler = make_decoder_scheduler(scheduler, config)
    try:
        sampler.timesteps(steps)
    except ValueError as e:
        raise options.Conflict("{steps} {n} with {scheduler} {name}: {reason}", ("steps", "scheduler"), n=str(steps),
                               name=scheduler, reason=str(e)) from None


def canvas_and_mask(req: InpaintRequest) -> Tuple[Image.Image, np.ndarray, np.ndarray]:
    """(canvas, hard mask, paste-back weights) of a request: the input image with its mask, extended by --extend (the
    margins join the mask and paste back whole; the original pixels blend as the user's feathered mask says)."""
    from .masks import feather_weights
    from .region import extend_canvas

    image = load_image(req.image)
    size_hw = (image.height, image.width)
    mask = req.mask_spec().build(size_hw) if req.has_mask else np.zeros(size_hw, dtype=bool)
    blend = feather_weights(mask, req.feather) if req.has_mask else np.zeros(size_hw, dtype=np.float32)
    if req.extend is None:
        return image, mask, blend
    canvas, mask = extend_canvas(image, mask if req.has_mask else None, req.extend, req.extend_fill)
    return canvas, mask, req.extend.pad(blend, 1.0)


def make_plan(req: InpaintRequest, canvas_size: Tuple[int, int], mask: np.ndarray) -> Plan:
    """Working size and region box of a request on its canvas."""
    return region_plan(canvas_size, mask, req.region, req.region_padding, req.resolution, req.height, req.width,
                       feather=req.feather, extend=req.extend)


def write_prior_outputs(out_dir: Path, name: str, emb: np.ndarray, neg: np.ndarray, parameters: dict) -> dict:
    """``NAME.image_embeds.npy``, ``NAME.negative_image_embeds.npy`` and ``NAME.json``; returns the paths."""
    paths = prior_output_paths(out_dir, name)
    with atomic_set() as files:   # the three files together or none
        save_npy(paths["image_embeds"], emb.astype(np.float32), into=files)
        save_npy(paths["negative_image_embeds"], neg.astype(np.float32), into=files)
        save_json(paths["parameters"], {**parameters, "shape": list(emb.shape)}, into=files)
    return {k: str(v) for k, v in paths.items()}


def prior_output_paths(out_dir: Path, name: str) -> Dict[str, Path]:
    out_dir = Path(out_dir)
    return {"image_embeds": out_dir / f"{name}.image_embeds.npy",
            "negative_image_embeds": out_dir / f"{name}.negative_image_embeds.npy",
            "parameters": out_dir / f"{name}.json"}
