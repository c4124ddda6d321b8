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
