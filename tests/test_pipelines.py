"""Both pipelines end to end on the tiny fixture against diffusers' own outputs (the fixture README's rules),
the inpaint pipeline with every decoder sampler too (golden/schedulers.npz)."""
import json
import shutil

import numpy as np
import pytest

from conftest import FIXTURE, assert_image_close, assert_scaled, image_max
from kandinsky_cli.noise import Noise
from kandinsky_cli.schedulers import DECODER_SCHEDULERS
import parity_lib as parity  # scripts/parity.py's harness (conftest puts scripts/ on the path)

SAMPLER_META = json.loads((FIXTURE / "golden" / "schedulers.json").read_text(encoding="utf-8"))
SAMPLER_CASES = {case["key"]: case for case in SAMPLER_META["cases"]}


@pytest.fixture(scope="module")
def prior_pipe():
    from kandinsky_cli.prior_pipeline import PriorPipeline
    return PriorPipeline(FIXTURE / "prior")


@pytest.fixture(scope="module")
def inpaint_pipe():
    """One compiled pipeline for the module: the DDIM and sampler cases share most shapes, so most compiles."""
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline
    return InpaintPipeline(FIXTURE / "inpaint")


@pytest.fixture(scope="module")
def inpaint_run(inpaint_pipe):
    debug = {}
    images = parity.inpaint_pipeline_outputs(FIXTURE, pipe=inpaint_pipe, debug=debug)
    return images, debug


def test_prior_pipeline_cases(prior_pipe, golden):
    ref = golden("prior_pipeline")
    out = parity.prior_pipeline_outputs(FIXTURE, pipe=prior_pipe)
    assert sorted(out) == sorted(ref)
    for key in ref:
        assert_scaled(out[key], ref[key], 1e-4, key)


def test_prior_pipeline_without_tokenizer_json(tmp_path, golden):
    """The published prior repo may ship only vocab.json + merges.txt."""
    from kandinsky_cli.prior_pipeline import PriorPipeline
    root = tmp_path / "prior"
    shutil.copytree(FIXTURE / "prior", root)
    (root / "tokenizer" / "tokenizer.json").unlink()
    out = parity.prior_pipeline_outputs(FIXTURE, pipe=PriorPipeline(root))
    ref = golden("prior_pipeline")
    for key in ref:
        assert_scaled(out[key], ref[key], 1e-4, key)


def test_prior_interpolate_mixes_prompts_and_images(prior_pipe, golden):
    """diffusers' interpolate(): weighted sum of each condition's embedding; negative from the '' run."""
    from kandinsky_cli.noise import Noise
    pixels = golden("components")["clip_vision/pixel_values"]
    emb, neg = prior_pipe.interpolate(["horse", pixels], [0.25, 0.75], num_inference_steps=3, noise=Noise(7))
    noise = Noise(7)
    horse, _ = prior_pipe("horse", num_inference_steps=3, noise=noise)
    _, zero = prior_pipe("", num_inference_steps=3, noise=noise)
    expected = 0.25 * horse + 0.75 * prior_pipe.encode_image(pixels)
    assert emb.shape == (1, horse.shape[1])
    assert_scaled(emb, expected, 1e-5, "mix")
    assert_scaled(neg, zero, 1e-6, "negative")
    assert_scaled(zero, np.repeat(golden("components")["clip_vision/zero_image_embeds"], 1, 0), 1e-4, "zero embed")


def test_inpaint_pipeline_cases(inpaint_run, golden):
    images, _ = inpaint_run
    ref = golden("inpaint_pipeline")
    assert sorted(images) == sorted(ref)
    for key in ref:
        if key.endswith("/images"):
            assert_image_close(images[key], ref[key], 5e-3, 1e-4, key)
        else:
            np.testing.assert_array_equal(images[key], ref[key])


def test_inpaint_intermediates(inpaint_run, golden):
    _, debug = inpaint_run
    ref = golden("debug_intermediates")
    exact = ("noise_00", "timesteps", "unet_mask", "movq_in_image")
    checked = 0
    for key, value in debug.items():
        assert key in ref, key
        name = key.split("/")[1]
        if name in exact:
            np.testing.assert_array_equal(value, ref[key], err_msg=key)
        else:
            assert_scaled(value, ref[key], 5e-3 if name == "movq_decoded_preclamp" else 1e-4, key)
        checked += 1
    assert checked == len([k for k in ref if k.startswith("inpaint_case")])


def test_text_encoder_is_loaded_on_demand_and_freed(golden):
    """M-CLIP is loaded for new texts only, freed after encoding, and a text encodes the same alone or not."""
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline

    pipe = InpaintPipeline(FIXTURE / "inpaint")
    assert pipe.text_encoder is None and pipe.text_encoder_loads == 0
    e_ab, h_ab = pipe.encode_text(["a red hat", ""])
    assert pipe.text_encoder is None and pipe.text_encoder_loads == 1
    e_a, h_a = pipe.encode_text(["a red hat"])            # cached: no load
    assert pipe.text_encoder_loads == 1
    np.testing.assert_array_equal(e_a, e_ab[:1])
    np.testing.assert_array_equal(h_a, h_ab[:1])
    with pipe.holding_text_encoder():
        pipe.encode_text(["a blue hat"])
        pipe.encode_text(["a green hat"])
        assert pipe.text_encoder is not None and pipe.text_encoder_loads == 2
    assert pipe.text_encoder is None
    kept = InpaintPipeline(FIXTURE / "inpaint")
    kept.keep_text_encoder = True                          # compiled and kept: same numbers within float noise
    e_k, h_k = kept.encode_text(["a red hat"])
    kept.encode_text(["a blue hat"])
    assert kept.text_encoder is not None and kept.text_encoder_loads == 1
    assert np.abs(h_k - h_a).max() <= 1e-5 * np.abs(h_a).max() and np.abs(e_k - e_a).max() <= 1e-5 * np.abs(e_a).max()


def _unet_calls(case):
    return case["num_inference_steps"] * case["num_images_per_prompt"] * (2 if case["guidance_scale"] > 1 else 1)


def _cheapest_case_per_sampler():
    """One case per sampler, the one with the fewest UNet evaluations (eager runs are slow)."""
    best = {}
    for case in SAMPLER_META["cases"]:
        if case["scheduler"] not in best or _unet_calls(case) < _unet_calls(best[case["scheduler"]]):
            best[case["scheduler"]] = case
    return [case["key"] for case in best.values()]


def _check_sampler_outputs(out, golden, keys):
    """check_parity.md's rules for schedulers.npz."""
    for key in keys:
        if key.endswith("/images"):
            assert_image_close(out[key], golden[key], image_max(SAMPLER_CASES[key.split("/")[0]]["scheduler"]), 2e-4,
                               key)
        elif key.endswith("/step_latents"):
            assert_scaled(out[key], golden[key], 1e-4, key)
        else:  # inputs and timesteps
            np.testing.assert_array_equal(out[key], golden[key], err_msg=key)


def test_every_sampler_case_graph(inpaint_pipe, golden):
    ref = golden("schedulers")
    out = parity.scheduler_outputs(FIXTURE, pipe=inpaint_pipe)
    assert sorted(out) == sorted(ref)
    _check_sampler_outputs(out, ref, ref)


def test_every_sampler_pynative(golden):
    """Every sampler with eager networks (its cheapest case): issue 15 asks for both modes."""
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline

    keys = _cheapest_case_per_sampler()
    assert {SAMPLER_CASES[k]["scheduler"] for k in keys} == set(DECODER_SCHEDULERS)
    ref = golden("schedulers")
    out = parity.scheduler_outputs(FIXTURE, pipe=InpaintPipeline(FIXTURE / "inpaint", mode="pynative"), cases=keys)
    outputs = [f"{k}/{q}" for k in keys for q in ("images", "step_latents", "timesteps")]
    assert sorted(out) == sorted([*parity.SCHEDULER_INPUTS, *outputs])
    _check_sampler_outputs(out, ref, out)


class CountingNoise(Noise):
    """The noise contract, recording the shape of every draw."""

    def __init__(self, seed):
        super().__init__(seed)
        self.shapes = []

    def randn(self, shape):
        self.shapes.append(tuple(shape))
        return super().randn(shape)


def _run_sampler(pipe, golden, name, noise, debug=None):
    """Three steps on the sampler goldens' inputs (shapes the golden runs have compiled already)."""
    ref = golden("schedulers")
    return pipe(SAMPLER_META["prompt"], ref["image"], ref["mask"], ref["image_embeds"], ref["negative_image_embeds"],
                height=SAMPLER_META["height"], width=SAMPLER_META["width"], num_inference_steps=3,
                guidance_scale=4.0, noise=noise, debug=debug, scheduler=name)


@pytest.mark.parametrize("name", DECODER_SCHEDULERS)
def test_noise_draws_per_sampler(inpaint_pipe, golden, name):
    """The initial latents, then DDPM one draw per step with t > 0 and the SDE sampler one per step."""
    noise, debug = CountingNoise(5), {}
    _run_sampler(inpaint_pipe, golden, name, noise, debug)
    timesteps = debug["timesteps"]
    per_step = {"ddpm": int((timesteps > 0).sum()), "dpmpp-2m-sde": len(timesteps)}.get(name, 0)
    latents_shape = debug["noise_00"].shape
    assert noise.shapes == [latents_shape] * (1 + per_step)
    assert debug["step_latents_out"].shape == (len(timesteps),) + latents_shape


def test_unknown_sampler_is_refused_before_any_work(inpaint_pipe, golden):
    noise = CountingNoise(5)
    with pytest.raises(ValueError, match="dpmpp-2m-karras"):
        _run_sampler(inpaint_pipe, golden, "euler-a", noise)
    assert noise.shapes == []


def test_a_step_batch_split_into_unet_calls_gives_the_same_images(inpaint_pipe, golden):
    """``unet_rows`` (the engine's memory.unet_call_rows) runs a step's UNet batch as several equal calls: two images
    with guidance (four UNet rows) take one call per step, or four with one row each, or two of two when three rows
    are allowed (equal calls, one compiled shape); the images agree to float rounding."""
    calls, unet = [], inpaint_pipe._unet_fn

    def spy(model_in, *rest):
        calls.append(model_in.shape[0])
        assert all(r.shape[0] == model_in.shape[0] for r in rest)
        return unet(model_in, *rest)

    ref = golden("schedulers")
    args = (SAMPLER_META["prompt"], ref["image"], ref["mask"], ref["image_embeds"], ref["negative_image_embeds"])
    kw = dict(height=SAMPLER_META["height"], width=SAMPLER_META["width"], num_inference_steps=2,
              guidance_scale=4.0, num_images_per_prompt=2, scheduler="ddim")
    inpaint_pipe._unet_fn = spy
    try:
        runs = {}
        for rows, expected in ((None, [4, 4]), (1, [1] * 8), (3, [2] * 4)):
            calls.clear()
            runs[rows] = inpaint_pipe(*args, noise=Noise(3), unet_rows=rows, **kw)
            assert calls == expected, rows
    finally:
        inpaint_pipe._unet_fn = unet
    assert_image_close(runs[1], runs[None], 1e-4, 1e-6, "one row per call")   # measured 1.9e-5 / 5e-7
    assert_image_close(runs[3], runs[None], 1e-4, 1e-6, "two rows per call")
