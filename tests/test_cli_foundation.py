"""The CLI without models: mask, grid, batch --check; one `error:` line and exit code 2 for bad input."""
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from kandinsky_cli.cli import app
from kandinsky_cli.files import read_png_metadata

REPO = Path(__file__).resolve().parent.parent
COMMANDS = ["mask", "grid", "batch"]
runner = CliRunner()


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    """A current directory with cat.png (768x512), a small mask and broken files."""
    monkeypatch.chdir(tmp_path)
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (512, 768, 3), dtype=np.uint8)).save("cat.png")
    small = Image.new("L", (96, 64), 0)
    small.paste(255, (0, 0, 48, 32))
    small.save("small-mask.png")
    Image.new("L", (768, 512), 0).save("black.png")
    Path("corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 40)
    Path("notes.txt").write_text("hello")
    np.save("bad.npy", np.full((512, 768), 2.0, np.float32))
    return tmp_path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def assert_user_error(result, *fragments):
    """Exit code 2, exactly one line `error: ...` on stderr, no traceback, nothing on stdout."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    assert result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------------ mask

def test_mask_from_size(workdir):
    result = invoke("mask", "--size", "768x512", "--mask-rect", "0:250,250:518", "--out", "mask.png")
    assert result.exit_code == 0, result.output
    mask = np.asarray(Image.open("mask.png"))
    assert mask.shape == (512, 768) and mask.dtype == np.uint8
    expected = np.zeros((512, 768), np.uint8)
    expected[0:250, 250:518] = 255
    np.testing.assert_array_equal(mask, expected)
    meta = read_png_metadata("mask.png")
    assert meta["tool"] == "kandinsky"
    assert meta["parameters"]["mask_rects"] == ["0:250,250:518"] and meta["parameters"]["size"] == "768x512"
    assert "mask.png" in result.stdout


def test_mask_from_image_npy_union_invert_grow(workdir):
    result = invoke("mask", "cat.png", "--mask-rect", ":10,:10", "--mask-rect", "-10:,-10:", "--invert-mask",
                    "--grow", "2", "--out", "sub/dir/mask.npy")
    assert result.exit_code == 0, result.output
    mask = np.load("sub/dir/mask.npy")
    assert mask.dtype == np.float32 and mask.shape == (512, 768)
    assert set(np.unique(mask)) == {0.0, 1.0}
    assert mask[0, 0] == 0 and mask[-1, -1] == 0 and mask[5, 20] == 1
    assert mask[0, 9] == 1  # grown by 2 back into the kept corner


def test_mask_file_resized_with_warning(workdir):
    result = invoke("mask", "cat.png", "--mask", "small-mask.png", "--out", "m.png")
    assert result.exit_code == 0, result.output
    assert "warning: mask small-mask.png is 96x64 but the image is 768x512" in result.stderr
    mask = np.asarray(Image.open("m.png"))
    assert mask[:256, :384].all() and not mask[256:, :].any() and not mask[:, 384:].any()


def test_mask_dash_value(workdir):
    result = invoke("mask", "--size", "10x10", "--mask-rect", "-3:,:", "--out", "m.npy")
    assert result.exit_code == 0, result.output
    assert np.load("m.npy")[-3:].all() and np.load("m.npy").sum() == 30


# ------------------------------------------------------------------------------------------ grid

def test_grid(workdir):
    invoke("mask", "cat.png", "--mask-rect", "0:250,250:518", "--out", "mask.png")
    invoke("mask", "cat.png", "--mask-rect", "0:250,250:518", "--out", "mask.npy")
    result = invoke("grid", "cat.png", "mask.png", "mask.npy", "--rows", "1", "--out", "out/grid.png")
    assert result.exit_code == 0, result.output
    grid = np.asarray(Image.open("out/grid.png"))
    assert grid.shape == (512, 3 * 768, 3)
    np.testing.assert_array_equal(grid[:, :768], np.asarray(Image.open("cat.png")))
    assert (grid[:, 768:1536] == grid[:, 1536:]).all()  # the PNG and the .npy mask look the same
    assert read_png_metadata("out/grid.png")["parameters"]["cols"] == 3


def test_grid_two_rows(workdir):
    result = invoke("grid", "cat.png", "cat.png", "cat.png", "--rows", "2", "--out", "g.jpg")
    assert result.exit_code == 0, result.output
    assert Image.open("g.jpg").size == (2 * 768, 2 * 512)


# ------------------------------------------------------------------------------------------ batch

def test_batch_check_example():
    result = invoke("batch", REPO / "configs" / "batch-example.yaml", "--check")
    assert result.exit_code == 0, result.output
    for text in ("job", "image", "mask", "prompt", "outputs", "red top", "ok: 3 job(s), 4 image(s)"):
        assert text in result.stdout


def test_batch_needs_a_file_or_a_folder():
    assert_user_error(invoke("batch"), "give a batch file")
    assert_user_error(invoke("batch", REPO / "configs" / "batch-example.yaml", "--images", "."), "not both")
    assert_user_error(invoke("batch", REPO / "configs" / "batch-example.yaml", "--steps", "3"),
                      "--steps", "folder mode")


# ------------------------------------------------------------------------------------------ bad input

BAD_INPUTS = [
    (["mask", "--size", "768x", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["'768x'"]),
    (["mask", "--size", "0x10", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["'0x10'"]),
    (["mask", "--size", "abc", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["'abc'"]),
    (["mask", "cat.png", "--mask-rect", "0:250", "--out", "m.png"], ["malformed rectangle '0:250'"]),
    (["mask", "cat.png", "--mask-rect", "0:250,a:b", "--out", "m.png"], ["'0:250,a:b'"]),
    (["mask", "cat.png", "--mask-rect", "600:700,0:10", "--out", "m.png"], ["'600:700,0:10'", "outside"]),
    (["mask", "cat.png", "--mask-rect", "0:10,900:", "--out", "m.png"], ["'0:10,900:'", "outside"]),
    (["mask", "cat.png", "--mask-rect", "10:5,0:10", "--out", "m.png"], ["'10:5,0:10'", "select nothing"]),
    (["mask", "cat.png", "--mask", "missing.png", "--out", "m.png"], ["missing.png"]),
    (["mask", "cat.png", "--mask", "corrupt.png", "--out", "m.png"], ["corrupt.png"]),
    (["mask", "cat.png", "--mask", "notes.txt", "--out", "m.png"], ["notes.txt"]),
    (["mask", "cat.png", "--mask", "bad.npy", "--out", "m.png"], ["bad.npy", "[0, 1]"]),
    (["mask", "cat.png", "--mask", "black.png", "--out", "m.png"], ["selects no pixel"]),
    (["mask", "cat.png", "--mask-rect", ":,:", "--invert-mask", "--out", "m.png"], ["selects no pixel"]),
    (["mask", "missing.png", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["missing.png"]),
    (["mask", "corrupt.png", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["corrupt.png"]),
    (["mask", "cat.png", "--out", "m.png"], ["no mask given"]),
    (["mask", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["--size"]),
    (["mask", "cat.png", "--size", "8x8", "--mask-rect", "0:1,0:1", "--out", "m.png"], ["not both"]),
    (["mask", "cat.png", "--mask-rect", "0:1,0:1", "--out", "m.gif"], ["m.gif", ".png or .npy"]),
    (["mask", "cat.png", "--mask-rect", "0:1,0:1", "--grow", "-1", "--out", "m.png"], ["--grow"]),
    (["mask", "cat.png", "--mask-rect", "0:1,0:1", "--grow", "x", "--out", "m.png"], ["--grow"]),
    (["mask", "cat.png", "--mask-rect", "0:1,0:1"], ["--out"]),
    (["mask", "cat.png", "--bogus"], ["--bogus"]),
    (["grid", "cat.png", "cat.png", "cat.png", "--rows", "1", "--cols", "2", "--out", "g.png"],
     ["3 images do not fit"]),
    (["grid", "cat.png", "missing.png", "--rows", "1", "--out", "g.png"], ["missing.png"]),
    (["grid", "cat.png", "corrupt.png", "--rows", "1", "--out", "g.png"], ["corrupt.png"]),
    (["grid", "cat.png", "--rows", "0", "--out", "g.png"], ["--rows"]),
    (["grid", "cat.png", "--rows", "1", "--out", "g.gif"], ["g.gif"]),
    (["grid", "--rows", "1", "--out", "g.png"], ["IMAGES"]),
    (["batch", "missing.yaml", "--check"], ["missing.yaml"]),
    (["batch", "notes.txt", "--check"], ["notes.txt"]),
    (["nope"], ["nope"]),
]


@pytest.mark.parametrize("args, fragments", BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_error_line(workdir, args, fragments):
    before = sorted(os.listdir(workdir))
    assert_user_error(invoke(*args), *fragments)
    assert sorted(os.listdir(workdir)) == before  # nothing written, not even a temporary file


def test_batch_errors_name_file_job_and_key(workdir):
    Path("jobs.yaml").write_text("jobs:\n  - image: cat.png\n    prompt: a hat\n    mask_rects: ['0:1,0:1']\n"
                                 "    steps: true\n")
    assert_user_error(invoke("batch", "jobs.yaml", "--check"), "jobs.yaml", "jobs[0].steps", "integer")
    Path("jobs.yaml").write_text("jobs:\n  - image: cat.png\n    prompt: a hat\n    mask_rects: ['600:,:']\n")
    assert_user_error(invoke("batch", "jobs.yaml", "--check"), "jobs.yaml: jobs[0].mask_rects[0]", "outside")


def test_interrupt_leaves_no_output(workdir, monkeypatch):
    import kandinsky_cli.masks as masks
    from kandinsky_cli.files import atomic_write

    def interrupted(path, mask, metadata=None):  # Ctrl-C in the middle of writing the file
        with atomic_write(path) as f:
            f.write(b"partial")
            raise KeyboardInterrupt
    monkeypatch.setattr(masks, "save_mask", interrupted)
    result = invoke("mask", "cat.png", "--mask-rect", "0:1,0:1", "--out", "m.png")
    assert result.exit_code == 130
    assert sorted(os.listdir(workdir)) == sorted(["cat.png", "small-mask.png", "black.png", "corrupt.png",
                                                  "notes.txt", "bad.npy"])


# ------------------------------------------------------------------------------------------ help and speed

@pytest.mark.parametrize("command", [[]] + [[c] for c in COMMANDS])
def test_help(command):
    result = invoke(*command, "--help")
    assert result.exit_code == 0, result.output
    assert "Usage" in result.stdout


def test_help_mentions_conventions():
    assert "WIDTHxHEIGHT" in invoke("mask", "--help").stdout
    assert "white = repaint" in invoke("--help").stdout


def test_version():
    result = invoke("--version")
    assert result.exit_code == 0 and result.stdout.startswith("kandinsky ")


def _python(*args, **kwargs):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120, **kwargs)


def test_help_never_imports_mindspore():
    code = ("import sys\n"
            "import kandinsky_cli.cli, kandinsky_cli.masks, kandinsky_cli.grid, kandinsky_cli.batchfile\n"
            "assert 'mindspore' not in sys.modules\n"
            "from typer.testing import CliRunner\n"
            f"for args in ([], {COMMANDS!r}):\n"
            "    for c in (args if args else [None]):\n"
            "        r = CliRunner().invoke(kandinsky_cli.cli.app, ([c] if c else []) + ['--help'])\n"
            "        assert r.exit_code == 0, r.output\n"
            "assert 'mindspore' not in sys.modules, 'mindspore was imported'\n")
    result = _python("-c", code)
    assert result.returncode == 0, result.stderr


def test_help_imports_nothing_heavy():
    # --help must stay fast: it may not import MindSpore, SciPy or the networks
    code = ("import sys; from kandinsky_cli.cli import app\n"
            "try:\n    app(['mask', '--help'])\nexcept SystemExit:\n    pass\n"
            "print(sorted(m for m in ('mindspore', 'scipy', 'kandinsky_cli.unet', 'kandinsky_cli.core') "
            "if m in sys.modules))")
    result = _python("-c", code)
    assert result.returncode == 0 and "Usage" in result.stdout
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout[-500:]


@pytest.mark.parametrize("args, fragment", [
    (["mask", "--size", "768x", "--mask-rect", "0:250,250:518", "--out", "m.png"], "'768x'"),
    (["mask", "--size", "64x64", "--mask-rect", "0:250", "--out", "m.png"], "'0:250'"),
    (["mask", "missing.png", "--mask-rect", "0:1,0:1", "--out", "m.png"], "missing.png"),
    (["grid", "--rows", "1", "--out", "g.png"], "IMAGES"),
    (["batch", "x.yaml"], "batch file not found: x.yaml"),
])
def test_subprocess_exit_code_and_single_line(tmp_path, args, fragment):
    result = _python("-m", "kandinsky_cli", *args, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert os.listdir(tmp_path) == []


def test_console_script_entry_point():
    script = Path(sys.executable).with_name("kandinsky")
    if not script.exists():
        pytest.skip("the kandinsky console script is not installed next to this python")
    result = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout.startswith("kandinsky ")
