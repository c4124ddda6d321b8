#!/usr/bin/env python3
"""One ``kandinsky inpaint`` job through diffusers, for the whole-tool rows of scripts/bench.py.

    python scripts/diffusers_inpaint.py IMAGE --mask-rect 0:250,250:518 --prompt "a hat" \\
        --prior-model DIR/prior --decoder-model DIR/inpaint --seed 0 --out OUT.png [--scheduler dpmpp-2m] ...

As the tool does it: KandinskyPriorPipeline makes the image embeddings and is freed, then KandinskyInpaintPipeline
repaints the mask (the image as PIL, the rectangle mask as a PIL mask built by the tool's own mask code; diffusers
resizes both to the working size). The result is written at the working size (the tool's paste-back is not
repeated). Prints one JSON document on stdout: ``{"outputs": [...], "timings": {...}}`` with ``prior_s`` (loading
and running the prior, as the tool's), ``decoder_load_s`` and ``decoder_s`` (the decoder call, as the tool's).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # the tool's mask code of the checkout this script belongs to
    sys.path.insert(0, str(REPO))

# kandinsky-community/kandinsky-2-1 ddpm_scheduler/scheduler_config.json (learned-range variance, thresholding)
DDPM_KANDINSKY21 = dict(beta_end=0.012, beta_schedule="linear", beta_start=0.00085, clip_sample=False,
                        clip_sample_range=2.0, dynamic_thresholding_ratio=0.995, num_train_timesteps=1000,
                        prediction_type="epsilon", sample_max_value=2.0, thresholding=True, trained_betas=None,
                        variance_type="learned_range")
# sampler name -> overrides of DPMSolverMultistepScheduler.from_config(the folder's DDIM config)
DPM_SOLVERS = {"dpmpp-2m": {}, "dpmpp-2m-karras": {"use_karras_sigmas": True},
               "dpmpp-2m-sde": {"algorithm_type": "sde-dpmsolver++"}}
SCHEDULERS = ("ddim", "ddpm", *DPM_SOLVERS)


def make_scheduler(name: str, folder_scheduler):
    """The diffusers scheduler a user swaps in for ``name``; ddim is the folder's own."""
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler

    if name == "ddim":
        return folder_scheduler
    if name == "ddpm":
        return DDPMScheduler(**DDPM_KANDINSKY21)
    return DPMSolverMultistepScheduler.from_config(folder_scheduler.config, **DPM_SOLVERS[name])


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("image", type=Path)
    ap.add_argument("--mask-rect", required=True, help="ROWS,COLS as the tool's --mask-rect")
    ap.add_argument("--prompt", required=True)
    ap.add_argument("--prior-model", type=Path, required=True)
    ap.add_argument("--decoder-model", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--prior-steps", type=int, default=25)
    ap.add_argument("--guidance", type=float, default=4.0)
    ap.add_argument("--prior-guidance", type=float, default=4.0)
    ap.add_argument("--height", type=int, default=768)
    ap.add_argument("--width", type=int, default=768)
    ap.add_argument("--scheduler", choices=SCHEDULERS, default="ddim")
    ap.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default="float32")
    ap.add_argument("--threads", type=int, help="torch.set_num_threads(N)")
    ap.add_argument("--out", type=Path, required=True)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch
    from diffusers import KandinskyInpaintPipeline, KandinskyPriorPipeline
    from PIL import Image

    from bench_workloads import quiet_diffusers, torch_dtype
    from kandinsky_cli.masks import mask_to_image, rect_mask

    quiet_diffusers()
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = torch_dtype(args.dtype)
    image = Image.open(args.image).convert("RGB")
    mask = mask_to_image(rect_mask(args.mask_rect, (image.height, image.width)))
    timings = {}

    t0 = time.perf_counter()
    prior = KandinskyPriorPipeline.from_pretrained(args.prior_model, torch_dtype=dtype)
    prior.set_progress_bar_config(disable=True)
    with torch.no_grad():
        embeds = prior(args.prompt, num_inference_steps=args.prior_steps, guidance_scale=args.prior_guidance,
                       generator=torch.Generator().manual_seed(args.seed))
    timings["prior_s"] = time.perf_counter() - t0
    del prior
    gc.collect()

    t0 = time.perf_counter()
    pipe = KandinskyInpaintPipeline.from_pretrained(args.decoder_model, torch_dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    pipe.scheduler = make_scheduler(args.scheduler, pipe.scheduler)
    timings["decoder_load_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        images = pipe(args.prompt, image=image, mask_image=mask, image_embeds=embeds.image_embeds,
                      negative_image_embeds=embeds.negative_image_embeds, height=args.height, width=args.width,
                      num_inference_steps=args.steps, guidance_scale=args.guidance,
                      generator=torch.Generator().manual_seed(args.seed), output_type="pil").images
    timings["decoder_s"] = time.perf_counter() - t0

    images[0].save(args.out)
    print(json.dumps({"outputs": [str(args.out)], "timings": timings, "scheduler": args.scheduler}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
