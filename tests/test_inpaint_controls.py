"""The inpainting controls on the tiny fixture: strength and soft inpainting inside the decoder loop (checked against
a hand-written reference of each rule), the properties a user relies on, and the five controls through `inpaint`,
a batch file and folder mode. Eager networks (pynative), 64x64, few steps, no guidance where it does not matter."""

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURE
from kandinsky_cli import files as kandinsky_files
from kandinsky_cli.batchfile import folder_jobs, load_batch
from kandinsky_cli.cli import app
from kandinsky_cli.files import read_png_metadata
from kandinsky_cli.inpaint_pipeline import preprocess_image
from kandinsky_cli.masks import soft_change_map
from kandinsky_cli.schedulers import make_decoder_scheduler

PRIOR, DECODER = str(FIXTURE / "prior"), str(FIXTURE / "inpaint")
ENGINE = ["--prior-model", PRIOR, "--decoder-model", DECODER, "--mode", "pynative", "--dtype", "float32"]
runner = CliRunner()


@pytest.fixture(scope="module")
def pipe():
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline
    return InpaintPipeline(FIXTURE / "inpaint", mode="pynative")


@pytest.fixture(scope="module")
def inputs():
    with np.load(FIXTURE / "golden" / "schedulers.npz") as f:
        return {k: f[k] for k in ("image", "mask", "image_embeds", "negative_image_embeds")}


def _run(pipe, inputs, **kw):
    args = dict(height=64, width=64, guidance_scale=1.0, noise=3, num_inference_steps=4, scheduler="ddim")
    args.update(kw)
    return pipe("a hat", inputs["image"], inputs["mask"], inputs["image_embeds"], inputs["negative_image_embeds"],
                **args)


def _grey_change_map():
    change = np.zeros((64, 64), np.float32)
    change[8:40, 16:56] = 1.0
    change[8:40, 36:56] = 0.6        # joins later
    change[40:56, 16:56] = 0.3       # joins later still
    return change


@pytest.mark.parametrize("scheduler, strength", [("ddim", 1.0), ("dpmpp-2m", 0.5)])
def test_soft_and_strength_in_the_loop_match_the_rule(pipe, inputs, scheduler, strength):
    """Every UNet input's latents are, by a hand-written reference of both rules: the start latents (strength), then
    before step i the previous step's latents except where the block-mean change value is below 1 - i / n, where
    they are the original latents noised to step i."""
    seen = []
    unet = pipe._unet_fn

    def spy(model_in, *rest):
        seen.append(model_in.asnumpy()[:, :4].copy())
        return unet(model_in, *rest)

    change, debug = _grey_change_map(), {}
    pipe._unet_fn = spy
    try:
        _run(pipe, inputs, scheduler=scheduler, strength=strength, change_map=change, debug=debug)
    finally:
        pipe._unet_fn = unet
    sampler = make_decoder_scheduler(scheduler, pipe.scheduler_config)
    full = sampler.timesteps(4)
    n = int(4 * strength)
    start = 4 - n
    np.testing.assert_array_equal(debug["timesteps"], full[start:])
    x0, noise = debug["movq_image_latents"], debug["noise_00"]
    expected_start = noise if strength == 1.0 else sampler.add_noise(x0, noise, start)
    np.testing.assert_array_equal(debug["start_latents"], expected_start)
    h, w = x0.shape[-2:]          # the tiny MoVQ halves the size (the real one: / 8)
    block_mean = change.reshape(h, 64 // h, w, 64 // w).mean(axis=(1, 3))
    assert len(seen) == n
    previous = debug["start_latents"]
    for i in range(n):
        reset = block_mean < 1 - i / n
        expected = np.where(reset, sampler.add_noise(x0, noise, start + i), previous)
        np.testing.assert_allclose(seen[i], expected, rtol=0, atol=1e-6, err_msg=f"step {i}")
        previous = debug["step_latents_out"][i]
    assert reset.any() and not reset.all()


def test_strength_properties(pipe, inputs):
    """The change inside the mask grows with the strength, and at a small strength the result is the MoVQ round
    trip of the input (what the decoder makes of the unchanged latents), far closer to it than at strength 1."""
    image, inside = inputs["image"], inputs["mask"] > 0.5
    latents = pipe.movq.encode_latents(pipe._tensor(preprocess_image(image, 64, 64)))
    round_trip = np.clip(pipe.movq.decode_latents(latents).asnumpy()[0].transpose(1, 2, 0) * 0.5 + 0.5, 0, 1)
    change = [float(np.abs(_run(pipe, inputs, strength=s)[0] - round_trip)[inside].mean()) for s in (0.25, 0.5, 1.0)]
    assert change[0] < change[1] < change[2], change
    assert change[0] < 0.1 * change[2], change
    assert change[0] < 0.02, change


@pytest.fixture(scope="module")
def files(tmp_path_factory, inputs):
    d = tmp_path_factory.mktemp("controls")
    Image.fromarray(inputs["image"]).save(d / "in.png")
    np.save(d / "emb.npy", inputs["image_embeds"])
    np.save(d / "neg.npy", inputs["negative_image_embeds"])
    grey = np.zeros((64, 64), np.float32)
    grey[10:40, 12:50] = 0.7
    grey[20:30, 20:40] = 1.0
    np.save(d / "grey.npy", grey)
    return d


CONTROLS = ["--strength", "0.6", "--soft", "--feather", "4", "--color-match", "--variation-seed", "9",
            "--variation-strength", "0.3"]


def _inpaint_with_every_control(d):
    """`kandinsky inpaint` with every control but --mix (the prior is skipped) into d/one.png, once."""
    if not (d / "one.png").exists():
        result = runner.invoke(app, ["inpaint", str(d / "in.png"), "--mask", str(d / "grey.npy"), "--prompt",
                                     "a hat", "--image-embeds", str(d / "emb.npy"), "--negative-image-embeds",
                                     str(d / "neg.npy"), "--height", "64", "--width", "64", "--steps", "4", "--seed",
                                     "5", *CONTROLS, *ENGINE, "--out", str(d / "one.png")])
        assert result.exit_code == 0, result.output


def test_inpaint_with_every_control_keeps_pixels_outside_the_mask(files):
    d = files
    _inpaint_with_every_control(d)
    out, original = np.asarray(Image.open(d / "one.png")), np.asarray(Image.open(d / "in.png"))
    change = soft_change_map((64, 64), d / "grey.npy", feather=4)
    np.testing.assert_array_equal(out[change == 0], original[change == 0])
    assert np.abs(out[change == 1].astype(int) - original[change == 1]).mean() > 1
    params = read_png_metadata(d / "one.png")["parameters"]
    assert (params["strength"], params["soft"], params["color_match"], params["variation_seed"],
            params["variation_strength"]) == (0.6, True, True, 9, 0.3)


def test_batch_file_and_folder_mode_take_every_control(files):
    d = files
    (d / "jobs.yaml").write_text(
        "defaults: {steps: 4, height: 64, width: 64}\n"
        "jobs:\n  - {image: in.png, mask: grey.npy, prompt: a hat, seed: 5, image_embeds: emb.npy,\n"
          "     negative_image_embeds: neg.npy, strength: 0.6, soft: true, feather: 4, color_match: true,\n"
          "     variation_seed: 9, variation_strength: 0.3, out: batch.png}\n", encoding="utf-8")
    job = load_batch(d / "jobs.yaml")[0]
    assert (job.strength, job.soft, job.color_match, job.variation_seed, job.variation_strength) == \
        (0.6, True, True, 9, 0.3)
    checked = runner.invoke(app, ["batch", str(d / "jobs.yaml"), "--check"])
    assert checked.exit_code == 0, checked.output
    result = runner.invoke(app, ["batch", str(d / "jobs.yaml"), "--out-dir", str(d / "b"), *ENGINE])
    assert result.exit_code == 0, result.output
    _inpaint_with_every_control(d)   # the same job as one `kandinsky inpaint`: the same pixels
    np.testing.assert_array_equal(np.asarray(Image.open(d / "b" / "batch.png")), np.asarray(Image.open(d / "one.png")))
    (d / "imgs").mkdir(exist_ok=True)
    Image.open(d / "in.png").save(d / "imgs" / "x.png")
    folder = folder_jobs(d / "imgs", {"prompt": "a hat", "mask_rects": ("0:10,0:10",), "strength": 0.25,
                                      "soft": True, "color_match": True, "variation_seed": 4,
                                      "variation_strength": 0.5, "mix": ("a red hat=0.5",)}, d / "fo")
    assert (folder[0].strength, folder[0].soft, folder[0].color_match, folder[0].variation_seed,
            folder[0].variation_strength, folder[0].mix) == (0.25, True, True, 4, 0.5, (("a red hat", 0.5),))
    bad = runner.invoke(app, ["batch", "--images", str(d / "imgs"), "--out-dir", str(d / "fo"), "--prompt", "x",
                              "--mask-rect", "0:10,0:10", "--strength", "0", "--check"])
    assert bad.exit_code == 2 and bad.output.strip().splitlines()[-1].startswith("error: --strength"), bad.output


def test_mix_in_inpaint_equals_prior_mix_then_inpaint(files):
    """`inpaint --mix` is one command for `prior --mix` + `inpaint --image-embeds`: the same pixels; the metadata
    records the mix (an image path and a text)."""
    d = files
    common = ["--prompt", "a red hat", "--mix", f"{d / 'in.png'}=0.6", "--mix", "a crown=0.4", "--prior-steps", "2",
              "--seed", "8"]
    decoded = kandinsky_files.DECODED
    decoded.clear()
    prior = runner.invoke(app, ["prior", *common, "--out-dir", str(d / "e"), "--prior-model", PRIOR,
                                "--mode", "pynative", "--dtype", "float32"])
    assert prior.exit_code == 0, prior.output
    assert decoded[str((d / "in.png").resolve())] == 1      # the mix image: checked and used from one decode
    decode = ["--mask-rect", "10:40,12:50", "--height", "64", "--width", "64", "--steps", "2", *ENGINE]
    two = runner.invoke(app, ["inpaint", str(d / "in.png"), "--prompt", "a red hat", "--seed", "8",
                              "--image-embeds", str(d / "e" / "prior.image_embeds.npy"), "--negative-image-embeds",
                              str(d / "e" / "prior.negative_image_embeds.npy"), *decode, "--out", str(d / "two.png")])
    decoded.clear()
    one = runner.invoke(app, ["inpaint", str(d / "in.png"), *common, *decode, "--out", str(d / "mixed.png")])
    assert two.exit_code == 0 and one.exit_code == 0, (two.output, one.output)
    assert decoded[str((d / "in.png").resolve())] == 2      # once as the input image, once as the mix image
    np.testing.assert_array_equal(np.asarray(Image.open(d / "mixed.png")), np.asarray(Image.open(d / "two.png")))
    params = read_png_metadata(d / "mixed.png")["parameters"]
    assert params["mix"] == [[str(d / "in.png"), 0.6], ["a crown", 0.4]]
