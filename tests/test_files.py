"""kandinsky_cli.files: atomic writes, PNG metadata, reading images."""
import json
import os

import numpy as np
import pytest
from PIL import Image

import kandinsky_cli
from kandinsky_cli.errors import UserError
from kandinsky_cli.files import (atomic_write, load_image, read_png_metadata, save_image, save_json, save_npy,
                                 save_png)


def _leftovers(directory):
    return sorted(p.name for p in directory.iterdir())


# ------------------------------------------------------------------------------------------ atomic writes

@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_interrupted_write_leaves_nothing(tmp_path, error):
    target = tmp_path / "out" / "image.png"
    with pytest.raises(type(error)):
        with atomic_write(target) as f:
            f.write(b"partial data")
            raise error
    assert not target.exists()
    assert _leftovers(target.parent) == []  # no temporary file either


def test_interrupted_write_keeps_the_old_file(tmp_path):
    target = tmp_path / "a.json"
    save_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_write(target) as f:
            f.write(b"{")
            raise RuntimeError
    assert json.loads(target.read_text()) == {"v": 1}
    assert _leftovers(tmp_path) == ["a.json"]


def test_interrupted_png_encoder_leaves_nothing(tmp_path, monkeypatch):
    """An error from inside Pillow's writer, after some bytes were written."""
    def failing_save(self, fp, *args, **kwargs):
        fp.write(b"\x89PNG half")
        raise KeyboardInterrupt
    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8))
    assert _leftovers(tmp_path) == []


def test_interrupted_npy_leaves_nothing(tmp_path, monkeypatch):
    def failing_save(file, arr, **kwargs):
        file.write(b"\x93NUMPY")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(np, "save", failing_save)
    with pytest.raises(UserError, match="cannot write .*x.npy: No space left on device"):
        save_npy(tmp_path / "x.npy", np.zeros(3))
    assert _leftovers(tmp_path) == []


def test_zero_bytes_is_an_error(tmp_path):
    with pytest.raises(UserError, match="nothing to write"):
        with atomic_write(tmp_path / "empty.bin"):
            pass
    assert _leftovers(tmp_path) == []


def test_creates_directories_and_normal_permissions(tmp_path):
    target = save_npy(tmp_path / "a" / "b" / "c.npy", np.arange(3))
    np.testing.assert_array_equal(np.load(target), np.arange(3))
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


def test_unwritable_target_is_a_user_error(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="cannot write"):
        save_json(tmp_path / "file" / "sub" / "a.json", {})


# ------------------------------------------------------------------------------------------ PNG metadata

def test_png_metadata_round_trip(tmp_path):
    params = {"prompt": "Красная шляпа", "seed": np.int64(42), "steps": 5, "guidance_scale": 4.0,
              "image": tmp_path / "cat.png"}
    path = save_png(tmp_path / "x.png", np.zeros((8, 8, 3), np.uint8), params)
    meta = read_png_metadata(path)
    assert meta["tool"] == "kandinsky"
    assert meta["version"] == kandinsky_cli.__version__
    assert meta["Software"] == f"kandinsky {kandinsky_cli.__version__}"
    assert meta["parameters"] == {"prompt": "Красная шляпа", "seed": 42, "steps": 5, "guidance_scale": 4.0,
                                  "image": str(tmp_path / "cat.png")}
    with Image.open(path) as im:  # plain tEXt chunks, readable by any PNG tool
        assert json.loads(im.text["parameters"])["seed"] == 42


@pytest.mark.parametrize("array", [np.zeros((4, 5), np.uint8), np.zeros((4, 5, 1), np.uint8),
                                   np.zeros((4, 5, 3), np.uint8), np.zeros((4, 5, 4), np.uint8)])
def test_save_png_shapes(tmp_path, array):
    path = save_png(tmp_path / "x.png", array)
    with Image.open(path) as im:
        assert im.size == (5, 4)
    assert "parameters" not in read_png_metadata(path)


def test_save_png_rejects_bad_arrays(tmp_path):
    with pytest.raises(ValueError):
        save_png(tmp_path / "x.png", np.zeros((4, 5, 3), np.float32))
    with pytest.raises(ValueError):
        save_png(tmp_path / "x.png", np.zeros((4, 5, 2), np.uint8))
    assert _leftovers(tmp_path) == []


def test_save_image_by_extension(tmp_path):
    image = np.full((8, 8, 3), 100, np.uint8)
    for name, fmt in (("a.png", "PNG"), ("a.jpg", "JPEG"), ("a.jpeg", "JPEG"), ("a.webp", "WEBP")):
        with Image.open(save_image(tmp_path / name, image, {"k": 1})) as im:
            assert im.format == fmt
    with pytest.raises(UserError, match=r"\.png, \.jpg"):
        save_image(tmp_path / "a.bmp", image)
    assert not (tmp_path / "a.bmp").exists()


# ------------------------------------------------------------------------------------------ reading

def test_load_image_converts_to_rgb(tmp_path):
    Image.new("RGBA", (6, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    Image.new("L", (6, 4), 77).save(tmp_path / "l.jpg")
    Image.new("RGB", (6, 4), (1, 2, 3)).save(tmp_path / "w.webp", lossless=True)
    assert np.asarray(load_image(tmp_path / "a.png"))[0, 0].tolist() == [10, 20, 30]
    assert load_image(tmp_path / "l.jpg").mode == "RGB"
    assert np.asarray(load_image(tmp_path / "w.webp"))[0, 0].tolist() == [1, 2, 3]


def test_load_image_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (6, 4))
    exif = image.getexif()
    exif[0x0112] = 6  # rotated 90 degrees: displayed as 4 wide, 6 high
    image.save(tmp_path / "r.jpg", exif=exif)
    assert load_image(tmp_path / "r.jpg").size == (4, 6)


@pytest.mark.parametrize("name, content, message", [
    ("missing.png", None, "image not found"),
    ("corrupt.png", b"\x89PNG\r\n\x1a\n" + b"x" * 50, "cannot read image"),
    ("text.jpg", b"hello", "not a PNG, JPEG or WebP"),
    ("empty.webp", b"", "cannot read image"),
])
def test_load_image_errors(tmp_path, name, content, message):
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(UserError, match=message) as err:
        load_image(path)
    assert name in str(err.value)


def test_load_image_truncated_and_other_formats(tmp_path):
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(tmp_path / "t.png")
    (tmp_path / "t.png").write_bytes((tmp_path / "t.png").read_bytes()[:300])
    with pytest.raises(UserError, match="cannot read image .*t.png"):
        load_image(tmp_path / "t.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "x.bmp")
    with pytest.raises(UserError, match="not a PNG, JPEG or WebP"):
        load_image(tmp_path / "x.bmp")
    with pytest.raises(UserError, match="is a directory"):
        load_image(tmp_path)
