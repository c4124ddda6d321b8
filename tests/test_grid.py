"""kandinsky_cli.grid: placement, resizing, errors, masks as grey."""
import numpy as np
import pytest
from PIL import Image

from kandinsky_cli.errors import UserError
from kandinsky_cli.grid import grid_shape, load_grid_input, make_image_grid


def _solid(w, h, colour):
    return Image.new("RGB", (w, h), colour)


COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0), (0, 255, 255)]


def test_row_major_placement_is_exact():
    rng = np.random.default_rng(0)
    arrays = [rng.integers(0, 256, (3, 4, 3), dtype=np.uint8) for _ in range(5)]
    grid = np.asarray(make_image_grid([Image.fromarray(a) for a in arrays], rows=2))  # cols = ceil(5 / 2) = 3
    assert grid.shape == (2 * 3, 3 * 4, 3)
    for i, a in enumerate(arrays):
        r, c = divmod(i, 3)
        np.testing.assert_array_equal(grid[r * 3:(r + 1) * 3, c * 4:(c + 1) * 4], a)
    assert (grid[3:, 8:] == 0).all()  # the sixth cell is empty: black


def test_explicit_cols():
    grid = make_image_grid([_solid(2, 2, c) for c in COLOURS[:3]], rows=3, cols=2)
    assert grid.size == (4, 6)
    assert grid.getpixel((0, 0)) == COLOURS[0] and grid.getpixel((2, 0)) == COLOURS[1]
    assert grid.getpixel((0, 2)) == COLOURS[2] and grid.getpixel((2, 2)) == (0, 0, 0)


def test_others_resized_to_the_first():
    grid = make_image_grid([_solid(4, 2, COLOURS[0]), _solid(9, 7, COLOURS[1]), _solid(1, 1, COLOURS[2])], rows=1)
    assert grid.size == (12, 2)
    a = np.asarray(grid)
    assert (a[:, 0:4] == COLOURS[0]).all() and (a[:, 4:8] == COLOURS[1]).all() and (a[:, 8:12] == COLOURS[2]).all()


def test_too_many_images():
    with pytest.raises(UserError, match="5 images do not fit in a grid of 2 rows x 2 cols"):
        grid_shape(5, rows=2, cols=2)
    with pytest.raises(UserError, match="no images"):
        grid_shape(0, rows=1)
    with pytest.raises(UserError, match=">= 1"):
        grid_shape(2, rows=0)
    assert grid_shape(5, rows=2) == (2, 3)
    assert grid_shape(4, rows=4) == (4, 1)


def test_inputs_images_and_masks(tmp_path):
    _solid(4, 4, (10, 20, 30)).convert("RGBA").save(tmp_path / "a.png")
    _solid(4, 4, (10, 20, 30)).save(tmp_path / "b.jpg", quality=100)
    Image.new("L", (4, 4), 255).save(tmp_path / "m.png")
    np.save(tmp_path / "m.npy", np.array([[0.0, 0.5], [1.0, 0.25]], np.float32))
    assert load_grid_input(tmp_path / "a.png").mode == "RGB"
    assert load_grid_input(tmp_path / "b.jpg").mode == "RGB"
    assert load_grid_input(tmp_path / "m.png").getpixel((0, 0)) == (255, 255, 255)
    grey = np.asarray(load_grid_input(tmp_path / "m.npy"))
    assert grey.shape == (2, 2, 3)
    np.testing.assert_array_equal(grey[..., 0], [[0, 128], [255, 64]])
    assert (grey[..., 0] == grey[..., 1]).all() and (grey[..., 1] == grey[..., 2]).all()


def test_bad_inputs(tmp_path):
    with pytest.raises(UserError, match="image not found"):
        load_grid_input(tmp_path / "nope.png")
    np.save(tmp_path / "bad.npy", np.full((2, 2), 3.0))
    with pytest.raises(UserError, match=r"outside \[0, 1\]"):
        load_grid_input(tmp_path / "bad.npy")
