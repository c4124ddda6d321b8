"""Stage 1: prompt -> CLIP image embeddings, step for step as diffusers' ``KandinskyPriorPipeline``."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import model_io
from .noise import as_noise

StepCallback = Optional[Callable[[int, int], None]]

# The model_index.json entries of the components loaded here (image_processor is optional).
PRIOR_COMPONENTS = ("prior", "text_encoder", "image_encoder", "tokenizer", "scheduler")


def clip_preprocess(image, config: dict) -> np.ndarray:
    """CLIPImageProcessor (PIL flavour): resize shortest side, center crop, rescale, normalize -> (1, 3, S, S)."""
    from PIL import Image

    image = image.convert("RGB") if config.get("do_convert_rgb", True) else image
    if config.get("do_resize", True):
        size = config.get("size", {"shortest_edge": 224})
        short = size["shortest_edge"] if isinstance(size, dict) and "shortest_edge" in size else (
            size if isinstance(size, int) else min(size["height"], size["width"]))
        w, h = image.size
        if w <= h:
            new_w, new_h = short, int(short * h / w)
        else:
            new_w, new_h = int(short * w / h), short
        image = image.resize((new_w, new_h), resample=Image.Resampling(config.get("resample", 3)))
    arr = np.asarray(image, dtype=np.float32)
    if config.get("do_center_crop", True):
        crop = config.get("crop_size", {"height": 224, "width": 224})
        ch, cw = (crop, crop) if isinstance(crop, int) else (crop["height"], crop["width"])
        h, w = arr.shape[:2]
        top, left = max((h - ch) // 2, 0), max((w - cw) // 2, 0)
        arr = arr[top:top + ch, left:left + cw]
    if config.get("do_rescale", True):
        arr = arr * np.float32(config.get("rescale_factor", 1 / 255))
    if config.get("do_normalize", True):
        mean = np.asarray(config.get("image_mean"), dtype=np.float32)
        std = np.asarray(config.get("image_std"), dtype=np.float32)
        arr = (arr - mean) / std
    return arr.transpose(2, 0, 1)[None].astype(np.float32)


class PriorPipeline:
    """CLIP text/vision encoders + PriorTransformer + UnCLIP scheduler, loaded once from a pipeline folder."""

    def __init__(self, root: Path, dtype=None, mode: str = "graph", bf16: bool = False, constants=None,
                 dtype_name: Optional[str] = None):
        import mindspore as ms

        from .layers import compiled, with_precision
        from .clip import CLIPTextModelWithProjection, vision_config
        from .prior import PriorTransformer
        from .schedulers import UnCLIPScheduler
        from .tokenizer import load_clip_tokenizer

        self.root = Path(root)
        self.dtype = dtype or ms.float32
        self.np_dtype = np.float16 if self.dtype == ms.float16 else np.float32
        model_io.read_model_index(self.root, PRIOR_COMPONENTS)
        self.tokenizer = load_clip_tokenizer(self.root / "tokenizer")

        def networks():
            text_encoder = with_precision(
                CLIPTextModelWithProjection.from_pretrained(self.root / "text_encoder", dtype), bf16)
            prior = with_precision(PriorTransformer.from_pretrained(self.root / "prior", dtype), bf16)
            return (text_encoder, prior, compiled(text_encoder, mode), compiled(prior.prefix, mode),
                    compiled(prior.step, mode))

        self.text_encoder, self.prior, self._text_fn, self._prefix_fn, self._step_fn = model_io.compiled_once(
            "prior", [self.root / "text_encoder", self.root / "prior"], mode, (str(self.dtype), bf16), networks)
        self.scheduler = model_io.build_scheduler(UnCLIPScheduler, self.root / "scheduler")
        processor = self.root / "image_processor"
        self.image_processor_config = (model_io.read_config(processor, "preprocessor_config.json")
                                       if (processor / "preprocessor_config.json").is_file() else {})
        self.image_size = vision_config(model_io.read_config(self.root / "image_encoder"))["image_size"]
        self.embedding_dim = self.prior.embedding_dim
        self._zero_embed = None
        self.mode, self.bf16 = mode, bf16
        # the image encoder is loaded when an image is embedded: a text-only run with the all-zero image's
        # embedding in ``constants`` (a tools.cache.Constants) never loads it
        self.image_encoder = self._image_fn = None
        self.constants = constants
        self.dtype_name = dtype_name or ("float16" if self.dtype == ms.float16 else
                                         "bfloat16" if bf16 else "float32")

    # -- pieces -------------------------------------------------------------------------------------------
    def _tensor(self, arr):
        import mindspore as ms

        return ms.Tensor(np.asarray(arr, dtype=self.np_dtype))

    def encode_text(self, texts: Sequence[str]) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(text_embeds (B, E), last_hidden_state (B, L, H), attention mask (B, L) bool) for raw texts."""
        import mindspore as ms

        ids, mask = self.tokenizer(list(texts))
        embeds, hidden = self._text_fn(ms.Tensor(ids.astype(np.int32)))
        return embeds.asnumpy(), hidden.asnumpy(), mask.astype(bool)

    def load_image_encoder(self):
        if self.image_encoder is None:
            from .clip import CLIPVisionModelWithProjection
            from .layers import compiled, with_precision

            self.image_encoder = with_precision(
                CLIPVisionModelWithProjection.from_pretrained(self.root / "image_encoder", self.dtype), self.bf16)
            self._image_fn = compiled(self.image_encoder, self.mode)
        return self.image_encoder

    def encode_image(self, pixel_values: np.ndarray) -> np.ndarray:
        self.load_image_encoder()
        return self._image_fn(self._tensor(pixel_values)).asnumpy()

    def zero_image_embed(self) -> np.ndarray:
        """The embedding of an all-zero image (zeros in normalised pixel space), shape (1, E): a constant of the
        image encoder's weights, taken from ``constants`` when it holds it."""
        if self._zero_embed is None:
            def compute():
                return self.encode_image(np.zeros((1, 3, self.image_size, self.image_size), np.float32))
            if self.constants is None:
                self._zero_embed = compute()
            else:
                from .cache import weights_identity

                key = {"weights": weights_identity(self.root / "image_encoder"), "dtype": self.dtype_name}
                self._zero_embed = self.constants.get("zero-image-embed", key, compute)
        return self._zero_embed

    def _encode_prompt(self, prompts: List[str], num_images: int, cfg: bool, negative: Optional[List[str]]):
        embeds, hidden, mask = self.encode_text(prompts)
        embeds, hidden, mask = (np.repeat(a, num_images, axis=0) for a in (embeds, hidden, mask))
        if cfg:
            uncond = [""] * len(prompts) if negative is None else negative
            if len(uncond) != len(prompts):
                raise ValueError(f"negative_prompt has {len(uncond)} entries for {len(prompts)} prompts")
            u_embeds, u_hidden, u_mask = self.encode_text(uncond)
            u_embeds, u_hidden, u_mask = (np.repeat(a, num_images, axis=0) for a in (u_embeds, u_hidden, u_mask))
            embeds = np.concatenate([u_embeds, embeds])
            hidden = np.concatenate([u_hidden, hidden])
            mask = np.concatenate([u_mask, mask])
        return embeds, hidden, mask

    # -- KandinskyPriorPipeline.__call__ ------------------------------------------------------------------
    def __call__(self, prompt: Union[str, List[str]], negative_prompt: Union[None, str, List[str]] = None,
                 num_images_per_prompt: int = 1, num_inference_steps: int = 25, guidance_scale: float = 4.0,
                 noise=None, callback: StepCallback = None,
                 debug: Optional[dict] = None) -> Tuple[np.ndarray, np.ndarray]:
        """Returns (image_embeds, negative_image_embeds), each (len(prompt) * num_images_per_prompt, E) float32.

        ``debug``, when a dict, receives the intermediates under diffusers' debug key names.
        """
        noise = as_noise(noise)
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        negative = [negative_prompt] if isinstance(negative_prompt, str) else negative_prompt
        if negative is not None:
            prompts = prompts + list(negative)
            negative = 2 * list(negative)
        batch = len(prompts) * num_images_per_prompt
        cfg = guidance_scale > 1.0
        embeds, hidden, mask = self._encode_prompt(prompts, num_images_per_prompt, cfg, negative)
        timesteps = self.scheduler.timesteps(num_inference_steps)
        latents = noise.randn((batch, self.embedding_dim)) * np.float32(self.scheduler.init_noise_sigma)
        trace = {"noise_00": latents.copy(), "step_latents_in": [], "step_model_out_cfg": [], "step_latents_out": []}
        # the text tokens' part of the prior, the same at every step (PriorTransformer.prefix), computed once
        keys, values, step_mask = self._prefix_fn(self._tensor(embeds), self._tensor(hidden), self._tensor(mask))
        for i, t in enumerate(timesteps):
            trace["step_latents_in"].append(latents)
            model_in = np.concatenate([latents, latents]) if cfg else latents
            t_in = self.prior.timestep_input(int(t), model_in.shape[0])
            pred = self._step_fn(self._tensor(model_in), t_in, keys, values, step_mask)
            pred = pred.asnumpy().astype(np.float32)
            if cfg:
                uncond, cond = np.split(pred, 2)
                pred = uncond + np.float32(guidance_scale) * (cond - uncond)
            prev_t = int(timesteps[i + 1]) if i + 1 < len(timesteps) else None
            step_noise = noise.randn(latents.shape) if t > 0 else None
            if step_noise is not None:
                trace[f"noise_{len([k for k in trace if k.startswith('noise_')]):02d}"] = step_noise
            latents = self.scheduler.step(pred, int(t), latents, prev_timestep=prev_t, noise=step_noise)
            trace["step_model_out_cfg"].append(pred)
            trace["step_latents_out"].append(latents)
            if callback is not None:
                callback(i + 1, len(timesteps))
        if debug is not None:
            debug.update({k: np.stack(v) if isinstance(v, list) else v for k, v in trace.items()})
            debug.update(prompt_embeds=embeds, text_hidden=hidden, text_mask=mask.astype(np.int64),
                         timesteps=timesteps)
        latents = self.prior.post_process_latents(self._tensor(latents)).asnumpy().astype(np.float32)
        if negative_prompt is None:
            return latents, np.repeat(self.zero_image_embed().astype(np.float32), latents.shape[0], axis=0)
        image_embeds, negative_embeds = np.split(latents, 2)
        return image_embeds, negative_embeds

    # -- KandinskyPriorPipeline.interpolate ---------------------------------------------------------------
    def interpolate(self, images_and_prompts: Sequence, weights: Sequence[float], num_images_per_prompt: int = 1,
                    num_inference_steps: int = 25, noise=None, negative_prior_prompt: Optional[str] = None,
                    negative_prompt: str = "", guidance_scale: float = 4.0,
                    callback: StepCallback = None) -> Tuple[np.ndarray, np.ndarray]:
        """Weighted mix of prompts (str) and images (PIL or preprocessed (1,3,S,S) arrays): diffusers' ``interpolate``."""
        if len(images_and_prompts) != len(weights):
            raise ValueError("images_and_prompts and weights must have the same length")
        noise = as_noise(noise)
        parts = []
        for cond, weight in zip(images_and_prompts, weights):
            if isinstance(cond, str):
                emb, _ = self(cond, negative_prompt=negative_prior_prompt, num_images_per_prompt=num_images_per_prompt,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, noise=noise,
                              callback=callback)
            elif isinstance(cond, np.ndarray):
                emb = self.encode_image(cond)
            else:
                emb = self.encode_image(clip_preprocess(cond, self.image_processor_config))
            parts.append(emb.astype(np.float32) * np.float32(weight))
        image_embeds = np.concatenate(parts).sum(axis=0, keepdims=True)
        pos, neg = self(negative_prompt, negative_prompt=negative_prior_prompt,
                        num_images_per_prompt=num_images_per_prompt, num_inference_steps=num_inference_steps,
                        guidance_scale=guidance_scale, noise=noise, callback=callback)
        return image_embeds, (neg if negative_prompt == "" else pos)
