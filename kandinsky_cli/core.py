"""The engine: what stays loaded between runs (device, precision, model folders, the prior, the decoder and its
text encoder) and the steps of a run over a :class:`requests.Prepared` job: embeddings (given files, or the prior)
-> decode -> compose (paste back) -> write. ``inpaint``, the batch runner and the server call the same steps.

No command-line parsing here (cli.py) and no network math (the pipelines); requests and their inputs are
:mod:`.requests`.
"""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from PIL import Image

from . import __version__, model_io, options
from .cache import compile_cache
from .errors import UserError
from .files import atomic_set, numbered_paths, save_json, save_npy, save_png
from .masks import mask_to_image
from .memory import unet_call_rows
from .precision import Precision
from .region import Plan
from .requests import Embeddings, InpaintRequest, InpaintResult, Prepared, PriorRequest, prepare as prepare_inputs

# progress(stage, step, total): stage is "prior" or "decoder"
Progress = Optional[Callable[[str, int, int], None]]
#: Priors with at least this many bytes of weights run in a child process when they are to be freed after use.
PRIOR_CHILD_BYTES = 512 * 1024 ** 2


def to_uint8(image: np.ndarray) -> np.ndarray:
    """[0, 1] float HWC -> uint8 the way diffusers' ``numpy_to_pil`` does: round(x * 255)."""
    return np.rint(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


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
        self._precision: Optional[Precision] = None
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
    def precision(self) -> Precision:
        """--dtype resolved for the engine's device, once (a UserError where it cannot run)."""
        if self._precision is None:
            self._precision = Precision.resolve(self.dtype_requested, self.select_device())
        return self._precision

    def root(self, stage: str) -> Path:
        """The local folder of a stage ("prior" or "decoder"), downloading it once if it is a hub id."""
        if stage not in self._roots:
            model = self.prior_model if stage == "prior" else self.decoder_model
            # download.select_files: float16 reads the fp16 files where a repo has them, every other dtype float32
            from .download import resolve_model_dir

            self._roots[stage] = resolve_model_dir(model, offline=self.offline, dtype=self.dtype_requested)
        return self._roots[stage]

    def select_device(self) -> str:
        """Put the process on the engine's device, once, before any network is built."""
        if self.device_target is None:
            from .system import select_device

            self.device_target = select_device(self.device, self.device_id)
            compile_cache.configure(self.device_target, self.mode, self.precision.name)
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
            from .prior_stage import load_prior

            self.select_device()
            self._prior = load_prior(self.root("prior"), self.precision, mode)
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
            self._decoder = InpaintPipeline(self.root("decoder"), self.precision.ms_dtype, self.mode,
                                            bf16=self.precision.bf16)
            self.counters["decoder_loads"] += 1
        return self._decoder

    # -- stage 1 ------------------------------------------------------------------------------------------
    def run_prior(self, req: PriorRequest, progress: Progress = None, keep: bool = True) -> Embeddings:
        """(image_embeds, negative_image_embeds), float32 (N, E); cached per distinct request with a seed.
        ``keep``: the prior stays loaded (compiled per the engine's mode); otherwise it runs eagerly."""
        from .prior_stage import embed

        key = req.cache_key()
        if req.seed is not None and key in self._embedding_cache:
            return self._embedding_cache[key]
        prior = self._load_prior(self.mode if keep else "pynative")
        result = embed(prior, req, (lambda i, n: progress("prior", i, n)) if progress else None)
        self.counters["prior_runs"] += 1
        if req.seed is not None:
            self._embedding_cache[key] = result
        return result

    def make_embeddings(self, requests: Sequence[PriorRequest], progress: Progress = None) -> None:
        """Run the prior for every request not cached yet, then free it: the decoder runs that follow find the
        embeddings in the cache and the prior's memory is back before the decoder loads. A large prior runs
        compiled in a child process (:mod:`.prior_stage`); a small one eagerly in this process."""
        todo = list({r.cache_key(): r for r in requests if r.cache_key() not in self._embedding_cache}.values())
        if not todo:
            return
        self.check_embedding_widths()
        if self._decoder is None:
            model_io.prefetch(self.root("decoder"))    # read the decoder's weights while the prior computes
        if self._prior is None and self.prior_in_child():
            from .prior_stage import run_prior_in_child

            report = (lambda n, i, total: progress("prior", i, total)) if progress else None
            results = run_prior_in_child(self.root("prior"), self.precision, self.mode, self.device, self.device_id,
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
        """:func:`requests.prepare` (every input and output location) and :meth:`preflight`; no network is built."""
        return self.preflight(prepare_inputs(req))

    def preflight(self, job: Prepared) -> Prepared:
        """What the model folders say about a prepared job, before any network is built: the folders exist (hub ids
        are downloaded), the sampler takes the steps, the run fits in memory."""
        if job.request.uses_prior:
            self.root("prior")
        job.unet_rows = self.check_decoder_run(job.request, job.plan)
        return job

    def check_decoder_run(self, req: InpaintRequest, plan: Plan, dtype: Optional[str] = None) -> int:
        """What the decoder folder says about a request before anything is computed: the sampler takes its steps, the
        run fits in memory (at ``dtype``, default the engine's), with how many UNet rows per call (returned).
        ``batch --check`` makes the same checks."""
        self.check_sampler(req)
        rows = req.num_images * (2 if req.guidance_scale > 1.0 else 1)
        width, height = plan.working_size
        return unet_call_rows(self.root("decoder"), height, width, rows, dtype or self.precision.name,
                              loaded=self._decoder is not None)

    def check_sampler(self, req: InpaintRequest) -> None:
        """The sampler can take the request's steps with the decoder folder's scheduler config."""
        check_steps(self.root("decoder"), req.scheduler, req.steps)

    def embeddings(self, job: Prepared, progress: Progress = None) -> Embeddings:
        """The job's embeddings: its files, or the prior's (made now, or earlier by :meth:`make_embeddings`)."""
        if job.embeddings is not None:
            return job.embeddings
        t0 = time.perf_counter()
        prior_req = job.request.prior_request(job.seed, job.mix_images)
        self.make_embeddings([prior_req], progress)
        if job.request.uses_prior and "prior_s" not in job.timings:
            job.timings["prior_s"] = time.perf_counter() - t0
        return self._embedding_cache[prior_req.cache_key()]

    def decoder_texts(self, requests: Sequence[InpaintRequest]) -> List[str]:
        """Every text the decoder's text encoder will encode for these requests."""
        from .inpaint_pipeline import texts_to_encode

        return [t for r in requests for t in texts_to_encode(r.decoder_prompt, r.negative_prompt, r.guidance_scale)]

    def encode_texts(self, requests: Sequence[InpaintRequest]) -> None:
        """Encode (and cache) every text the requests' decoder runs need, with one load of the text encoder, which
        is then freed again."""
        decoder = self.decoder
        with decoder.holding_text_encoder():
            decoder.encode_text(self.decoder_texts(requests))

    def decode(self, job: Prepared, embeddings: Embeddings, progress: Progress = None) -> List[np.ndarray]:
        """The decoder's images, uint8 (H, W, 3) at the working size, one per output."""
        from .noise import make_noise

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
            prompts, per_prompt = req.decoder_prompt, req.num_images
        else:  # one output per embedding row, as diffusers' combined pipeline does after a prior run
            prompts, per_prompt = [req.decoder_prompt] * rows, 1
            neg = np.repeat(neg, rows // neg.shape[0], axis=0)
        step = (lambda i, n: progress("decoder", i, n)) if progress else None
        image, mask = job.plan.crop(job.image, job.mask)
        width, height = job.plan.working_size
        compile_cache.set_hint(f"decoder {height}x{width} rows={rows * per_prompt} cfg={req.guidance_scale > 1.0}")
        t0 = time.perf_counter()
        x0, y0, x1, y1 = job.plan.region_box
        change = job.blend[y0:y1, x0:x1] if req.soft else None   # with --soft the blend weights are the change map
        images = decoder(prompts, image, mask_to_image(mask), emb, neg, negative_prompt=req.negative_prompt,
                         height=height, width=width, num_inference_steps=req.steps, scheduler=req.scheduler,
                         guidance_scale=req.guidance_scale, num_images_per_prompt=per_prompt,
                         noise=make_noise(job.seed, req.variation_seed, req.variation_strength), callback=step,
                         timings=job.timings, strength=req.strength, change_map=change, unet_rows=job.unet_rows)
        job.timings["decoder_s"] = time.perf_counter() - t0
        self.counters["decoder_runs"] += 1
        return [to_uint8(im) for im in images]

    def compose(self, job: Prepared, images: List[np.ndarray]) -> List[np.ndarray]:
        """The final pixels: pasted back into the canvas (everything outside the grown, feathered mask and outside
        the region box is the input's, bit for bit), or the raw model output with ``paste_back`` off."""
        from .colour import match_job

        canvas = np.asarray(job.image)
        if job.request.paste_back:
            images = [job.plan.compose(canvas, image, job.blend) for image in images]
        return match_job(job, images) if job.request.color_match else images

    def parameters(self, job: Prepared, count: int) -> dict:
        """Everything needed to reproduce the outputs, for the PNG metadata and the manifest."""
        req = job.request
        values = req.parameters()
        if not req.uses_prior:
            values.update(prior_steps=None, prior_guidance_scale=None)
        return {"tool": "kandinsky", "version": __version__, "command": "inpaint", **values, **job.plan.parameters(),
                "seed": job.seed, "noise": "numpy.default_rng", "num_images": count,
                "prior_model": self.prior_model if req.uses_prior else None, "decoder_model": self.decoder_model,
                **self.precision.parameters(), "mode": self.mode}

    def prior_parameters(self, req: PriorRequest) -> dict:
        """Everything needed to reproduce a ``kandinsky prior`` run, for its JSON file."""
        return {"tool": "kandinsky", "version": __version__, "command": "prior", **req.parameters(),
                "noise": "numpy.default_rng", "prior_model": self.prior_model, **self.precision.parameters(),
                "mode": self.mode}

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


def write_prior_outputs(out_dir: Path, name: str, emb: np.ndarray, neg: np.ndarray, parameters: dict) -> dict:
    """``NAME.image_embeds.npy``, ``NAME.negative_image_embeds.npy`` and ``NAME.json``; returns the paths."""
    paths = prior_output_paths(out_dir, name)
    with atomic_set() as files:   # the three files together or none
        save_npy(paths["image_embeds"], emb.astype(np.float32), into=files)
        save_npy(paths["negative_image_embeds"], neg.astype(np.float32), into=files)
        save_json(paths["parameters"], {**parameters, "shape": list(emb.shape)}, into=files)
    return {k: str(v) for k, v in paths.items()}


def prior_outputs(out_dir: Path, name: str) -> Dict[str, Path]:
    """The prior's output files for ``--name``, checked to be writable before any model loads."""
    from .files import check_writable_output

    if "/" in name or not name.strip() or "\0" in name:
        raise UserError(f"bad --name {name!r}: a file name stem without '/'")
    paths = prior_output_paths(out_dir, name)
    for path in paths.values():
        check_writable_output(path)
    return paths


def prior_output_paths(out_dir: Path, name: str) -> Dict[str, Path]:
    out_dir = Path(out_dir)
    return {"image_embeds": out_dir / f"{name}.image_embeds.npy",
            "negative_image_embeds": out_dir / f"{name}.negative_image_embeds.npy",
            "parameters": out_dir / f"{name}.json"}
