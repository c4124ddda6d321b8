"""Bad input through every entry point: one `error:` line, exit code 2, no traceback, nothing written or lost."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kandinsky_cli.cli import app

FIXTURE = Path(__file__).parent / "fixtures" / "kandinsky21-tiny"
PRIOR, DECODER = str(FIXTURE / "prior"), str(FIXTURE / "inpaint")
runner = CliRunner()


@pytest.fixture
def work(tmp_path):
    Image.fromarray(np.full((64, 64, 3), 100, np.uint8)).save(tmp_path / "in.png")
    return tmp_path


def files_in(folder: Path):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def one_error_line(result, fragment):
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    assert fragment in lines[0], lines[0]


def inpaint_args(work, *extra, prompt="a hat"):
    return ["inpaint", str(work / "in.png"), "--mask-rect", "0:9,0:9", "--prompt", prompt,
            "--prior-model", str(work / "no-prior"), "--decoder-model", str(work / "no-decoder"), *extra]


BAD_TEXT = [("   ", "must not be empty or only white space"), ("\t\n", "must not be empty or only white space"),
            ("a\x00b", "contains the control character U+0000"), ("bell\x07", "contains the control character U+0007"),
            ("esc\x1b[31m", "contains the control character U+001B"), ("x" * 5000, "is 5000 characters long; at most 4096")]


@pytest.mark.parametrize("text,fragment", BAD_TEXT)
def test_bad_prompts_are_refused_everywhere(work, text, fragment):
    before = files_in(work)
    one_error_line(runner.invoke(app, inpaint_args(work, prompt=text)), f"--prompt: {fragment}")
    one_error_line(runner.invoke(app, ["prior", text, "--prior-model", str(work / "no-prior")]),
                   f"PROMPT: {fragment}")
    one_error_line(runner.invoke(app, ["batch", "--images", str(work), "--mask-rect", "0:9,0:9", "--prompt", text,
                                       "--out-dir", str(work / "out"), "--check"]), f"--prompt: {fragment}")
    one_error_line(runner.invoke(app, inpaint_args(work, "--negative-prompt", text.strip() + "\x01")),
                   "--negative-prompt: ")
    escaped = text.encode("unicode_escape").decode("ascii").replace('"', '\\"')
    (work / "jobs.yaml").write_text(f'jobs:\n  - {{image: in.png, mask_rects: ["0:9,0:9"], prompt: "{escaped}"}}\n')
    one_error_line(runner.invoke(app, ["batch", str(work / "jobs.yaml"), "--check"]), "jobs[0].prompt: ")
    (work / "jobs.yaml").unlink()
    assert files_in(work) == before


def test_a_prompt_that_is_not_utf8_is_one_line(work):
    # the shell hands over bytes; Python keeps undecodable ones as surrogate escapes
    env = dict(os.environ, PYTHONIOENCODING="utf-8")
    for args in ([b"inpaint", str(work / "in.png").encode(), b"--mask-rect", b"0:9,0:9", b"--prompt", b"caf\xe9",
                  b"--prior-model", PRIOR.encode(), b"--decoder-model", DECODER.encode()],
                 [b"prior", b"\xff\xfe hat", b"--prior-model", PRIOR.encode(), b"--out-dir", str(work).encode()]):
        proc = subprocess.run([sys.executable.encode(), b"-m", b"kandinsky_cli", *args], capture_output=True,
                              timeout=120, env=env, cwd=work)
        stderr = proc.stderr.decode("utf-8", "replace")
        assert proc.returncode == 2, stderr
        lines = [line for line in stderr.splitlines() if line.strip()]
        assert len(lines) == 1 and "is not valid UTF-8 text" in lines[0], stderr
    assert files_in(work) == ["in.png"]


def test_outputs_that_cannot_be_written_are_refused_before_any_model_loads(work):
    (work / "folder.png").mkdir()
    (work / "afile").write_text("x")
    # the model folders do not exist: the output is checked first
    one_error_line(runner.invoke(app, inpaint_args(work, "--out", str(work / "folder.png"))), "it is a folder")
    one_error_line(runner.invoke(app, inpaint_args(work, "--out", str(work / "afile" / "o.png"))), "afile")
    one_error_line(runner.invoke(app, ["prior", "x", "--prior-model", str(work / "none"), "--out-dir",
                                       str(work / "afile")]), "afile")
    one_error_line(runner.invoke(app, ["batch", "--images", str(work), "--mask-rect", "0:9,0:9", "--prompt", "x",
                                       "--out-dir", str(work / "afile")]), "is not a folder")
    assert files_in(work) == ["afile", "folder.png", "in.png"]


def test_a_set_of_outputs_is_all_or_nothing(work):
    (work / "o-2.png").mkdir()        # the second of two outputs cannot be written
    one_error_line(runner.invoke(app, inpaint_args(work, "--num-images", "2", "--out", str(work / "o.png"))),
                   "o-2.png")
    assert not (work / "o-1.png").exists()
    (work / "e").mkdir()
    (work / "e" / "p.negative_image_embeds.npy").mkdir()   # the second file of the prior's pair
    one_error_line(runner.invoke(app, ["prior", "x", "--prior-model", str(work / "none"), "--out-dir",
                                       str(work / "e"), "--name", "p"]), "p.negative_image_embeds.npy")
    assert files_in(work / "e") == ["p.negative_image_embeds.npy"]


def test_batch_check_names_an_output_that_cannot_be_written(work):
    (work / "o.png").mkdir()
    (work / "jobs.yaml").write_text('jobs:\n  - {image: in.png, mask_rects: ["0:9,0:9"], prompt: x, out: o.png}\n')
    result = runner.invoke(app, ["batch", str(work / "jobs.yaml"), "--check"])
    one_error_line(result, "jobs[0].out: ")


# ------------------------------------------------------------------------------------------ rules between options

def warning_lines(result):
    return [line for line in result.output.splitlines() if line.startswith("warning:")]


def folder_args(work, *extra):
    return ["batch", "--images", str(work), "--prompt", "x", "--out-dir", str(work / "out"), "--check", *extra]


def write_jobs(work, body, defaults=""):
    (work / "jobs.yaml").write_text((f"defaults: {{{defaults}}}\n" if defaults else "") + "jobs:\n" + body)
    return str(work / "jobs.yaml")


def job_line(extra=""):
    return f"  - {{image: in.png, prompt: x{', ' if extra else ''}{extra}}}\n"


@pytest.mark.parametrize("masks", ["", "mask_rects: []"])
def test_no_mask_is_one_rule_everywhere(work, masks):
    """Nothing to repaint: the same rule and words (flags or keys) in every entry point."""
    one_error_line(runner.invoke(app, ["inpaint", str(work / "in.png"), "--prompt", "x"]),
                   "no mask given (what to repaint): give --mask-rect and/or --mask, or --extend")
    one_error_line(runner.invoke(app, ["mask", str(work / "in.png"), "--out", str(work / "m.png")]),
                   "no mask given (what to repaint): give --mask-rect and/or --mask, or --extend")
    one_error_line(runner.invoke(app, folder_args(work)), "give --mask-rect and/or --mask, or --masks DIR")
    one_error_line(runner.invoke(app, ["batch", write_jobs(work, job_line(masks)), "--check"]),
                   "jobs.yaml: jobs[0]: no mask given (what to repaint): give mask_rects and/or mask, or extend")
    assert files_in(work) == ["in.png", "jobs.yaml"]


@pytest.mark.parametrize("spec", ["top=8", "left=16,right=8", "bottom=1"])
def test_margins_alone_are_the_mask_everywhere(work, spec):
    result = runner.invoke(app, folder_args(work, "--extend", spec))
    assert result.exit_code == 0 and "ok" in result.output, result.output
    result = runner.invoke(app, ["batch", write_jobs(work, job_line(f"extend: '{spec}'")), "--check"])
    assert result.exit_code == 0 and "ok" in result.output, result.output
    result = runner.invoke(app, ["mask", str(work / "in.png"), "--extend", spec, "--out", str(work / "m.png")])
    assert result.exit_code == 0, result.output
    # inpaint gets past every input check: the first error is the missing model folder
    no_rect = [a for a in inpaint_args(work) if a not in ("--mask-rect", "0:9,0:9")]
    result = runner.invoke(app, no_rect + ["--extend", spec])
    assert result.exit_code == 2 and "no-prior" in result.output and "mask" not in result.output, result.output


@pytest.mark.parametrize("flags, keys, words", [
    (["--height", "64"], "height: 64", "height and width go together"),
    (["--width", "128", "--resolution", "512"], "width: 128, resolution: 512", "height and width go together"),
])
def test_pairs_are_worded_for_the_entry_point(work, flags, keys, words):
    flagged = words.replace("height", "--height").replace("width", "--width")
    one_error_line(runner.invoke(app, inpaint_args(work, *flags)), flagged)
    one_error_line(runner.invoke(app, ["mask", str(work / "in.png"), "--mask-rect", "0:9,0:9", *flags, "--out",
                                       str(work / "m.png")]), flagged)
    one_error_line(runner.invoke(app, folder_args(work, "--mask-rect", "0:9,0:9", *flags)), flagged)
    result = runner.invoke(app, ["batch", write_jobs(work, job_line(f"mask_rects: ['0:9,0:9'], {keys}")), "--check"])
    one_error_line(result, f"jobs.yaml: jobs[0]: {words}: give both or neither (without them the working size "
                           f"follows resolution)")
    assert " --" not in result.output
    for half in ("image_embeds", "negative_image_embeds"):
        np.save(work / "e.npy", np.zeros((1, 8), np.float32))
        one_error_line(runner.invoke(app, inpaint_args(work, "--" + half.replace("_", "-"), str(work / "e.npy"))),
                       "--image-embeds and --negative-image-embeds go together")
        result = runner.invoke(app, ["batch", write_jobs(work, job_line(f"mask_rects: ['0:9,0:9'], {half}: e.npy")),
                                     "--check"])
        one_error_line(result, "jobs.yaml: jobs[0]: image_embeds and negative_image_embeds go together")


@pytest.mark.parametrize("flags, side", [
    (["--extend", "left=16", "--extend", "left=8"], "left"),
    (["--extend", "top=4,right=2", "--extend", "bottom=1,right=3"], "right"),
    (["--extend", "top=1,top=2"], "top"),
])
def test_a_side_given_twice_is_refused_in_every_command(work, flags, side):
    one_error_line(runner.invoke(app, inpaint_args(work, *flags)), f"side {side} is given twice")
    one_error_line(runner.invoke(app, folder_args(work, *flags)), f"side {side} is given twice")
    one_error_line(runner.invoke(app, ["mask", str(work / "in.png"), *flags, "--out", str(work / "m.png")]),
                   f"side {side} is given twice")


@pytest.mark.parametrize("flags, size", [
    (["--extend", "left=16", "--extend", "right=8"], "88x64"),
    (["--extend", "top=4", "--extend", "bottom=6,left=1", "--extend", "right=2"], "67x74"),
])
def test_repeated_extend_flags_merge_their_sides(work, flags, size):
    result = runner.invoke(app, ["mask", str(work / "in.png"), *flags, "--out", str(work / "m.png"), "--json"])
    assert result.exit_code == 0, result.output
    width, height = map(int, size.split("x"))
    assert Image.open(work / "m.png").size == (width, height)
    result = runner.invoke(app, folder_args(work, *flags))
    assert result.exit_code == 0 and size in result.output, result.output


@pytest.mark.parametrize("mix, words", [
    (["a cat=0", "a dog=0"], "are all zero"),
    (["a cat=0"], "are all zero"),
    (["a cat=1", "a dog=-1"], "sum to 0"),
    (["a cat=0.25", "a dog=0.5", "a cow=-0.75"], "sum to 0"),
])
def test_mix_weights_that_sum_to_zero_are_refused(work, mix, words):
    args = [a for item in mix for a in ("--mix", item)]
    result = runner.invoke(app, ["prior", *args, "--prior-model", str(work / "none"), "--out-dir", str(work)])
    one_error_line(result, f"the weights of --mix {words}")
    # with a prompt (weight 1) the same weights no longer cancel, unless they make -1
    with_prompt = runner.invoke(app, ["prior", "a hat", *args, "--mix", "a fox=-1", "--prior-model",
                                      str(work / "none"), "--out-dir", str(work)])
    one_error_line(with_prompt, "the weights of --mix (with the prompt's 1) sum to 0")
    fine = runner.invoke(app, ["prior", "a hat", *args, "--prior-model", str(work / "none"), "--out-dir", str(work)])
    assert fine.exit_code == 2 and "--mix" not in fine.output and "none" in fine.output, fine.output


IGNORED = [  # flags, YAML keys, the option named as ignored
    (["--resolution", "512", "--height", "64", "--width", "64"], "resolution: 512, height: 64, width: 64",
     "resolution"),
    (["--region-padding", "8"], "region_padding: 8", "region-padding"),
    (["--region", "full", "--region-padding", "8"], "region: full, region_padding: 8", "region-padding"),
    (["--extend-fill", "blur"], "extend_fill: blur", "extend-fill"),
]


@pytest.mark.parametrize("flags, keys, flag", IGNORED)
def test_ignored_options_get_one_warning_line(work, flags, keys, flag):
    key = flag.replace("-", "_")
    result = runner.invoke(app, folder_args(work, "--mask-rect", "0:9,0:9", *flags))
    assert result.exit_code == 0, result.output
    (line,) = warning_lines(result)
    assert line.startswith(f"warning: --{flag} is ignored"), line
    result = runner.invoke(app, ["batch", write_jobs(work, job_line("mask_rects: ['0:9,0:9']") +
                                                     job_line(f"mask_rects: ['0:9,0:9'], {keys}, out: b.png")),
                                 "--check"])
    assert result.exit_code == 0, result.output
    (line,) = warning_lines(result)
    assert line.startswith(f"warning: {work / 'jobs.yaml'}: jobs[1]: {key} is ignored") and " --" not in line, line
    result = runner.invoke(app, inpaint_args(work, *flags))
    assert result.exit_code == 2 and len(warning_lines(result)) == 1, result.output
    assert warning_lines(result)[0].startswith(f"warning: --{flag} is ignored")


def test_ignored_keys_of_defaults_are_named_once(work):
    body = job_line("mask_rects: ['0:9,0:9']") + job_line("mask_rects: ['0:9,0:9'], out: b.png")
    result = runner.invoke(app, ["batch", write_jobs(work, body, defaults="extend_fill: noise"), "--check"])
    assert result.exit_code == 0
    (line,) = warning_lines(result)
    assert f"jobs.yaml: defaults: extend_fill is ignored without extend" in line and "(in every job)" in line
    # where one job uses it, a default is no mistake
    body = job_line("mask_rects: ['0:9,0:9']") + job_line("extend: {left: 8}, out: b.png")
    result = runner.invoke(app, ["batch", write_jobs(work, body, defaults="extend_fill: noise"), "--check"])
    assert result.exit_code == 0 and warning_lines(result) == [], result.output


def test_defaults_that_were_not_given_are_not_warned_about(work):
    result = runner.invoke(app, folder_args(work, "--mask-rect", "0:9,0:9", "--height", "64", "--width", "64"))
    assert result.exit_code == 0 and warning_lines(result) == [], result.output
    result = runner.invoke(app, ["batch", write_jobs(work, job_line("mask_rects: ['0:9,0:9'], height: 64, "
                                                                    "width: 64")), "--check"])
    assert result.exit_code == 0 and warning_lines(result) == [], result.output


# ------------------------------------------------------------------------------------------ canvas size policy

HUGE_MARGINS = ["top=8192,right=8192,bottom=8192,left=8192", "top=16384,bottom=16384,left=2000",
                "top=16384,left=8000", "right=8192,bottom=8192"]   # on 64x48: 270, 68, 132 and 68 megapixels


@pytest.mark.parametrize("spec", HUGE_MARGINS)
def test_an_extended_canvas_obeys_the_image_size_policy(work, spec):
    """Refused from the numbers (no canvas is allocated: fast), exit 2, with the limit; in every entry point."""
    import time

    from kandinsky_cli.files import MAX_IMAGE_PIXELS

    Image.fromarray(np.zeros((48, 64, 3), np.uint8)).save(work / "in.png")
    limit = f"the limit is {MAX_IMAGE_PIXELS} pixels"
    t0 = time.perf_counter()
    one_error_line(runner.invoke(app, inpaint_args(work, "--extend", spec)), limit)
    one_error_line(runner.invoke(app, ["mask", str(work / "in.png"), "--extend", spec, "--out", str(work / "m.png")]),
                   limit)
    one_error_line(runner.invoke(app, folder_args(work, "--extend", spec)), limit)
    result = runner.invoke(app, ["batch", write_jobs(work, job_line(f"extend: '{spec}'")), "--check"])
    one_error_line(result, "jobs.yaml: jobs[0].extend: the extended canvas (the 64x48 image plus margins")
    assert limit in result.output and "out of memory" not in result.output
    assert time.perf_counter() - t0 < 5
    assert files_in(work) == ["in.png", "jobs.yaml"]


def test_a_canvas_at_the_limit_is_accepted(work):
    Image.fromarray(np.zeros((1, 64, 3), np.uint8)).save(work / "in.png")
    # 64 + 8128 = 8192 wide, 1 + 8191 = 8192 high: exactly the limit
    result = runner.invoke(app, ["mask", str(work / "in.png"), "--extend", "right=8128,bottom=8191", "--out",
                                 str(work / "m.npy"), "--json"])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["mask", str(work / "in.png"), "--extend", "right=8128,bottom=8192", "--out",
                                 str(work / "m2.npy")])
    one_error_line(result, "8192x8193 pixels")


@pytest.mark.parametrize("command, advice", [
    ("inpaint", "try a smaller working size (--resolution, or --height/--width"),
    ("mask", "free some memory and run it again"),
])
def test_out_of_memory_gives_advice_that_fits_the_command(work, monkeypatch, command, advice):
    import kandinsky_cli.files

    def no_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(kandinsky_cli.files, "open_image", no_memory)
    args = inpaint_args(work) if command == "inpaint" else ["mask", str(work / "in.png"), "--mask-rect", "0:9,0:9",
                                                             "--out", str(work / "m.png")]
    result = runner.invoke(app, args)
    assert result.exit_code == 1 and "Traceback" not in result.output, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: out of memory: ") and advice in lines[0], lines
    assert command == "inpaint" or "--height" not in lines[0]


# ------------------------------------------------------------------------------------------ --check keeps its word

SAMPLER_CASES = [  # with the fixture's scheduler config (1000 training steps, 'leading' spacing, offset 1)
    ("ddim", 1000, False), ("ddim", 999, True), ("dpmpp-2m", 999, False), ("dpmpp-2m-sde", 1000, False),
    ("dpmpp-2m-karras", 998, True), ("ddpm", 1000, True),
]


@pytest.mark.parametrize("scheduler, steps, runs", SAMPLER_CASES)
def test_check_refuses_what_the_run_refuses(work, scheduler, steps, runs):
    """One rule: the same verdict from `inpaint` (which refuses before loading any network), `batch --check` on a
    batch file and on a folder, with the decoder folder given."""
    models = ["--prior-model", PRIOR, "--decoder-model", DECODER]
    settings = ["--scheduler", scheduler, "--steps", str(steps)]
    refused = f"{scheduler}: "
    folder = runner.invoke(app, folder_args(work, "--mask-rect", "0:9,0:9", *settings, *models))
    jobs = write_jobs(work, job_line(f"mask_rects: ['0:9,0:9'], scheduler: {scheduler}, steps: {steps}"))
    from_file = runner.invoke(app, ["batch", jobs, "--check", *models])
    if runs:
        assert folder.exit_code == 0 and from_file.exit_code == 0, (folder.output, from_file.output)
        assert "not checked" not in folder.output + from_file.output
        return
    one_error_line(folder, f"--steps {steps} with --scheduler {refused}")
    one_error_line(from_file, f"jobs.yaml: jobs[0]: steps {steps} with scheduler {refused}")
    # the inpaint command: refused before any network is built (the output file is never written)
    one_error_line(runner.invoke(app, ["inpaint", str(work / "in.png"), "--mask-rect", "0:9,0:9", "--prompt", "x",
                                       *settings, *models, "--out", str(work / "o.png")]),
                   f"--steps {steps} with --scheduler {refused}")
    assert files_in(work) == ["in.png", "jobs.yaml"]


def test_check_says_what_it_could_not_check(work, monkeypatch, tmp_path):
    """A hub id that is not cached: --check does not download it, and says the model checks were left out."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    jobs = write_jobs(work, job_line("mask_rects: ['0:9,0:9'], scheduler: ddim, steps: 1000"))
    result = runner.invoke(app, ["batch", jobs, "--check", "--decoder-model", "nobody/not-cached-model"])
    assert result.exit_code == 0, result.output
    assert "not checked: sampler steps and memory, because the decoder nobody/not-cached-model is not in the " \
           "Hugging Face cache yet" in " ".join(result.output.split())
    # offline, the run could not start either: --check refuses
    result = runner.invoke(app, ["batch", jobs, "--check", "--decoder-model", "nobody/not-cached-model", "--offline"])
    one_error_line(result, "nobody/not-cached-model")
