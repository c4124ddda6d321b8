"""kandinsky_cli.files: atomic writes, PNG metadata, reading images."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import kandinsky_cli
from kandinsky_cli.errors import UserError
from kandinsky_cli.files import (atomic_set, atomic_write, check_output_dir, check_writable_output, load_image,
                                 read_png_metadata, save_image, save_json, save_npy, save_png)


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


# ------------------------------------------------------------------------------------------ sets of files

def _tree(directory):
    """Every file and folder below ``directory`` with the content of each file."""
    return {str(p.relative_to(directory)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(directory.rglob("*"))}


def _old_outputs(tmp_path):
    """Two outputs from an earlier run; the new set replaces them and adds one in a new folder."""
    (tmp_path / "a.txt").write_bytes(b"old a")
    (tmp_path / "c.txt").write_bytes(b"old c")
    return [tmp_path / "a.txt", tmp_path / "new" / "b.txt", tmp_path / "c.txt"]


def _write_set(paths):
    with atomic_set() as files:
        for path in paths:
            with files.open(path) as f:
                f.write(b"new " + path.name.encode())


def test_atomic_set_writes_every_file(tmp_path):
    paths = _old_outputs(tmp_path)
    with atomic_set() as files:
        save_png(tmp_path / "x.png", np.zeros((4, 4, 3), np.uint8), {"seed": 1}, into=files)
        save_npy(tmp_path / "y.npy", np.arange(3), into=files)
        save_json(tmp_path / "z.json", {"v": 1}, into=files)
        save_image(tmp_path / "w.jpg", np.zeros((4, 4, 3), np.uint8), into=files)
        assert not (tmp_path / "x.png").exists()  # nothing is in place before the set is complete
    assert read_png_metadata(tmp_path / "x.png")["parameters"] == {"seed": 1}
    np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.arange(3))
    assert json.loads((tmp_path / "z.json").read_text()) == {"v": 1}
    _write_set(paths)
    assert [p.read_bytes() for p in paths] == [b"new a.txt", b"new b.txt", b"new c.txt"]
    assert _leftovers(tmp_path) == ["a.txt", "c.txt", "new", "w.jpg", "x.png", "y.npy", "z.json"]


@pytest.mark.parametrize("bad", ["folder-is-a-file", "name-too-long"])
def test_atomic_set_with_an_unwritable_file_leaves_none(tmp_path, bad):
    paths = _old_outputs(tmp_path)
    (tmp_path / "file").write_bytes(b"x")
    unwritable = tmp_path / "file" / "b.txt" if bad == "folder-is-a-file" else tmp_path / ("n" * 300 + ".txt")
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="cannot write"):
        _write_set([paths[0], paths[1], unwritable, paths[2]])
    assert _tree(tmp_path) == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_atomic_set_with_a_read_only_folder_leaves_none(tmp_path):
    paths = _old_outputs(tmp_path)
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    before = _tree(tmp_path)
    try:
        with pytest.raises(UserError, match="cannot write"):
            _write_set([paths[0], tmp_path / "ro" / "b.txt", paths[2]])
    finally:
        (tmp_path / "ro").chmod(0o755)
    assert _tree(tmp_path) == before


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_atomic_set_failing_inside_the_block_leaves_none(tmp_path, error):
    paths = _old_outputs(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(type(error)):
        with atomic_set() as files:
            for path in paths:
                with files.open(path) as f:
                    f.write(b"new")
            raise error
    assert _tree(tmp_path) == before


def test_atomic_set_with_an_empty_file_leaves_none(tmp_path):
    paths = _old_outputs(tmp_path)
    before = _tree(tmp_path)
    with pytest.raises(UserError, match="nothing to write"):
        with atomic_set() as files:
            with files.open(paths[0]) as f:
                f.write(b"new")
            with files.open(paths[1]):
                pass
    assert _tree(tmp_path) == before


# Renames and backups of a set of three files (a and c existed): link a, replace a, replace b, link c, replace c.
COMMIT_STEPS = 5


@pytest.mark.parametrize("when", ["before", "after"])
@pytest.mark.parametrize("step", range(1, COMMIT_STEPS + 1))
def test_atomic_set_interrupted_at_any_rename_leaves_none(tmp_path, monkeypatch, step, when):
    """Ctrl-C just before or just after each file-system step of the renames: the old state is back."""
    paths = _old_outputs(tmp_path)
    before = _tree(tmp_path)
    calls = []

    def interrupting(real):
        def call(*args, **kwargs):
            calls.append(real.__name__)
            if len(calls) == step and when == "before":
                raise KeyboardInterrupt
            result = real(*args, **kwargs)
            if len(calls) == step:
                raise KeyboardInterrupt
            return result
        return call
    monkeypatch.setattr(os, "replace", interrupting(os.replace))
    monkeypatch.setattr(os, "link", interrupting(os.link))
    with pytest.raises(KeyboardInterrupt):
        _write_set(paths)
    assert calls[:step] == ["link", "replace", "replace", "link", "replace"][:step]  # the commit's steps
    monkeypatch.undo()
    assert _tree(tmp_path) == before


def test_atomic_set_interrupted_after_the_renames_is_complete(tmp_path, monkeypatch):
    """Ctrl-C while the backups are deleted: the new set stays whole; an old file may remain, hidden."""
    paths = _old_outputs(tmp_path)
    real_unlink = Path.unlink

    def interrupted_on_backups(self, missing_ok=False):
        if self.suffix == ".old":
            raise KeyboardInterrupt
        return real_unlink(self, missing_ok=missing_ok)
    monkeypatch.setattr(Path, "unlink", interrupted_on_backups)
    with pytest.raises(KeyboardInterrupt):
        _write_set(paths)
    monkeypatch.undo()
    assert [p.read_bytes() for p in paths] == [b"new a.txt", b"new b.txt", b"new c.txt"]
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("."))  # the old files, hidden
    assert [name.split(".")[1] for name in left] == ["a", "c"] and all(name.endswith(".old") for name in left)
    assert [(tmp_path / name).read_bytes() for name in left] == [b"old a", b"old c"]


def test_atomic_set_without_hard_links_backs_up_by_copy(tmp_path, monkeypatch):
    paths = _old_outputs(tmp_path)
    before = _tree(tmp_path)

    def no_links(*args, **kwargs):
        raise OSError(1, "Operation not permitted")
    replaced = []
    real_replace = os.replace

    def replace_then_fail(src, dst):  # the last rename fails: the old a.txt must come back from its copy
        replaced.append(dst)
        if len(replaced) == 3:
            raise OSError(28, "No space left on device")
        return real_replace(src, dst)
    monkeypatch.setattr(os, "link", no_links)
    monkeypatch.setattr(os, "replace", replace_then_fail)
    with pytest.raises(UserError, match="c.txt: No space left on device"):
        _write_set(paths)
    monkeypatch.undo()
    assert _tree(tmp_path) == before


def test_atomic_set_refuses_the_same_file_twice(tmp_path):
    with pytest.raises(ValueError, match="twice"):
        _write_set([tmp_path / "a.txt", tmp_path / "a.txt"])
    assert _leftovers(tmp_path) == []


# ------------------------------------------------------------------------------------------ output checks

def test_check_writable_output_accepts(tmp_path):
    (tmp_path / "old.png").write_bytes(b"x")
    for path in (tmp_path / "old.png", tmp_path / "new.png", tmp_path / "a" / "b" / "new.png"):
        check_writable_output(path, "output image")
    assert _leftovers(tmp_path) == ["old.png"]  # nothing created


@pytest.mark.parametrize("make, path, message", [
    (lambda d: (d / "out").mkdir(), "out", "it is a folder"),
    (lambda d: (d / "file").write_text("x"), "file/out.png", "file is a file, not a folder"),
    (lambda d: (d / "file").write_text("x"), "file/a/b/out.png", "file is a file, not a folder"),
    (lambda d: None, "n" * 300 + ".png", "File name too long"),
    (lambda d: None, "a\0b.png", "null"),
])
def test_check_writable_output_refuses(tmp_path, make, path, message):
    make(tmp_path)
    with pytest.raises(UserError, match=f"cannot write output image .*{message}"):
        check_writable_output(tmp_path / path, "output image")


def test_check_writable_output_refuses_special_files():
    with pytest.raises(UserError, match="cannot write output image /dev/null: it exists and is not a regular"):
        check_writable_output("/dev/null", "output image")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_check_writable_output_refuses_a_read_only_folder(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(UserError, match="not writable"):
            check_writable_output(tmp_path / "ro" / "sub" / "out.png", "output image")
    finally:
        (tmp_path / "ro").chmod(0o755)


def test_check_output_dir(tmp_path):
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    check_output_dir(tmp_path / "dir", "--out-dir")
    check_output_dir(tmp_path / "new" / "deeper", "--out-dir")
    assert _leftovers(tmp_path) == ["dir", "file"]  # nothing created
    with pytest.raises(UserError, match="cannot write --out-dir .*file: it exists and is not a folder"):
        check_output_dir(tmp_path / "file", "--out-dir")
    with pytest.raises(UserError, match="file is a file, not a folder"):
        check_output_dir(tmp_path / "file" / "sub", "--out-dir")
