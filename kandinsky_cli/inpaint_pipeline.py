"""Stage 2: image + mask + image embeddings -> image, step for step as diffusers' ``KandinskyInpaintPipeline``."""
from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

import numpy as np

from . import model_io
from .memory import equal_call_sizes
from .noise import as_noise
from .schedulers import make_decoder_scheduler, strength_timesteps

StepCallback = Optional[Callable[[int, int], None]]

# The model_index.json entries of the components loaded here.
INPAINT_COMPONENTS = ("text_encoder", "tokenizer", "unet", "movq", "scheduler")


def get_new_h_w(h: int, w: int, scale_factor: int) -> tuple:
    """diffusers' ``get_new_h_w``: the latent size, ceil(h / f**2) * f."""
    new_h = -(-h // scale_factor**2) * scale_factor
    new_w = -(-w // scale_factor**2) * scale_factor
    return new_h, new_w


def preprocess_image(image, height: int, width: int) -> np.ndarray:
    """PIL image -> bicubic resize (reducing_gap=1) to (width, height); uint8 (H, W, 3) array -> as is.

    Returns (1, 3, H, W) float32 in [-1, 1].
    """
    if not isinstance(image, np.ndarray):
        from PIL import Image

        image = np.asarray(image.resize((width, height), resample=Image.Resampling.BICUBIC, reducing_gap=1)
                           .convert("RGB"))
    arr = image[None].transpose(0, 3, 1, 2).astype(np.float32)
    return arr / np.float32(127.5) - np.float32(1.0)


def preprocess_mask(mask, height: int, width: int) -> np.ndarray:
    """PIL mask -> LANCZOS resize, luminance / 255; float (H, W) array -> as is. Binarised at 0.5, then
    inverted to the model's convention (1 = keep). Returns (1, 1, H, W) float32."""
    if not isinstance(mask, np.ndarray):
        from PIL import Image

        mask = np.asarray(mask.resize((width, height), resample=Image.Resampling.LANCZOS).convert("L"),
                          dtype=np.float32) / np.float32(255.0)
    mask = (np.asarray(mask, dtype=np.float32) >= 0.5).astype(np.float32)
    return (1.0 - mask)[None, None]


def texts_to_encode(prompt: str, negative_prompt: Optional[str], guidance_scale: float) -> List[str]:
    """The texts a call encodes: the prompt, and with guidance the negative prompt ("" when none is given)."""
    texts = [prompt]
    if guidance_scale > 1.0:
        texts.append("" if negative_prompt is None else negative_prompt)
    return texts


def nearest_resize(a: np.ndarray, h: int, w: int) -> np.ndarray:
    """torch ``F.interpolate(mode='nearest')`` on the last two axes: source index floor(i * in / out)."""
    rows = (np.arange(h) * a.shape[-2]) // h
    cols = (np.arange(w) * a.shape[-1]) // w
    return a[..., rows[:, None], cols[None, :]]


def latent_change_map(change: np.ndarray, h: int, w: int) -> np.ndarray:
    """A soft change map (H, W) in [0, 1] at the latent size (h, w): Pillow's BOX filter, i.e. the mean of the pixels
    each latent covers (exactly the mean of each 8x8 block when H = 8h and W = 8w)."""
    from PIL import Image

    change = np.asarray(change, dtype=np.float32)
    if change.shape == (h, w):
        return change.copy()
    small = Image.fromarray(change).resize((w, h), resample=Image.Resampling.BOX)
    return np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)


def soft_thresholds(n: int) -> np.ndarray:
    """Soft inpainting's threshold of each of the n steps a run takes: 1 - i / n (1, ..., 1/n). At step i the latents
    whose change value is below it are reset to the original latents noised to that step's timestep."""
    return (1.0 - np.arange(n, dtype=np.float64) / n).astype(np.float32)


def soft_keep_masks(change_latent: np.ndarray, n: int) -> np.ndarray:
    """(n, h, w) bool: where each step resets the latents to the noised original (change < threshold)."""
    return change_latent[None] < soft_thresholds(n)[:, None, None]


class SoftReset:
    """Soft inpainting's resets of a run that starts at entry ``start`` of the sampler's schedule: before step i,
    the latents where ``keep[i]`` (:func:`soft_keep_masks`) become ``original`` noised to entry start + i with the
    initial noise draw (the sampler's ``add_noise``). ``keep`` None: no reset (a hard mask)."""

    def __init__(self, sampler, original: np.ndarray, initial_noise: np.ndarray, start: int,
                 keep: Optional[np.ndarray]):
        self.sampler, self.original, self.initial_noise, self.start, self.keep = (sampler, original, initial_noise,
                                                                                  start, keep)

    def __call__(self, i: int, latents: np.ndarray) -> np.ndarray:
        if self.keep is None or not self.keep[i].any():
            return latents
        return np.where(self.keep[i], self.sampler.add_noise(self.original, self.initial_noise, self.start + i),
                        latents)


# (di, dj) offsets from a non-keep pixel to the neighbours the pipeline's erosion zeroes (anti-diagonals are not).
_EROSION_OFFSETS = ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1))


def erode_keep_mask(mask: np.ndarray) -> np.ndarray:
    """diffusers Kandinsky ``prepare_mask``, vectorised: every pixel != 1 zeroes six of its neighbours."""
    src = mask != 1
    hit = np.zeros_like(src)
    h, w = mask.shape[-2:]
    for di, dj in _EROSION_OFFSETS:
        # target (i + di, j + dj) is hit when source (i, j) is set
        hit[..., max(di, 0):h + min(di, 0), max(dj, 0):w + min(dj, 0)] |= \
            src[..., max(-di, 0):h - max(di, 0), max(-dj, 0):w - max(dj, 0)]
    return np.where(hit, np.zeros_like(mask), mask)


# Above this many output pixels the MoVQ runs eagerly. Compiled, the real MoVQ at 768x768 decodes in 33 s
# against 63 s eagerly with a peak of ~5 GB (it was 12.9 GB before SpatialNorm's zq branch was tied to its
# input); larger sizes have not been measured, so they stay eager.
MOVQ_GRAPH_MAX_PIXELS = 768 * 768


def _decoder_networks(root: Path, dtype, mode: str, bf16: bool) -> tuple:
    """(UNet, MoVQ, the UNet's, the MoVQ encoder's and decoder's compiled functions) of a decoder folder."""
    from .layers import compiled, with_precision
    from .movq import VQModel
    from .unet import UNet2DConditionModel

    unet = with_precision(UNet2DConditionModel.from_pretrained(root / "unet", dtype), bf16)
    movq = with_precision(VQModel.from_pretrained(root / "movq", dtype), bf16)
    return (unet, movq, compiled(unet, mode), compiled(movq.encode_latents, mode),
            compiled(movq.decode_latents, mode))


def _record_inputs(debug: dict, pixels, image_latents, conditioning, batch: int, timesteps, latents, reset,
                   controls: bool) -> None:
    """The pipeline's inputs to the step loop, for ``debug`` (the parity harness); with ``controls`` (strength or
    soft inpainting) also the start latents and the soft keep masks."""
    masked_in, mask_in, hidden, embeds, image_embeds = conditioning
    debug.update(movq_in_image=pixels, movq_image_latents=image_latents, unet_mask=mask_in[:batch],
                 unet_masked_image_latents=masked_in[:batch], unet_encoder_hidden_states=hidden,
                 unet_text_embeds=embeds, unet_image_embeds=image_embeds, timesteps=timesteps,
                 noise_00=reset.initial_noise.copy(), step_eps_guided=[], step_latents_out=[])
    if controls:
        debug.update(start_latents=latents.copy(), soft_keep=reset.keep)


class _Stopwatch:
    """Seconds since the previous lap into ``timings[name]`` (nothing when ``timings`` is None)."""

    def __init__(self, timings: Optional[dict]):
        self.timings = timings
        self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        if self.timings is not None:
            self.timings[name] = self.timings.get(name, 0.0) + now - self.last
        self.last = now


class InpaintPipeline:
    """M-CLIP text encoder + 9-channel UNet + MoVQ + a decoder sampler (DDIM by default, any of
    ``schedulers.DECODER_SCHEDULERS`` per call), loaded once from a pipeline folder.

    The text encoder (XLM-R large, ~2.2 GB in float32) is needed once per distinct text and encodings are
    cached per text, so it is loaded on demand. By default it runs eagerly and is dropped right after
    encoding (MindSpore never frees a compiled network's parameters), which keeps it out of memory while the
    UNet and MoVQ run at full size. With ``keep_text_encoder`` set before the first encoding (a long-lived
    process with memory to spare) it is compiled like the other networks and kept.
    """

    def __init__(self, root: Path, dtype=None, mode: str = "graph", bf16: bool = False):
        import mindspore as ms

        from .tokenizer import load_xlmr_tokenizer

        self.root = Path(root)
        self.dtype = dtype or ms.float32
        self.np_dtype = np.float16 if self.dtype == ms.float16 else np.float32
        self.bf16 = bf16        # the networks' products in bf16 operators (weights and activations float32)
        model_io.read_model_index(self.root, INPAINT_COMPONENTS)
        self.tokenizer = load_xlmr_tokenizer(self.root / "tokenizer")
        self.text_encoder = None
        self._text_fn = None
        self.keep_text_encoder = False
        self._holding = False
        self.text_encoder_loads = 0
        self._text_cache: Dict[str, tuple] = {}
        self.unet, self.movq, self._unet_fn, self._encode_graph, self._decode_graph = model_io.compiled_once(
            "decoder", [self.root / "unet", self.root / "movq"], mode, (str(self.dtype), bf16),
            lambda: _decoder_networks(self.root, dtype, mode, bf16))
        # the folder's (DDIM) config: every call builds its sampler from it (see schedulers.make_decoder_scheduler)
        self.scheduler_config = model_io.read_scheduler_config(self.root / "scheduler")
        self.latent_channels = self.movq.config["latent_channels"]
        self.scale_factor = self.movq.scale_factor
        self.image_embed_dim = self.unet.image_embed_dim
        self.mode = mode

    def _tensor(self, arr):
        import mindspore as ms

        return ms.Tensor(np.asarray(arr, dtype=self.np_dtype))

    def encode_text(self, texts: List[str]):
        """(text_embeds (N, E), hidden states (N, 77, D)) float arrays; each text encoded alone (batch 1) and
        cached, so a text gives the same numbers whatever else it is encoded with."""
        import mindspore as ms

        from .layers import compiled, with_precision

        missing = [t for t in dict.fromkeys(texts) if t not in self._text_cache]
        if missing:
            if self.text_encoder is None:
                from .mclip import MultilingualCLIP

                self.text_encoder = with_precision(
                    MultilingualCLIP.from_pretrained(self.root / "text_encoder", self.dtype), self.bf16)
                self._text_fn = compiled(self.text_encoder, self.mode) if self.keep_text_encoder else self.text_encoder
                self.text_encoder_loads += 1
            for text in missing:
                ids, mask = self.tokenizer([text])
                embeds, hidden = self._text_fn(ms.Tensor(ids.astype(np.int32)), ms.Tensor(mask.astype(np.int32)))
                self._text_cache[text] = (embeds.asnumpy(), hidden.asnumpy())
            if not (self.keep_text_encoder or self._holding):
                self.release_text_encoder()
        return tuple(np.concatenate([self._text_cache[t][i] for t in texts]) for i in (0, 1))

    @contextmanager
    def holding_text_encoder(self):
        """Keep the (eager) text encoder loaded across several ``encode_text`` calls, then free it."""
        self._holding = True
        try:
            yield self
        finally:
            self._holding = False
            if not self.keep_text_encoder:
                self.release_text_encoder()

    def release_text_encoder(self) -> None:
        """Drop the text encoder's weights (cached encodings stay; it reloads when a new text comes)."""
        import gc

        from .layers import release_eager_memory

        self.text_encoder = self._text_fn = None
        gc.collect()
        release_eager_memory()

    def clear_text_cache(self) -> None:
        self._text_cache.clear()

    def _encode_prompt(self, prompts: List[str], num_images: int, cfg: bool, negative: Optional[List[str]]):
        embeds, hidden = (np.repeat(a, num_images, axis=0) for a in self.encode_text(prompts))
        if cfg:
            uncond = [""] * len(prompts) if negative is None else negative
            if len(uncond) != len(prompts):
                raise ValueError(f"negative_prompt has {len(uncond)} entries for {len(prompts)} prompts")
            u_embeds, u_hidden = (np.repeat(a, num_images, axis=0) for a in self.encode_text(uncond))
            embeds = np.concatenate([u_embeds, embeds])
            hidden = np.concatenate([u_hidden, hidden])
        return embeds, hidden

    def _guide(self, out: np.ndarray, cfg: bool, guidance_scale: float):
        """UNet output -> (eps, variance channels). With CFG, eps = uncond + scale (cond - uncond) and the
        variance of the conditional half is kept, as diffusers' pipeline does."""
        eps, variance = out[:, :self.latent_channels], out[:, self.latent_channels:]
        if cfg:
            uncond, cond = np.split(eps, 2)
            eps = uncond + np.float32(guidance_scale) * (cond - uncond)
            variance = np.split(variance, 2)[1]
        return eps, variance

    def _image_conditioning(self, image_embeds, negative_image_embeds, n: int, batch: int, cfg: bool):
        """The UNet's image embeddings: (negative, positive) halves with guidance, each repeated per image."""
        image_embeds = np.asarray(image_embeds, dtype=np.float32).reshape(-1, self.image_embed_dim)
        negative_image_embeds = np.asarray(negative_image_embeds, dtype=np.float32).reshape(-1, self.image_embed_dim)
        if cfg:
            return np.concatenate([np.repeat(negative_image_embeds, n, axis=0), np.repeat(image_embeds, n, axis=0)])
        if image_embeds.shape[0] != batch:
            # diffusers does not repeat here and then fails on the batch mismatch; repeat to the batch instead
            image_embeds = np.repeat(image_embeds, batch // image_embeds.shape[0], axis=0)
        return image_embeds

    def _movq(self, graph, eager, array: np.ndarray, height: int, width: int) -> np.ndarray:
        """A MoVQ encode or decode, compiled up to :data:`MOVQ_GRAPH_MAX_PIXELS` output pixels, eager above."""
        fn = graph if height * width <= MOVQ_GRAPH_MAX_PIXELS else eager
        return fn(self._tensor(array)).asnumpy().astype(np.float32)

    @staticmethod
    def _mask_channels(mask: np.ndarray, image_latents: np.ndarray, batch: int, cfg: bool):
        """The UNet's mask and masked-image channels: the keep mask at latent size (eroded as diffusers does) and the
        image latents times it, one image for the whole batch (diffusers: repeat_interleave of one image)."""
        mask = erode_keep_mask(nearest_resize(mask, *image_latents.shape[-2:]))
        mask_in = np.repeat(mask, batch, axis=0)
        masked_in = np.repeat(image_latents * mask, batch, axis=0)
        if cfg:
            mask_in = np.concatenate([mask_in, mask_in])
            masked_in = np.concatenate([masked_in, masked_in])
        return mask_in, masked_in

    def _start(self, sampler, noise, image_latents: np.ndarray, batch: int, num_inference_steps: int,
               strength: float, change_map: Optional[np.ndarray], size_hw):
        """(timesteps, start latents, :class:`SoftReset`) of a run: the schedule truncated for ``strength``
        (:func:`schedulers.strength_timesteps`); the initial noise draw times the sampler's initial sigma, or below
        strength 1 the image latents noised by it to the start of the schedule; soft inpainting's resets."""
        timesteps, start = strength_timesteps(sampler, num_inference_steps, strength)
        h, w = get_new_h_w(size_hw[0], size_hw[1], self.scale_factor)
        initial_noise = noise.randn((batch, self.latent_channels, h, w))
        latents = initial_noise * np.float32(sampler.init_noise_sigma)
        if latents.shape[-2:] != image_latents.shape[-2:]:
            raise ValueError(f"latent size {latents.shape[-2:]} differs from the encoded image's "
                             f"{image_latents.shape[-2:]}: height and width must be multiples of "
                             f"{self.scale_factor**2}")
        original = np.repeat(image_latents, batch, axis=0)
        if strength < 1.0:
            latents = sampler.add_noise(original, initial_noise, start)
        keep = None if change_map is None else soft_keep_masks(latent_change_map(change_map, h, w), len(timesteps))
        return timesteps, latents, SoftReset(sampler, original, initial_noise, start, keep)

    def _unet_calls(self, conditioning: tuple, rows: Optional[int]) -> list:
        """How a step's UNet batch is cut into equal calls of at most ``rows`` rows (None: one call), as (rows of
        the call, its text hidden states, text embeddings and image embeddings as Tensors), made once per run. A
        compiled UNet's working memory grows with its batch; the engine chooses ``rows``
        (:func:`memory.unet_call_rows`)."""
        batch = conditioning[0].shape[0]
        size = next(d for d in equal_call_sizes(batch) if d <= (rows or batch))
        return [(slice(start, start + size), *(self._tensor(c[start:start + size]) for c in conditioning))
                for start in range(0, batch, size)]

    def _unet(self, model_in: np.ndarray, t: int, calls: list) -> np.ndarray:
        """One step's UNet output for the whole batch, in the calls of :meth:`_unet_calls`."""
        part = calls[0][0]
        t_in = self.unet.time_proj(np.full(part.stop - part.start, t))
        outputs = [self._unet_fn(self._tensor(model_in[part]), t_in, *encodings).asnumpy().astype(np.float32)
                   for part, *encodings in calls]
        return np.concatenate(outputs) if len(outputs) > 1 else outputs[0]

    def _denoise(self, sampler, timesteps, latents, conditioning, cfg: bool, guidance_scale: float, noise,
                 callback: StepCallback, debug: Optional[dict], reset: Optional["SoftReset"] = None,
                 unet_rows: Optional[int] = None) -> np.ndarray:
        """The step loop: the 9-channel UNet (latents, masked image latents, mask) with guidance, then the
        sampler's step; the final latents. ``reset`` (soft inpainting) may replace latents before each step.
        ``conditioning``: (masked image latents, mask, text hidden states, text embeddings, image embeddings), arrays
        of one row per UNet row."""
        masked_in, mask_in, *encodings = conditioning
        calls = self._unet_calls(tuple(encodings), unet_rows)
        for i, t in enumerate(timesteps):
            if reset is not None:
                latents = reset(i, latents)
            model_in = np.concatenate([latents, latents]) if cfg else latents
            model_in = np.concatenate([model_in, masked_in, mask_in], axis=1)
            eps, variance = self._guide(self._unet(model_in, int(t), calls), cfg, guidance_scale)
            model_out = np.concatenate([eps, variance], axis=1) if sampler.uses_variance else eps
            step_noise = noise.randn(latents.shape) if sampler.needs_noise(int(t)) else None
            latents = sampler.step(model_out, int(t), latents, step_noise)
            if debug is not None:
                debug["step_eps_guided"].append(eps)
                debug["step_latents_out"].append(latents)
            if callback is not None:
                callback(i + 1, len(timesteps))
        return latents

    def __call__(self, prompt: Union[str, List[str]], image, mask_image, image_embeds: np.ndarray,
                 negative_image_embeds: np.ndarray, negative_prompt: Union[None, str, List[str]] = None,
                 height: int = 512, width: int = 512, num_inference_steps: int = 100, guidance_scale: float = 4.0,
                 num_images_per_prompt: int = 1, noise=None, callback: StepCallback = None,
                 debug: Optional[dict] = None, scheduler: str = "ddim",
                 timings: Optional[dict] = None, strength: float = 1.0,
                 change_map: Optional[np.ndarray] = None, unet_rows: Optional[int] = None) -> np.ndarray:
        """Returns images (num_images, height, width, 3) float32 in [0, 1].

        ``image``: PIL image (resized to the working size) or uint8 (H, W, 3) array; ``mask_image``: PIL or float
        (H, W) array, 1 = repaint. ``scheduler``: one of ``schedulers.DECODER_SCHEDULERS``. ``debug``, when a
        dict, receives the pipeline's intermediates; ``debug["step_latents_out"][-1]`` are the final latents.
        ``timings``, when a dict, receives seconds per stage: ``text_s`` (text encoder), ``movq_encode_s``,
        ``unet_s`` (the step loop), ``movq_decode_s``.

        ``strength`` < 1 starts from the image's own MoVQ latents noised to the point ``strength`` of the schedule
        (the sampler's ``add_noise`` with the initial noise draw) and runs the remaining steps
        (:func:`schedulers.strength_timesteps`). ``change_map`` (float (H, W) at the working size, 1 = repaint from
        the first step) turns on soft inpainting: before step i the latents where the map (at latent size,
        :func:`latent_change_map`) is below 1 - i / n are replaced by the original latents noised to step i.

        ``unet_rows``: each step's UNet batch (x2 with guidance) runs in equal calls of at most this many rows (None:
        one call): less memory, a little more time; the images agree to float rounding.
        """
        if not 0.0 < strength <= 1.0:
            raise ValueError(f"strength must be in (0, 1], got {strength}")
        clock = _Stopwatch(timings)
        sampler = make_decoder_scheduler(scheduler, self.scheduler_config)
        noise = as_noise(noise)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative = [negative_prompt] * len(prompts) if isinstance(negative_prompt, str) else negative_prompt
        n = num_images_per_prompt
        batch = len(prompts) * n
        cfg = guidance_scale > 1.0
        embeds, hidden = self._encode_prompt(prompts, n, cfg, negative)
        clock.lap("text_s")
        image_embeds = self._image_conditioning(image_embeds, negative_image_embeds, n, batch, cfg)
        pixels = preprocess_image(image, height, width)
        image_latents = self._movq(self._encode_graph, self.movq.encode_latents, pixels, height, width)
        clock.lap("movq_encode_s")
        mask_in, masked_in = self._mask_channels(preprocess_mask(mask_image, height, width), image_latents, batch,
                                                 cfg)
        timesteps, latents, reset = self._start(sampler, noise, image_latents, batch, num_inference_steps, strength,
                                                change_map, (height, width))
        conditioning = (masked_in, mask_in, hidden, embeds, image_embeds)
        if debug is not None:
            _record_inputs(debug, pixels, image_latents, conditioning, batch, timesteps, latents, reset,
                           strength < 1.0 or change_map is not None)
        latents = self._denoise(sampler, timesteps, latents, conditioning, cfg, guidance_scale, noise, callback, debug,
                                reset, unet_rows)
        clock.lap("unet_s")
        decoded = self._movq(self._decode_graph, self.movq.decode_latents, latents, height, width)
        clock.lap("movq_decode_s")
        if debug is not None:
            debug["movq_decoded_preclamp"] = decoded
            debug["step_eps_guided"] = np.stack(debug["step_eps_guided"])
            debug["step_latents_out"] = np.stack(debug["step_latents_out"])
        images = np.clip(decoded * np.float32(0.5) + np.float32(0.5), 0.0, 1.0)
        return images.transpose(0, 2, 3, 1)
