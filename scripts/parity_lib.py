"""Runs the project on any fixture laid out like ``kandinsky21-tiny`` and returns the golden quantities.

Used by ``scripts/parity.py`` (writes candidate ``.npz`` files for ``check_parity.py compare``) and by the tests.
Cases come from ``golden/cases.json``, component inputs from ``golden/components.npz``, pipeline inputs from
``golden/inpaint_pipeline.npz`` (``case<i>/input/*``); the decoder sampler cases, when the fixture has them, from
``golden/schedulers.json`` with their inputs in ``golden/schedulers.npz``. Nothing about the fixture's sizes is
assumed.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import numpy as np

Arrays = Dict[str, np.ndarray]


def _load_npz(path: Path) -> Arrays:
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def load_cases(fixture: Path) -> dict:
    return json.loads((Path(fixture) / "golden" / "cases.json").read_text(encoding="utf-8"))


def tokenizer_outputs(fixture: Path) -> Arrays:
    from kandinsky_cli.tokenizer import load_clip_tokenizer, load_xlmr_tokenizer

    fixture = Path(fixture)
    prompts = load_cases(fixture)["tokenizers"]["prompts"]
    out = {}
    for name, tok in (("clip", load_clip_tokenizer(fixture / "prior" / "tokenizer")),
                      ("xlmr", load_xlmr_tokenizer(fixture / "inpaint" / "tokenizer"))):
        ids, mask = tok(prompts)
        out[f"{name}/input_ids"] = ids.astype(np.int64)
        out[f"{name}/attention_mask"] = mask.astype(np.int64)
        out[f"{name}/untruncated_len"] = np.asarray(tok.untruncated_lengths(prompts), dtype=np.int64)
    return out


def prior_component_outputs(fixture: Path, inputs: Arrays, mode: str = "graph", bf16: bool = False) -> Arrays:
    """The prior's networks on the golden inputs (``bf16``: with the bf16 operators, layers.to_bfloat16)."""
    import mindspore as ms

    from kandinsky_cli.layers import compiled, with_precision
    from kandinsky_cli.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    from kandinsky_cli.prior import PriorTransformer

    root = Path(fixture) / "prior"
    out = {}
    text = with_precision(CLIPTextModelWithProjection.from_pretrained(root / "text_encoder"), bf16)
    ids = inputs["clip_text/input_ids"]
    embeds, hidden = compiled(text, mode)(ms.Tensor(ids.astype(np.int32)))
    out.update({"clip_text/input_ids": ids, "clip_text/text_embeds": embeds.asnumpy(),
                "clip_text/last_hidden_state": hidden.asnumpy()})

    vision = with_precision(CLIPVisionModelWithProjection.from_pretrained(root / "image_encoder"), bf16)
    pixels = inputs["clip_vision/pixel_values"]
    out["clip_vision/pixel_values"] = pixels
    vision_fn = compiled(vision, mode)
    out["clip_vision/image_embeds"] = vision_fn(ms.Tensor(pixels)).asnumpy()
    out["clip_vision/zero_image_embeds"] = vision_fn(ms.Tensor(np.zeros_like(pixels))).asnumpy()

    prior = with_precision(PriorTransformer.from_pretrained(root / "prior"), bf16)
    args = [ms.Tensor(inputs[f"prior/{k}"]) for k in ("hidden_states", "proj_embedding", "encoder_hidden_states")]
    mask = ms.Tensor(inputs["prior/attention_mask"])
    prior_fn = compiled(prior, mode)
    for t in inputs["prior/timesteps"]:
        pred = prior_fn(args[0], prior.timestep_input(int(t), args[0].shape[0]), args[1], args[2], mask)
        out[f"prior/predicted_image_embedding_t{int(t)}"] = pred.asnumpy()
    for k in ("hidden_states", "proj_embedding", "encoder_hidden_states", "attention_mask", "timesteps"):
        out[f"prior/{k}"] = inputs[f"prior/{k}"]
    out["prior/post_process_latents"] = prior.post_process_latents(args[0]).asnumpy()
    return out


def decoder_component_outputs(fixture: Path, inputs: Arrays, mode: str = "graph", bf16: bool = False) -> Arrays:
    """The decoder's networks on the golden inputs (``bf16``: with the bf16 operators)."""
    import mindspore as ms

    from kandinsky_cli.layers import compiled, with_precision
    from kandinsky_cli.mclip import MultilingualCLIP
    from kandinsky_cli.movq import VQModel
    from kandinsky_cli.unet import UNet2DConditionModel

    root = Path(fixture) / "inpaint"
    out = {}
    mclip = with_precision(MultilingualCLIP.from_pretrained(root / "text_encoder"), bf16)
    ids, mask = inputs["mclip/input_ids"], inputs["mclip/attention_mask"]
    embeds, hidden = compiled(mclip, mode)(ms.Tensor(ids.astype(np.int32)), ms.Tensor(mask.astype(np.int32)))
    out.update({"mclip/input_ids": ids, "mclip/attention_mask": mask, "mclip/text_embeds": embeds.asnumpy(),
                "mclip/last_hidden_state": hidden.asnumpy()})

    unet = with_precision(UNet2DConditionModel.from_pretrained(root / "unet"), bf16)
    u = {k: ms.Tensor(inputs[f"unet/{k}"]) for k in ("sample", "encoder_hidden_states", "text_embeds", "image_embeds")}
    unet_fn = compiled(unet, mode)
    for t in inputs["unet/timesteps"]:
        temb = unet.time_proj(np.full(u["sample"].shape[0], int(t)))
        res = unet_fn(u["sample"], temb, u["encoder_hidden_states"], u["text_embeds"], u["image_embeds"])
        out[f"unet/out_t{int(t)}"] = res.asnumpy()
    for k in ("sample", "encoder_hidden_states", "text_embeds", "image_embeds", "timesteps"):
        out[f"unet/{k}"] = inputs[f"unet/{k}"]

    movq = with_precision(VQModel.from_pretrained(root / "movq"), bf16)
    encode, decode = compiled(movq.encode_latents, mode), compiled(movq.decode_latents, mode)
    latents = encode(ms.Tensor(inputs["movq/image"]))
    out["movq/image"] = inputs["movq/image"]
    out["movq/encode_latents"] = latents.asnumpy()
    out["movq/decode_of_encode"] = decode(latents).asnumpy()
    out["movq/decode_latents_in"] = inputs["movq/decode_latents_in"]
    out["movq/decode_out"] = decode(ms.Tensor(inputs["movq/decode_latents_in"])).asnumpy()
    return out


def prior_pipeline_outputs(fixture: Path, pipe=None, mode: str = "graph", debug: Arrays = None) -> Arrays:
    from kandinsky_cli.noise import Noise
    from kandinsky_cli.prior_pipeline import PriorPipeline

    pipe = pipe or PriorPipeline(Path(fixture) / "prior", mode=mode)
    out = {}
    for i, case in enumerate(load_cases(fixture)["prior_cases"]):
        trace = {} if debug is not None else None
        emb, neg = pipe(case["prompt"], negative_prompt=case.get("negative_prompt"),
                        num_images_per_prompt=case.get("num_images_per_prompt", 1),
                        num_inference_steps=case.get("num_inference_steps", 25),
                        guidance_scale=case.get("guidance_scale", 4.0), noise=Noise(case["noise_seed"]),
                        debug=trace)
        if debug is not None:
            debug.update({f"prior_case{i}/{k}": np.asarray(v) for k, v in trace.items()})
        out[f"case{i}/image_embeds"] = emb
        out[f"case{i}/negative_image_embeds"] = neg
    return out


def inpaint_inputs(fixture: Path, case: dict, inputs: Arrays, i: int):
    """The image and mask as the golden run passed them: numpy arrays, or PIL images for input_kind 'pil'."""
    image = inputs[f"case{i}/input/image"]
    mask = inputs[f"case{i}/input/mask_image"]
    if case.get("input_kind", "numpy") == "pil":
        from PIL import Image

        return Image.fromarray(image), Image.fromarray((mask * 255).astype(np.uint8), "L")
    return image, mask


def inpaint_pipeline_outputs(fixture: Path, pipe=None, debug: Arrays = None, mode: str = "graph") -> Arrays:
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline
    from kandinsky_cli.noise import Noise

    fixture = Path(fixture)
    pipe = pipe or InpaintPipeline(fixture / "inpaint", mode=mode)
    golden_inputs = _load_npz(fixture / "golden" / "inpaint_pipeline.npz")
    out = {}
    for i, case in enumerate(load_cases(fixture)["inpaint_cases"]):
        for k in [k for k in golden_inputs if k.startswith(f"case{i}/input/")]:
            out[k] = golden_inputs[k]
        image, mask = inpaint_inputs(fixture, case, golden_inputs, i)
        trace = {} if debug is not None else None
        out[f"case{i}/images"] = pipe(
            case["prompt"], image, mask, golden_inputs[f"case{i}/input/image_embeds"],
            golden_inputs[f"case{i}/input/negative_image_embeds"], negative_prompt=case.get("negative_prompt"),
            height=case["height"], width=case["width"], num_inference_steps=case["num_inference_steps"],
            guidance_scale=case.get("guidance_scale", 4.0),
            num_images_per_prompt=case.get("num_images_per_prompt", 1), noise=Noise(case["noise_seed"]),
            debug=trace)
        if debug is not None:
            debug.update({f"inpaint_case{i}/{k}": np.asarray(v) for k, v in trace.items()})
    return out


SCHEDULER_INPUTS = ("image", "mask", "image_embeds", "negative_image_embeds")


def scheduler_outputs(fixture: Path, pipe=None, mode: str = "graph", cases=None) -> Arrays:
    """Every ``golden/schedulers.json`` case (or those whose key is in ``cases``) through the inpaint pipeline
    with its sampler: the shared inputs, then ``caseNN/images``, ``caseNN/step_latents`` (latents after each
    step) and ``caseNN/timesteps``."""
    from PIL import Image

    from kandinsky_cli.inpaint_pipeline import InpaintPipeline
    from kandinsky_cli.noise import Noise

    fixture = Path(fixture)
    pipe = pipe or InpaintPipeline(fixture / "inpaint", mode=mode)
    meta = json.loads((fixture / "golden" / "schedulers.json").read_text(encoding="utf-8"))
    golden = _load_npz(fixture / "golden" / "schedulers.npz")
    out = {k: golden[k] for k in SCHEDULER_INPUTS}
    for case in meta["cases"]:
        if cases is not None and case["key"] not in cases:
            continue
        trace = {}
        key = case["key"]
        out[f"{key}/images"] = pipe(
            meta["prompt"], Image.fromarray(out["image"]), out["mask"], out["image_embeds"],
            out["negative_image_embeds"], negative_prompt=meta.get("negative_prompt"), height=meta["height"],
            width=meta["width"], num_inference_steps=case["num_inference_steps"],
            guidance_scale=case["guidance_scale"], num_images_per_prompt=case["num_images_per_prompt"],
            noise=Noise(case["noise_seed"]), debug=trace, scheduler=case["scheduler"])
        out[f"{key}/step_latents"] = trace["step_latents_out"]
        out[f"{key}/timesteps"] = trace["timesteps"].astype(np.int64)
    return out


def run_all(fixture: Path, out_dir: Path, log=print, mode: str = "graph") -> Dict[str, Path]:
    """Write tokenizers/components/prior_pipeline/inpaint_pipeline/debug_intermediates .npz into ``out_dir``, and
    schedulers.npz when the fixture has ``golden/schedulers.json``."""
    fixture, out_dir = Path(fixture), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    inputs = _load_npz(fixture / "golden" / "components.npz")
    written = {}
    debug: Arrays = {}
    producers = {
        "tokenizers": lambda: tokenizer_outputs(fixture),
        "components": lambda: {**prior_component_outputs(fixture, inputs, mode),
                               **decoder_component_outputs(fixture, inputs, mode)},
        "prior_pipeline": lambda: prior_pipeline_outputs(fixture, mode=mode, debug=debug),
        "inpaint_pipeline": lambda: inpaint_pipeline_outputs(fixture, debug=debug, mode=mode),
    }
    if (fixture / "golden" / "schedulers.json").is_file():
        producers["schedulers"] = lambda: scheduler_outputs(fixture, mode=mode)
    for name, make in producers.items():
        path = out_dir / f"{name}.npz"
        np.savez(path, **make())
        written[name] = path
        log(f"wrote {path}")
    path = out_dir / "debug_intermediates.npz"
    np.savez(path, **debug)
    written["debug_intermediates"] = path
    log(f"wrote {path}")
    return written
