"""Real photos on the tiny fixture: aspect-true working size, --region mask, --extend (outpainting), everywhere."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import invoke_cli
from PIL import Image

from kandinsky_cli.cli import app
from kandinsky_cli.files import read_png_metadata
from kandinsky_cli.region import working_size

FIXTURE = Path(__file__).parent / "fixtures" / "kandinsky21-tiny"
# Eager networks: these tests run many working sizes, and each compiled shape costs a compile.
MODELS = ["--prior-model", str(FIXTURE / "prior"), "--decoder-model", str(FIXTURE / "inpaint"), "--mode", "pynative"]
FAST = ["--steps", "2", "--prior-steps", "2", "--seed", "3"]


run = invoke_cli   # conftest: the CLI in this process, exit code checked


def photo(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth random picture (a gradient plus noise), saved as PNG."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 255 / max(width - 1, 1), yy * 255 / max(height - 1, 1), np.full_like(xx, 128)], -1)
    pixels = np.clip(base + rng.normal(0, 20, base.shape), 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(path)
    return pixels


@pytest.mark.parametrize("width,height", [(400, 300), (300, 400), (256, 256), (1000, 100)])
def test_mask_command_reports_aspect_true_working_size(tmp_path, width, height):
    photo(tmp_path / "in.png", width, height)
    result = run("mask", tmp_path / "in.png", "--mask-rect", "0:20,0:20", "--resolution", 256, "--json",
                 "--out", tmp_path / "m.png")
    summary = json.loads(result.output)
    w, h = summary["working_size"]
    assert (w, h) == working_size(width, height, 256)
    assert w % 64 == 0 and h % 64 == 0
    assert summary["region"] == "full" and summary["region_box"] == [0, 0, width, height]
    if width == height:
        assert (w, h) == (256, 256)
    else:
        assert (w > h) == (width > height)
        assert abs(np.log((w / h) / (width / height))) < 0.2 or min(w, h) == 64


def test_square_input_at_the_default_resolution_is_768(tmp_path):
    photo(tmp_path / "in.png", 500, 500)
    summary = json.loads(run("mask", tmp_path / "in.png", "--mask-rect", "0:9,0:9", "--json",
                             "--out", tmp_path / "m.png").output)
    assert summary["working_size"] == [768, 768]


def test_inpaint_output_keeps_the_input_size_and_records_the_plan(tmp_path):
    original = photo(tmp_path / "in.png", 160, 96)
    summary = json.loads(run("inpaint", tmp_path / "in.png", "--mask-rect", "10:40,20:60", "--prompt", "a hat",
                             "--resolution", 128, *MODELS, *FAST, "--out", tmp_path / "o.png", "--json").output)
    params = summary["parameters"]
    assert params["working_size"] == list(working_size(160, 96, 128))
    assert params["region"] == "full" and params["region_box"] == [0, 0, 160, 96] and params["extend"] is None
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == original.shape
    mask = np.zeros((96, 160), bool)
    mask[10:40, 20:60] = True
    np.testing.assert_array_equal(out[~mask], original[~mask])


def test_region_mask_equals_cropping_by_hand(tmp_path):
    original = photo(tmp_path / "in.png", 400, 300, seed=1)
    common = ["--prompt", "a hat", *MODELS, *FAST, "--resolution", 128]
    summary = json.loads(run("inpaint", tmp_path / "in.png", "--mask-rect", "100:140,200:260", "--region", "mask",
                             "--region-padding", 16, *common, "--out", tmp_path / "region.png", "--json").output)
    params = summary["parameters"]
    x0, y0, x1, y1 = params["region_box"]
    w, h = params["working_size"]
    assert params["region"] == "mask"
    assert x0 <= 200 - 16 and y0 <= 100 - 16 and x1 >= 260 + 16 and y1 >= 140 + 16   # the padded box is inside
    assert abs((x1 - x0) / (y1 - y0) - w / h) < 0.02                                   # the working aspect
    region = np.asarray(Image.open(tmp_path / "region.png"))
    outside = np.ones(original.shape[:2], bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(region[outside], original[outside])   # outside the box: the input, bit for bit

    # by hand: crop the input and the final mask to the box, inpaint the crop whole at the recorded size
    Image.fromarray(original[y0:y1, x0:x1]).save(tmp_path / "crop.png")
    crop_mask = np.zeros((y1 - y0, x1 - x0), np.uint8)
    crop_mask[100 - y0:140 - y0, 200 - x0:260 - x0] = 255
    Image.fromarray(crop_mask).save(tmp_path / "crop_mask.png")
    run("inpaint", tmp_path / "crop.png", "--mask", tmp_path / "crop_mask.png", "--height", h, "--width", w, *common,
        "--out", tmp_path / "hand.png")
    hand = np.asarray(Image.open(tmp_path / "hand.png")).astype(int)
    inside = region[y0:y1, x0:x1].astype(int)
    assert np.abs(inside - hand).max() <= 1
    assert (inside != hand).mean() < 0.01
    assert not np.array_equal(region[100:140, 200:260], original[100:140, 200:260])   # something was painted


def test_outpainting_grows_the_canvas_and_keeps_the_original(tmp_path):
    original = photo(tmp_path / "in.png", 96, 64)
    summary = json.loads(run("inpaint", tmp_path / "in.png", "--extend", "left=32,bottom=16", "--prompt", "sky",
                             "--resolution", 128, *MODELS, *FAST, "--out", tmp_path / "o.png", "--json").output)
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (64 + 16, 96 + 32, 3)
    np.testing.assert_array_equal(out[:64, 32:], original)     # no mask given: the margins are the mask
    params = summary["parameters"]
    assert params["extend"] == {"top": 0, "right": 0, "bottom": 16, "left": 32}
    assert params["region_box"] == [0, 0, 128, 80]
    assert read_png_metadata(tmp_path / "o.png")["parameters"]["extend"] == params["extend"]


def test_outpainting_with_region_mask_covers_the_margin(tmp_path):
    original = photo(tmp_path / "in.png", 300, 200)
    summary = json.loads(run("inpaint", tmp_path / "in.png", "--extend", "right=40", "--region", "mask",
                             "--prompt", "sea", "--resolution", 128, *MODELS, *FAST, "--out", tmp_path / "o.png",
                             "--json").output)
    x0, y0, x1, y1 = summary["parameters"]["region_box"]
    assert x1 == 340 and x0 <= 300 - 32
    out = np.asarray(Image.open(tmp_path / "o.png"))
    assert out.shape == (200, 340, 3)
    np.testing.assert_array_equal(out[:, :300], original)


def test_region_and_extend_in_a_batch_file_and_folder_mode(tmp_path):
    (tmp_path / "imgs").mkdir()
    original = photo(tmp_path / "imgs" / "a.png", 200, 120)
    (tmp_path / "jobs.yaml").write_text(
        "defaults: {resolution: 128, steps: 2, prior_steps: 2, seed: 3}\n"
        "jobs:\n"
        "  - {image: imgs/a.png, prompt: a hat, mask_rects: ['20:50,30:70'], region: mask, region_padding: 8,"
        " out: r.png}\n"
        "  - {image: imgs/a.png, prompt: sky, extend: {top: 24}, out: e.png}\n")
    run("batch", tmp_path / "jobs.yaml", "--out-dir", tmp_path / "out", *MODELS)
    r = read_png_metadata(tmp_path / "out" / "r.png")["parameters"]
    e = read_png_metadata(tmp_path / "out" / "e.png")["parameters"]
    assert r["region"] == "mask" and r["region_box"] != [0, 0, 200, 120]
    assert e["extend"]["top"] == 24 and np.asarray(Image.open(tmp_path / "out" / "e.png")).shape == (144, 200, 3)
    manifest = [json.loads(line) for line in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    assert {tuple(m["parameters"]["working_size"]) for m in manifest} == {tuple(r["working_size"]),
                                                                         tuple(e["working_size"])}
    # folder mode: the same options, the same pixels as the batch file's first job
    run("batch", "--images", tmp_path / "imgs", "--mask-rect", "20:50,30:70", "--region", "mask",
        "--region-padding", 8, "--resolution", 128, "--prompt", "a hat", "--steps", 2, "--prior-steps", 2, "--seed", 3,
        "--out-dir", tmp_path / "folder", *MODELS)
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "folder" / "a.png")),
                                  np.asarray(Image.open(tmp_path / "out" / "r.png")))
    assert original.shape == (120, 200, 3)


@pytest.mark.parametrize("args,message", [
    (["--region-padding", "-1"], "--region-padding: must be an integer from 0 to 16384, got -1"),
    (["--extend", "left=-5"], "left=-5 is not a whole number of pixels"),
    (["--extend", "middle=5"], "unknown side 'middle'"),
    (["--extend", "left=5,left=6"], "side left is given twice"),
    (["--extend", "left=0"], "it adds nothing"),
    (["--region", "box"], "--region: must be one of full, mask"),
    (["--resolution", "10"], "--resolution: must be an integer from 64 to 4096, got 10"),
    (["--height", "128"], "--height and --width go together"),
])
def test_bad_region_values_are_one_line(tmp_path, args, message):
    photo(tmp_path / "in.png", 64, 64)
    for command in (["inpaint", tmp_path / "in.png", "--prompt", "x", *MODELS, "--out", tmp_path / "o.png"],
                    ["mask", tmp_path / "in.png", "--out", tmp_path / "m.png"]):
        result = run(*command, "--mask-rect", "0:9,0:9", *args, code=2)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.png"]


def test_region_of_an_empty_mask_is_refused(tmp_path):
    photo(tmp_path / "in.png", 64, 64)
    np.save(tmp_path / "empty.npy", np.zeros((64, 64), np.float32))
    result = run("inpaint", tmp_path / "in.png", "--mask", tmp_path / "empty.npy", "--region", "mask", "--prompt", "x",
                 *MODELS, "--out", tmp_path / "o.png", code=2)
    assert "selects no pixel" in result.output
