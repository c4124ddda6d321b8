"""kandinsky_cli.batchfile: the schema, defaults, paths, and errors naming file, job and key."""
import re
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kandinsky_cli.batchfile import JOB_KEYS, load_batch, prepare_job
from kandinsky_cli.errors import UserError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def batch_dir(tmp_path, monkeypatch):
    """A folder with inputs, and a different current directory (paths must resolve against the YAML)."""
    d = tmp_path / "batch"
    (d / "in").mkdir(parents=True)
    Image.new("RGB", (64, 48), (200, 100, 50)).save(d / "in" / "cat.png")
    mask = Image.new("L", (64, 48), 0)
    mask.paste(255, (0, 0, 16, 16))
    mask.save(d / "in" / "mask.png")
    np.save(d / "in" / "pos.npy", np.zeros((1, 768), np.float32))
    np.save(d / "in" / "neg.npy", np.zeros((1, 768), np.float32))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    return d


def write(batch_dir, text, name="jobs.yaml"):
    path = batch_dir / name
    path.write_text(textwrap.dedent(text))
    return path


VALID = """\
defaults:
  steps: 30
  negative_prompt: blurry
jobs:
  - image: in/cat.png
    mask_rects: ["0:10,0:10", ":5,-5:"]
    prompt: a hat
  - image: in/cat.png
    mask: in/mask.png
    prompt: a cap
    steps: 7
    seed: 4294967295
    num_images: 3
    guidance_scale: 7
    height: 512
    width: 1024
    grow: 2
    feather: 4
    invert_mask: false
    out: results/cap.png
    image_embeds: in/pos.npy
    negative_image_embeds: in/neg.npy
"""


def test_valid_file_with_defaults_and_paths(batch_dir):
    jobs = load_batch(write(batch_dir, VALID))
    first, second = jobs
    assert first.index == 0 and second.index == 1
    assert first.image == batch_dir / "in" / "cat.png" and first.image.is_absolute()
    assert first.mask is None and first.mask_rects == ("0:10,0:10", ":5,-5:")
    assert first.steps == 30 and first.negative_prompt == "blurry"  # from defaults
    assert (first.guidance_scale, first.prior_steps, first.prior_guidance_scale) == (4.0, 25, 4.0)
    assert (first.height, first.width, first.num_images, first.seed) == (None, None, 1, None)
    assert (first.resolution, first.region, first.region_padding, first.extend) == (768, "full", 32, None)
    assert (first.grow, first.feather, first.invert_mask) == (0, 0, False)
    assert first.out == batch_dir / "outputs" / "cat.png" and first.outputs == [first.out]
    assert first.uses_prior and first.image_embeds is None
    assert second.steps == 7 and second.seed == 2**32 - 1 and second.guidance_scale == 7.0
    assert isinstance(second.guidance_scale, float)
    assert second.mask == batch_dir / "in" / "mask.png"
    assert second.outputs == [batch_dir / "results" / f"cap-{i}.png" for i in range(1, 4)]
    assert not second.uses_prior and second.negative_image_embeds == batch_dir / "in" / "neg.npy"
    spec = second.mask_spec()
    assert (spec.path, spec.grow, spec.feather) == (second.mask, 2, 4)
    assert prepare_job(first).input_size == (48, 64) and prepare_job(second).input_size == (48, 64)
    assert prepare_job(first).plan.working_size == (832, 640)   # 64x48 at --resolution 768, 4:3


def test_every_key_is_documented_in_the_example():
    example = (REPO / "configs" / "batch-example.yaml").read_text()
    for key in JOB_KEYS:
        assert re.search(rf"^#\s+(\S+,\s+)?{key}\b", example, re.M), key


def test_example_config_is_valid():
    jobs = load_batch(REPO / "configs" / "batch-example.yaml")
    assert len(jobs) >= 3
    for job in jobs:
        prepare_job(job)


def _job(extra="", image="in/cat.png", mask='mask_rects: ["0:10,0:10"]', prompt="prompt: a hat"):
    lines = [f"image: {image}" if image else "", mask, prompt] + textwrap.dedent(extra).splitlines()
    body = "\n".join("    " + line for line in lines if line)
    return "jobs:\n  - image: in/cat.png\n    mask_rects: [\"0:1,0:1\"]\n    prompt: first\n" \
           f"    out: first.png\n  -\n{body}\n"


@pytest.mark.parametrize("text, where, message", [
    # unknown keys
    (_job("promt: x"), "jobs[1]", r"unknown key 'promt' \(did you mean 'prompt'\?\)"),
    ("defaults:\n  stepz: 3\njobs: []\n", "defaults", "unknown key 'stepz'"),
    # wrong types (a bool is not an int, a string is not a number)
    (_job("steps: true"), "jobs[1].steps", "must be an integer .* got true \\(a boolean\\)"),
    (_job('steps: "10"'), "jobs[1].steps", "must be an integer .* got '10' \\(a string\\)"),
    (_job("steps: 10.5"), "jobs[1].steps", "must be an integer"),
    (_job("guidance_scale: high"), "jobs[1].guidance_scale", "must be a number"),
    (_job("guidance_scale: false"), "jobs[1].guidance_scale", "must be a number"),
    (_job("invert_mask: 1"), "jobs[1].invert_mask", "must be true or false"),
    (_job(prompt="prompt: 42"), "jobs[1].prompt", "must be text"),
    (_job(prompt="prompt:"), "jobs[1].prompt", "must not be empty"),
    (_job(prompt='prompt: "  "'), "jobs[1].prompt", "must not be empty"),
    (_job("negative_prompt: [a]"), "jobs[1].negative_prompt", "must be text"),
    (_job(mask='mask_rects: {a: 1}'), "jobs[1].mask_rects", "must be a list"),
    (_job(mask="mask_rects: [1:30]"), "jobs[1].mask_rects", "item 0 must be a quoted string .* got 90"),
    (_job(mask='mask_rects: ["0:10"]'), "jobs[1].mask_rects", "item 0: malformed rectangle '0:10'"),
    (_job(mask="mask: 3"), "jobs[1].mask", "must be a file path"),
    (_job("seed: 1.0"), "jobs[1].seed", "must be an integer"),
    # out of range
    (_job("steps: 0"), "jobs[1].steps", "from 1 to 1000, got 0"),
    (_job("steps: 1001"), "jobs[1].steps", "from 1 to 1000, got 1001"),
    (_job("prior_steps: -3"), "jobs[1].prior_steps", "got -3"),
    (_job("guidance_scale: -0.5"), "jobs[1].guidance_scale", "from 0 to 100, got -0.5"),
    (_job("guidance_scale: 101"), "jobs[1].guidance_scale", "from 0 to 100, got 101"),
    (_job("prior_guidance_scale: .nan"), "jobs[1].prior_guidance_scale", "from 0 to 100, got nan"),
    (_job("height: 100"), "jobs[1].height", "multiple of 64"),
    (_job("height: 0"), "jobs[1].height", "multiple of 64"),
    (_job("width: 8192"), "jobs[1].width", "from 64 to 4096"),
    (_job("num_images: 0"), "jobs[1].num_images", "got 0"),
    (_job("seed: -1"), "jobs[1].seed", "from 0 to 4294967295, got -1"),
    (_job("seed: 4294967296"), "jobs[1].seed", "got 4294967296"),
    (_job("grow: -1"), "jobs[1].grow", ">= 0, got -1"),
    (_job("feather: -2"), "jobs[1].feather", ">= 0, got -2"),
    (_job("out: result.gif"), "jobs[1].out", "must end in .png"),
    (_job("image_embeds: in/pos.txt\nnegative_image_embeds: in/neg.npy"), "jobs[1].image_embeds",
     "must end in .npy"),
    ("defaults:\n  steps: 0\njobs:\n  - {image: in/cat.png, prompt: x, mask_rects: ['0:1,0:1']}\n",
     "defaults.steps", "got 0"),
    # missing required keys
    (_job(image=""), "jobs[1]", "missing required key 'image'"),
    (_job(prompt=""), "jobs[1]", "missing required key 'prompt'"),
    (_job(mask=""), "jobs[1]: ", r"no mask given \(what to repaint\): give mask_rects and/or mask, or extend"),
    (_job(mask="mask_rects: []"), "jobs[1]: ", "no mask given .* give mask_rects and/or mask, or extend"),
    # rules between keys: worded with keys, not flags
    (_job("image_embeds: in/pos.npy"), "jobs[1]: ", "image_embeds and negative_image_embeds go together"),
    (_job("negative_image_embeds: in/neg.npy"), "jobs[1]: ", "image_embeds and negative_image_embeds go together"),
    (_job("resolution: 512\nheight: 64"), "jobs[1]: ", "height and width go together: .* follows resolution"),
    (_job("width: 128"), "jobs[1]: ", "height and width go together"),
    ("defaults:\n  height: 64\n" + _job(), "jobs[0]: ", "height and width go together"),
    # missing input files
    (_job(image="in/dog.png"), "jobs[1].image", "file not found: .*dog.png"),
    (_job(image="in"), "jobs[1].image", "not a file: "),
    (_job(mask="mask: in/nomask.png"), "jobs[1].mask", "file not found: .*nomask.png"),
    (_job("image_embeds: in/x.npy\nnegative_image_embeds: in/neg.npy"), "jobs[1].image_embeds", "not found"),
    # outputs
    (_job("out: first.png"), "jobs[1].out", "also written by jobs\\[0\\]"),
    (_job("out: in/cat.png"), "jobs[1].out", "would overwrite an input"),
    # structure
    ("jobs:\n  - just a string\n", "jobs[0]", "must be a mapping"),
    ("jobs: []\n", "jobs", "non-empty list"),
    ("jobs: {image: x}\n", "jobs", "non-empty list"),
    ("defaults: 3\njobs: []\n", "defaults", "must be a mapping"),
    ("defaults: []\njobs: []\n", "defaults", "must be a mapping"),
    ("job:\n  - image: in/cat.png\n", "jobs.yaml", r"unknown top-level key 'job' \(did you mean 'jobs'\?\)"),
    ("- image: in/cat.png\n", "jobs.yaml", "expected a mapping"),
    ("", "jobs.yaml", "an empty file"),
    ("jobs:\n  - image: [unclosed\n", "jobs.yaml", "invalid YAML at line 3"),
])
def test_errors_name_file_job_and_key(batch_dir, text, where, message):
    path = write(batch_dir, text)
    with pytest.raises(UserError) as err:
        load_batch(path)
    text = str(err.value)
    assert text.startswith(f"{path}: "), text
    assert where in text, text
    assert re.search(message, text), text
    assert "\n" not in text and " --" not in text, text   # keys, never flags


def test_missing_and_unreadable_batch_file(batch_dir):
    with pytest.raises(UserError, match="batch file not found: .*nope.yaml"):
        load_batch(batch_dir / "nope.yaml")
    (batch_dir / "bin.yaml").write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(UserError, match="cannot read batch file"):
        load_batch(batch_dir / "bin.yaml")


def test_yaml_is_loaded_safely(batch_dir):
    path = write(batch_dir, "jobs:\n  - !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(UserError, match="invalid YAML"):
        load_batch(path)


@pytest.mark.parametrize("job, key, message", [
    ('mask_rects: ["0:10,0:10", "100:200,0:10"]', "mask_rects[1]", "rows 100:200 lie outside the image"),
    ("mask: in/black.png", "mask", "selects no pixel"),
    ('mask_rects: [":,:"]\n    invert_mask: true', "invert_mask", "selects no pixel"),
    ("mask: in/bad.npy", "mask", r"outside \[0, 1\]"),
    ('mask_rects: ["0:1,0:1"]\n    image_embeds: in/bad_embeds.npy\n    negative_image_embeds: in/neg.npy',
     "image_embeds", "expected float32 embeddings"),
    ('mask_rects: ["0:1,0:1"]\n    image_embeds: in/garbage.npy\n    negative_image_embeds: in/neg.npy',
     "image_embeds", "not a valid .npy"),
])
def test_prepare_job_names_the_key(batch_dir, job, key, message):
    Image.new("L", (64, 48), 0).save(batch_dir / "in" / "black.png")
    np.save(batch_dir / "in" / "bad.npy", np.full((48, 64), 2.0))
    np.save(batch_dir / "in" / "bad_embeds.npy", np.zeros((2, 3, 4), np.int32))
    (batch_dir / "in" / "garbage.npy").write_bytes(b"nope")
    path = write(batch_dir, f"jobs:\n  - image: in/cat.png\n    prompt: x\n    {job}\n")
    (job_,) = load_batch(path)
    with pytest.raises(UserError, match=message) as err:
        prepare_job(job_)
    assert str(err.value).startswith(f"{path}: jobs[0].{key}: ")


def test_prepare_job_corrupt_image(batch_dir):
    (batch_dir / "in" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    path = write(batch_dir, "jobs:\n  - {image: in/broken.png, prompt: x, mask_rects: ['0:1,0:1']}\n")
    with pytest.raises(UserError, match=r"jobs\[0\]\.image: cannot read image"):
        prepare_job(load_batch(path)[0])


def test_prepare_job_warns_on_resized_mask(batch_dir):
    Image.new("L", (32, 24), 255).save(batch_dir / "in" / "small.png")
    path = write(batch_dir, "jobs:\n  - {image: in/cat.png, prompt: x, mask: in/small.png}\n")
    with pytest.warns(UserWarning, match="32x24 but the image is 64x48"):
        assert prepare_job(load_batch(path)[0]).input_size == (48, 64)
