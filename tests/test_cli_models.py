"""`kandinsky prior` and `kandinsky inpaint` end to end on the tiny fixture, and their bad inputs."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import FIXTURE, assert_scaled, image_max, invoke_cli
from kandinsky_cli import bf16
from kandinsky_cli.cli import app
from kandinsky_cli.files import read_png_metadata

PRIOR = str(FIXTURE / "prior")
DECODER = str(FIXTURE / "inpaint")
runner = CliRunner()
# the golden comparisons run the parity reference; the default (--dtype auto) may be bfloat16 on another CPU
REFERENCE = ("--dtype", "float32")


def run(*args):
    return runner.invoke(app, [str(a) for a in args])


ok = invoke_cli   # conftest: the CLI in this process, exit code 0


def fail(*args, contains=""):
    result = run(*args)
    assert result.exit_code == 2, result.output
    lines = [l for l in result.output.splitlines() if l.strip()]
    assert lines and lines[-1].startswith("error:"), result.output
    assert contains in result.output, result.output
    assert "Traceback" not in result.output
    return result


@pytest.fixture(scope="module")
def case0(tmp_path_factory, golden):
    """Golden inpaint case 0 as files: the 64x64 image PNG, the mask PNG and the embeddings .npy."""
    d = tmp_path_factory.mktemp("case0")
    inp = golden("inpaint_pipeline")
    Image.fromarray(inp["case0/input/image"]).save(d / "image.png")
    Image.fromarray((inp["case0/input/mask_image"] * 255).astype(np.uint8), "L").save(d / "mask.png")
    np.save(d / "emb.npy", inp["case0/input/image_embeds"])
    np.save(d / "neg.npy", inp["case0/input/negative_image_embeds"])
    return d


def test_prior_command_equals_golden_case(tmp_path, golden, cases):
    case = cases["prior_cases"][0]
    res = ok("prior", case["prompt"], "--prior-model", PRIOR, "--steps", case["num_inference_steps"],
             "--seed", case["noise_seed"], "--out-dir", tmp_path / "e", "--name", "c0", "--json", *REFERENCE)
    summary = json.loads(res.stdout)
    assert summary["seed"] == case["noise_seed"]
    emb = np.load(tmp_path / "e" / "c0.image_embeds.npy")
    neg = np.load(tmp_path / "e" / "c0.negative_image_embeds.npy")
    assert emb.dtype == np.float32 and neg.dtype == np.float32
    assert_scaled(emb, golden("prior_pipeline")["case0/image_embeds"], 1e-4, "image_embeds")
    assert_scaled(neg, golden("prior_pipeline")["case0/negative_image_embeds"], 1e-4, "negative")
    params = json.loads((tmp_path / "e" / "c0.json").read_text())
    assert params["seed"] == case["noise_seed"] and params["prior_steps"] == case["num_inference_steps"]


def test_prior_negative_prompt_and_num_images(tmp_path, golden, cases):
    case = cases["prior_cases"][1]
    ok("prior", case["prompt"], "--negative-prompt", case["negative_prompt"], "--prior-model", PRIOR,
       "--steps", case["num_inference_steps"], "--seed", case["noise_seed"], "--out-dir", tmp_path, *REFERENCE)
    assert_scaled(np.load(tmp_path / "prior.image_embeds.npy"), golden("prior_pipeline")["case1/image_embeds"], 1e-4)
    ok("prior", "a dog", "--prior-model", PRIOR, "--steps", 3, "--num-images", 3, "--seed", 5, "--out-dir", tmp_path,
       "--name", "three")
    assert np.load(tmp_path / "three.image_embeds.npy").shape[0] == 3


def test_prior_random_seed_is_reported_and_mix(tmp_path, golden):
    res = ok("prior", "a cat", "--prior-model", PRIOR, "--steps", 2, "--out-dir", tmp_path, "--json")
    assert 0 <= json.loads(res.stdout)["seed"] < 2**32
    img = tmp_path / "pic.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(img)
    ok("prior", "--mix", "a cat=0.5", "--mix", f"{img}=0.5", "--prior-model", PRIOR, "--steps", 2, "--seed", 1,
       "--out-dir", tmp_path, "--name", "mix")
    mixed = np.load(tmp_path / "mix.image_embeds.npy")
    plain = np.load(next(tmp_path.glob("prior.image_embeds.npy")))
    assert mixed.shape == plain.shape and not np.allclose(mixed, plain)


@pytest.mark.parametrize("args,contains", [
    (["--steps", "1"], "--prior-steps: must be an integer from 2 to 1000, got 1"),
    (["--prior-steps", "0"], "--prior-steps: must be an integer from 2 to 1000, got 0"),
    (["--prior-steps", "2000"], "--prior-steps: must be an integer from 2 to 1000, got 2000"),
    (["--guidance", "-1"], "--prior-guidance-scale: must be a number from 0 to 100, got -1"),
    (["--prior-guidance-scale", "nan"], "--prior-guidance-scale: must be a number"),
    (["--num-images", "100000"], "--num-images: must be an integer from 1 to 64"),
    (["--steps", "3", "--prior-steps", "4"], "--prior-steps and --steps are the same option"),
    (["--mix", "a cat=heavy"], "weight"),
    (["--mix", "missing.png=0.5"], "missing.png"),
    (["--model", "/nonexistent/prior"], "/nonexistent/prior"),
])
def test_prior_bad_input(tmp_path, args, contains):
    base = ["prior", "a hat", "--prior-model", PRIOR, "--out-dir", tmp_path]
    if "--model" in args:
        base = ["prior", "a hat", "--out-dir", tmp_path]
    fail(*base, *args, contains=contains)
    assert not list(tmp_path.iterdir()), "nothing may be written on bad input"


def test_inpaint_no_paste_back_equals_pipeline_golden(case0, tmp_path, golden, cases):
    case = cases["inpaint_cases"][0]
    out = tmp_path / "raw.png"
    ok("inpaint", case0 / "image.png", "--mask", case0 / "mask.png", "--prompt", case["prompt"],
       "--image-embeds", case0 / "emb.npy", "--negative-image-embeds", case0 / "neg.npy",
       "--decoder-model", DECODER, "--height", case["height"], "--width", case["width"],
       "--steps", case["num_inference_steps"], "--seed", case["noise_seed"], "--no-paste-back", "--out", out,
       "--scheduler", "ddim", *REFERENCE)   # the pipeline goldens use the folder's DDIM scheduler
    got = np.asarray(Image.open(out)).astype(np.float64) / 255
    ref = golden("inpaint_pipeline")["case0/images"][0]
    assert got.shape == ref.shape
    # PNG holds round(x * 255): at most half a level of quantisation on top of the pipeline tolerance
    assert np.abs(got - ref).max() <= 0.5 / 255 + 5e-3


def test_inpaint_paste_back_keeps_unmasked_pixels_at_input_size(tmp_path):
    rng = np.random.default_rng(0)
    original = rng.integers(0, 256, size=(80, 72, 3), dtype=np.uint8)   # not a multiple of 64
    Image.fromarray(original).save(tmp_path / "in.png")
    res = ok("inpaint", tmp_path / "in.png", "--mask-rect", "10:40,20:50", "--prompt", "a hat",
             "--prior-model", PRIOR, "--decoder-model", DECODER, "--height", 64, "--width", 64, "--steps", 3,
             "--prior-steps", 3, "--seed", 7, "--num-images", 2, "--save-grid", "--out", tmp_path / "o.png",
             "--json")
    summary = json.loads(res.stdout)
    assert summary["seed"] == 7 and len(summary["outputs"]) == 2
    mask = np.zeros((80, 72), bool)
    mask[10:40, 20:50] = True
    for k in (1, 2):
        out = np.asarray(Image.open(tmp_path / f"o-{k}.png"))
        assert out.shape == original.shape
        np.testing.assert_array_equal(out[~mask], original[~mask])
        assert not np.array_equal(out[mask], original[mask])
        meta = read_png_metadata(tmp_path / f"o-{k}.png")["parameters"]
        assert meta["seed"] == 7 and meta["prompt"] == "a hat" and meta["steps"] == 3
        assert meta["decoder_model"] == DECODER and meta["dtype_requested"] == "auto"    # the default
        assert meta["dtype"] == ("bfloat16" if bf16.available() else "float32")
    assert (tmp_path / "o-grid.png").is_file()


def test_inpaint_in_process_prior_equals_two_commands(tmp_path, case0):
    """One run with the prior == `kandinsky prior --seed N` then `kandinsky inpaint --image-embeds ... --seed N`
    (which shows that inpaint takes the prior command's files)."""
    common = ["--decoder-model", DECODER, "--height", 64, "--width", 64, "--steps", 2, "--seed", 9,
              "--mask-rect", "8:40,8:40", "--prompt", "red hat"]
    ok("inpaint", case0 / "image.png", *common, "--prior-model", PRIOR, "--prior-steps", 3,
       "--out", tmp_path / "one.png")
    ok("prior", "red hat", "--prior-model", PRIOR, "--steps", 3, "--seed", 9, "--out-dir", tmp_path, "--name", "p")
    ok("inpaint", case0 / "image.png", *common, "--image-embeds", tmp_path / "p.image_embeds.npy",
       "--negative-image-embeds", tmp_path / "p.negative_image_embeds.npy", "--out", tmp_path / "two.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "one.png")),
                                  np.asarray(Image.open(tmp_path / "two.png")))


@pytest.fixture
def bad_inputs(tmp_path, case0):
    np.save(tmp_path / "wide.npy", np.zeros((1, 33), np.float32))
    np.save(tmp_path / "ints.npy", np.zeros((1, 32), np.int64))
    np.save(tmp_path / "cube.npy", np.zeros((1, 2, 32), np.float32))
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    Image.new("L", (64, 64), 0).save(tmp_path / "black.png")
    return tmp_path


@pytest.mark.parametrize("args,contains", [
    (["--height", "100"], "nearest valid: 64 or 128"),
    (["--width", "0"], "width"),
    (["--steps", "0"], "steps"),
    (["--image-embeds", "{d}/wide.npy", "--negative-image-embeds", "{d}/wide.npy"], "width 33"),
    (["--image-embeds", "{d}/ints.npy", "--negative-image-embeds", "{c}/neg.npy"], "dtype int64"),
    (["--image-embeds", "{d}/cube.npy", "--negative-image-embeds", "{c}/neg.npy"], "shape"),
    (["--image-embeds", "{c}/emb.npy"], "go together"),
    (["--mask", "{d}/black.png"], "selects no pixel"),
    (["--mask-rect", "5:5,:"], "5:5"),
    (["--decoder-model", "/nonexistent/dec"], "/nonexistent/dec"),
    (["--out", "{d}/x.jpg"], ".png"),
])
def test_inpaint_bad_input(bad_inputs, case0, args, contains):
    d = bad_inputs
    args = [a.format(d=d, c=case0) for a in args]
    base = ["inpaint", case0 / "image.png", "--prompt", "x", "--prior-model", PRIOR, "--decoder-model", DECODER,
            "--height", 64, "--width", 64, "--steps", 2, "--prior-steps", 2, "--out", d / "out.png"]
    if not any(a.startswith("--mask") for a in args):
        base += ["--mask-rect", "0:10,0:10"]
    before = sorted(p.name for p in d.iterdir())
    fail(*base, *args, contains=contains)
    assert sorted(p.name for p in d.iterdir()) == before, "nothing may be written on bad input"


def test_inpaint_unreadable_image_in_a_subprocess(bad_inputs):
    """The real console entry point: one error line on stderr, exit code 2, no traceback."""
    res = subprocess.run([sys.executable, "-m", "kandinsky_cli", "inpaint", str(bad_inputs / "broken.png"),
                          "--mask-rect", "0:10,0:10", "--prompt", "x", "--decoder-model", DECODER],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 2
    assert "Traceback" not in res.stderr
    assert [l for l in res.stderr.splitlines() if l.startswith("error:")] and "broken.png" in res.stderr


def test_prior_in_a_child_process_gives_the_same_pixels(tmp_path, monkeypatch):
    """A large prior runs compiled in a child process (its memory is back when the child exits); forced here.
    The two runs also show that a seed reproduces, and that --feather leaves pixels farther away untouched."""
    img = tmp_path / "in.png"
    rgb = np.random.default_rng(4).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(img)
    common = ["inpaint", img, "--mask-rect", "16:48,16:48", "--feather", "8", "--prompt", "a hat",
              "--prior-model", PRIOR, "--decoder-model", DECODER, "--height", 64, "--width", 64, "--steps", 2,
              "--prior-steps", 3, "--seed", 5, "--json"]
    monkeypatch.setenv("KANDINSKY_PRIOR_PROCESS", "child")
    child = json.loads(ok(*common, "--out", tmp_path / "child.png").stdout)
    monkeypatch.setenv("KANDINSKY_PRIOR_PROCESS", "inline")
    ok(*common, "--out", tmp_path / "inline.png")
    a = np.asarray(Image.open(tmp_path / "child.png"))
    np.testing.assert_array_equal(a, np.asarray(Image.open(tmp_path / "inline.png")))
    assert child["timings"]["prior_s"] > 0
    np.testing.assert_array_equal(a[:8], rgb[:8])          # farther than the feather from the mask: the original
    np.testing.assert_array_equal(a[:, :8], rgb[:, :8])
    assert (a[24:40, 24:40] != rgb[24:40, 24:40]).any()    # the masked middle is repainted


@pytest.mark.parametrize("key", ["case02", "case08"])   # DDPM without guidance; the SDE sampler (noise every step)
def test_inpaint_command_with_a_sampler_equals_its_golden(tmp_path, golden, key):
    spec = json.loads((FIXTURE / "golden" / "schedulers.json").read_text())
    case = next(c for c in spec["cases"] if c["key"] == key)
    ref = golden("schedulers")
    Image.fromarray(ref["image"]).save(tmp_path / "image.png")
    np.save(tmp_path / "mask.npy", ref["mask"])
    np.save(tmp_path / "emb.npy", ref["image_embeds"])
    np.save(tmp_path / "neg.npy", ref["negative_image_embeds"])
    ok("inpaint", tmp_path / "image.png", "--mask", tmp_path / "mask.npy", "--prompt", spec["prompt"],
       "--image-embeds", tmp_path / "emb.npy", "--negative-image-embeds", tmp_path / "neg.npy",
       "--decoder-model", DECODER, "--height", spec["height"], "--width", spec["width"],
       "--scheduler", case["scheduler"], "--steps", case["num_inference_steps"],
       "--guidance-scale", case["guidance_scale"], "--seed", case["noise_seed"], "--no-paste-back",
       "--out", tmp_path / "o.png", *REFERENCE)
    got = np.asarray(Image.open(tmp_path / "o.png")).astype(np.float64) / 255
    assert np.abs(got - ref[f"{key}/images"][0]).max() <= 0.5 / 255 + image_max(case["scheduler"])   # conftest
    assert read_png_metadata(tmp_path / "o.png")["parameters"]["scheduler"] == case["scheduler"]


def test_scheduler_names_and_step_limits_are_checked_before_loading(tmp_path):
    img = tmp_path / "in.png"
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(img)
    base = ["inpaint", img, "--mask-rect", "0:9,0:9", "--prompt", "x", "--decoder-model", DECODER,
            "--prior-model", PRIOR, "--out", tmp_path / "o.png"]
    fail(*base, "--scheduler", "euler", contains="--scheduler: must be one of ddim, ddpm, dpmpp-2m, "
                                                 "dpmpp-2m-karras, dpmpp-2m-sde")
    fail(*base, "--scheduler", "ddim", "--steps", "1000", contains="--steps 1000 with --scheduler ddim")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]
