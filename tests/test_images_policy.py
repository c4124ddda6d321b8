"""The image size policy: images and image masks up to MAX_IMAGE_PIXELS are read, larger ones are refused
from their header with one clear line, and Pillow's decompression-bomb warning or error never shows."""
import io
import struct
import warnings
import zlib

import pytest
from PIL import Image
from typer.testing import CliRunner

from kandinsky_cli.cli import app
from kandinsky_cli.errors import UserError
from kandinsky_cli.files import MAX_IMAGE_PIXELS, load_image
from kandinsky_cli.masks import read_mask_file


def png_header_only(path, width, height):
    """A PNG that declares width x height (8-bit grey) but holds no pixel data: only reading its header
    can succeed, decoding it fails."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)))
    return path


def jpeg_declaring(path, width, height):
    """A small real JPEG whose frame header (SOF0) is patched to declare width x height."""
    buffer = io.BytesIO()
    Image.new("L", (16, 16), 128).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5:sof + 9] = struct.pack(">HH", height, width)
    path.write_bytes(bytes(data))
    return path


def assert_too_large(error_text, name, size):
    assert name in error_text and size in error_text and str(MAX_IMAGE_PIXELS) in error_text, error_text
    assert "DOS" not in error_text and "ecompression" not in error_text, error_text


@pytest.fixture
def big_png(tmp_path):
    """A real 10000x10000 PNG (100 megapixels; 1-bit, so it is small on disk and in memory)."""
    path = tmp_path / "big.png"
    Image.new("1", (10000, 10000)).save(path)
    return path


def test_limit_is_below_pillows_warning():
    assert 24_000_000 < 50_000_000 < MAX_IMAGE_PIXELS < Image.MAX_IMAGE_PIXELS


def test_100_megapixels_refused_without_pillow_warnings(big_png):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a DecompressionBombWarning would fail here
        with pytest.raises(UserError) as err:
            load_image(big_png)
    assert_too_large(str(err.value), "big.png", "10000x10000")
    assert str(err.value).startswith(f"image {big_png} is too large")


def test_24_megapixel_photo_accepted(tmp_path):
    Image.new("RGB", (6000, 4000), (90, 120, 200)).save(tmp_path / "photo.jpg", quality=90)
    image = load_image(tmp_path / "photo.jpg")
    assert image.size == (6000, 4000) and image.mode == "RGB"


@pytest.mark.parametrize("width, height", [(20000, 10000), (100000, 100000), (2**31 - 1, 2**31 - 1)])
def test_beyond_pillows_own_error_limit(tmp_path, width, height):
    """Above 2 * Image.MAX_IMAGE_PIXELS Pillow itself would raise its 'DOS attack' error."""
    path = png_header_only(tmp_path / "huge.png", width, height)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(UserError) as err:
            load_image(path)
    assert_too_large(str(err.value), "huge.png", f"{width}x{height}")


def test_checked_from_the_header_before_decoding(tmp_path):
    """The files hold no pixels: at the limit decoding is attempted (and fails), above it it is not."""
    at_limit = png_header_only(tmp_path / "at.png", 8192, 8192)
    with pytest.raises(UserError, match="cannot read image") as err:
        load_image(at_limit)
    assert "too large" not in str(err.value)
    above = png_header_only(tmp_path / "above.png", 8193, 8192)
    with pytest.raises(UserError, match="too large"):
        load_image(above)
    with pytest.raises(UserError, match="too large") as err:
        load_image(jpeg_declaring(tmp_path / "wide.jpg", 65000, 2000))
    assert "65000x2000" in str(err.value)


def test_mask_files_follow_the_same_policy(big_png):
    with pytest.raises(UserError) as err:
        read_mask_file(big_png)
    assert str(err.value).startswith(f"mask {big_png} is too large")
    assert_too_large(str(err.value), "big.png", "10000x10000")


# ------------------------------------------------------------------------------------------ the command line

def _one_error_line(result):
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output and "Warning" not in result.output
    return lines[0]


def test_mask_command_refuses_a_large_image(big_png, tmp_path):
    runner = CliRunner()
    line = _one_error_line(runner.invoke(app, ["mask", str(big_png), "--mask-rect", "0:1,0:1",
                                               "--out", str(tmp_path / "m.png")]))
    assert_too_large(line, "big.png", "10000x10000")
    line = _one_error_line(runner.invoke(app, ["mask", "--size", "64x64", "--mask", str(big_png),
                                               "--out", str(tmp_path / "m.png")]))
    assert line.startswith(f"error: mask {big_png} is too large")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["big.png"]


def test_mask_command_accepts_6000x4000(tmp_path):
    Image.new("L", (6000, 4000)).save(tmp_path / "photo.png")
    result = CliRunner().invoke(app, ["mask", str(tmp_path / "photo.png"), "--mask-rect", "0:10,0:10",
                                      "--out", str(tmp_path / "m.png")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "m.png") as mask:
        assert mask.size == (6000, 4000)
