"""kandinsky_cli.masks: rectangles against numpy slicing, mask files, invert/grow/feather, paste_back."""
import math
import time
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image, ImageFilter

from kandinsky_cli import options
from kandinsky_cli.errors import UserError
from kandinsky_cli.masks import (MaskSpec, MaskWarning, build_mask, dilate, feather_weights, format_size,
                                 load_mask_file, parse_rect, parse_size, paste_back, read_mask_file, rect_mask,
                                 resize_mask, save_mask)

# ------------------------------------------------------------------------------------------ sizes


@pytest.mark.parametrize("text, expected", [("768x512", (512, 768)), ("1x1", (1, 1)), (" 64 X 128 ", (128, 64))])
def test_parse_size_is_width_x_height(text, expected):
    assert parse_size(text) == expected
    assert format_size(expected) == f"{expected[1]}x{expected[0]}"


@pytest.mark.parametrize("text", ["768x", "x768", "0x10", "10x0", "768", "768x768x3", "-5x10", "axb", "",
                                  "1.5x2", "99999x10"])
def test_parse_size_rejects(text):
    with pytest.raises(UserError, match="size"):
        parse_size(text)


# ------------------------------------------------------------------------------------------ rectangles

bounds = st.one_of(st.none(), st.integers(-70, 70))


def _fmt(v):
    return "" if v is None else str(v)


@settings(max_examples=400, deadline=None)
@given(h=st.integers(1, 50), w=st.integers(1, 50), r0=bounds, r1=bounds, c0=bounds, c1=bounds)
def test_rect_is_numpy_slicing(h, w, r0, r1, c0, c1):
    text = f"{_fmt(r0)}:{_fmt(r1)},{_fmt(c0)}:{_fmt(c1)}"
    expected = np.zeros((h, w), dtype=bool)
    expected[r0:r1, c0:c1] = True
    if expected.any():
        np.testing.assert_array_equal(rect_mask(text, (h, w)), expected)
        np.testing.assert_array_equal(build_mask((h, w), rects=[text]), expected)
    else:
        with pytest.raises(UserError, match="selects no pixel"):
            rect_mask(text, (h, w))


def test_rect_examples_from_the_docs():
    mask = rect_mask("0:250,250:518", (768, 768))
    assert mask.sum() == 250 * 268 and mask[0, 250] and not mask[250, 250] and not mask[0, 518]
    mask = rect_mask(":250,250:-250", (768, 768))
    expected = np.zeros((768, 768), bool)
    expected[:250, 250:-250] = True
    np.testing.assert_array_equal(mask, expected)


def test_rect_whitespace_and_signs():
    assert parse_rect(" 0 : 10 , +2 : -3 ").rows == slice(0, 10)
    assert parse_rect("0:10,+2:-3").cols == slice(2, -3)
    assert parse_rect(":,:").rows == slice(None, None)


@pytest.mark.parametrize("text", ["0:250", "0:250,250:518,1:2", "a:b,1:2", "0:250;250:518", "0-250,250:518",
                                  "5,1:2", "1:2,3", "1:2:3,4:5", "", ",", "1.5:2,3:4", "0:250, 250 518"])
def test_malformed_rect(text):
    with pytest.raises(UserError, match="malformed rectangle") as err:
        parse_rect(text)
    assert repr(text) in str(err.value)


def test_rect_outside_or_empty_messages():
    with pytest.raises(UserError, match=r"'800:900,0:10'.*rows 800:900 lie outside the image \(height 768\)"):
        rect_mask("800:900,0:10", (768, 768))
    with pytest.raises(UserError, match=r"cols -900:-800 lie outside"):
        rect_mask("0:10,-900:-800", (768, 768))
    with pytest.raises(UserError, match=r"rows 300:100 select nothing"):
        rect_mask("300:100,0:10", (768, 768))
    with pytest.raises(UserError, match=r"cols 5:5 select nothing"):
        rect_mask("0:10,5:5", (768, 768))


def test_rects_union():
    mask = build_mask((10, 10), rects=["0:2,0:2", "1:3,1:3"])
    expected = np.zeros((10, 10), bool)
    expected[0:2, 0:2] = expected[1:3, 1:3] = True
    np.testing.assert_array_equal(mask, expected)


# ------------------------------------------------------------------------------------------ mask files

def _pattern(h=40, w=60):
    """A boolean test pattern with structure in both axes."""
    m = np.zeros((h, w), bool)
    m[5:20, 10:45] = True
    m[25:, 50:] = True
    return m


def test_png_l(tmp_path):
    m = _pattern()
    Image.fromarray(m.astype(np.uint8) * 255, "L").save(tmp_path / "m.png")
    np.testing.assert_array_equal(load_mask_file(tmp_path / "m.png", m.shape), m)


def test_png_threshold_is_half(tmp_path):
    values = np.array([[0, 127, 128, 255]], dtype=np.uint8)
    Image.fromarray(values, "L").save(tmp_path / "t.png")
    np.testing.assert_array_equal(load_mask_file(tmp_path / "t.png", (1, 4)), [[False, False, True, True]])


def test_png_rgb_uses_luminance(tmp_path):
    rgb = np.zeros((1, 4, 3), np.uint8)
    rgb[0, 0] = (255, 255, 255)  # white: repaint
    rgb[0, 1] = (255, 0, 0)      # red: luminance 76, keep
    rgb[0, 2] = (0, 255, 0)      # green: luminance 150, repaint
    rgb[0, 3] = (0, 0, 255)      # blue: luminance 29, keep
    Image.fromarray(rgb, "RGB").save(tmp_path / "rgb.png")
    np.testing.assert_array_equal(load_mask_file(tmp_path / "rgb.png", (1, 4)), [[True, False, True, False]])


def test_png_rgba_uses_alpha(tmp_path):
    m = _pattern()
    rgba = np.zeros(m.shape + (4,), np.uint8)
    rgba[..., :3] = 255 * (~m)[..., None]  # colour says the opposite: it must be ignored
    rgba[..., 3] = m * 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    np.testing.assert_array_equal(load_mask_file(tmp_path / "a.png", m.shape), m)


def test_png_la_uses_alpha(tmp_path):
    m = _pattern()
    la = np.stack([np.full(m.shape, 255, np.uint8), (m * 255).astype(np.uint8)], axis=-1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    np.testing.assert_array_equal(load_mask_file(tmp_path / "la.png", m.shape), m)


def test_palette_with_transparency_uses_alpha(tmp_path):
    m = _pattern()
    image = Image.fromarray(m.astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 255, 255, 255])
    image.info["transparency"] = 0  # index 0 (black) transparent, index 1 (white) opaque
    image.save(tmp_path / "p.png", transparency=0)
    np.testing.assert_array_equal(load_mask_file(tmp_path / "p.png", m.shape), m)


def test_png_16_bit(tmp_path):
    values = np.array([[0, 32767, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "16.png")  # mode I;16
    np.testing.assert_array_equal(load_mask_file(tmp_path / "16.png", (1, 4)), [[False, False, True, True]])


def test_jpeg_and_webp(tmp_path):
    m = np.zeros((64, 64), bool)
    m[:32] = True  # big flat areas: compression noise stays far from the threshold
    grey = Image.fromarray(m.astype(np.uint8) * 255, "L")
    grey.save(tmp_path / "m.jpg", quality=90)
    grey.convert("RGB").save(tmp_path / "m.webp", lossless=True)
    for name in ("m.jpg", "m.webp"):
        np.testing.assert_array_equal(load_mask_file(tmp_path / name, m.shape), m)


def test_npy_float_and_bool(tmp_path):
    f = np.array([[0.0, 0.49, 0.5, 1.0]], np.float64)
    np.save(tmp_path / "f.npy", f)
    np.save(tmp_path / "b.npy", f >= 0.5)
    np.testing.assert_array_equal(read_mask_file(tmp_path / "f.npy"), f.astype(np.float32))
    for name in ("f.npy", "b.npy"):
        np.testing.assert_array_equal(load_mask_file(tmp_path / name, (1, 4)), [[False, False, True, True]])


def test_resize_with_warning(tmp_path):
    small = np.zeros((4, 4), bool)
    small[:2, 2:] = True
    Image.fromarray(small.astype(np.uint8) * 255, "L").save(tmp_path / "small.png")
    with pytest.warns(MaskWarning, match=r"small.png is 4x4 but the image is 8x8"):
        mask = load_mask_file(tmp_path / "small.png", (8, 8))
    np.testing.assert_array_equal(mask, np.kron(small, np.ones((2, 2), bool)))  # nearest: blocks
    np.testing.assert_array_equal(resize_mask(small, (4, 4)), small)


def test_same_size_gives_no_warning(tmp_path):
    Image.new("L", (8, 8), 255).save(tmp_path / "m.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_mask_file(tmp_path / "m.png", (8, 8))


def test_file_and_rects_union_then_invert(tmp_path):
    file_mask = np.zeros((10, 12), bool)
    file_mask[0:3, :] = True
    np.save(tmp_path / "m.npy", file_mask.astype(np.float32))
    union = file_mask.copy()
    union[5:7, 2:4] = True
    np.testing.assert_array_equal(build_mask((10, 12), tmp_path / "m.npy", ["5:7,2:4"]), union)
    np.testing.assert_array_equal(build_mask((10, 12), tmp_path / "m.npy", ["5:7,2:4"], invert=True), ~union)


def test_save_mask_round_trip(tmp_path):
    m = _pattern()
    save_mask(tmp_path / "m.png", m, {"size": "60x40"})
    save_mask(tmp_path / "m.npy", m)
    assert Image.open(tmp_path / "m.png").mode == "L"
    assert set(np.unique(np.asarray(Image.open(tmp_path / "m.png")))) == {0, 255}
    assert np.load(tmp_path / "m.npy").dtype == np.float32
    for name in ("m.png", "m.npy"):
        np.testing.assert_array_equal(load_mask_file(tmp_path / name, m.shape), m)
    with pytest.raises(UserError, match=r"\.png or \.npy"):
        save_mask(tmp_path / "m.jpg", m)
    assert not (tmp_path / "m.jpg").exists()


# ------------------------------------------------------------------------------------------ bad mask files

def _write_bad(tmp_path, name):
    p = tmp_path / name
    if name == "corrupt.png":
        p.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    elif name == "truncated.png":
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(p)
        p.write_bytes(p.read_bytes()[:200])
    elif name == "text.png":
        p.write_text("not an image")
    elif name == "empty.png":
        p.write_bytes(b"")
    elif name == "image.gif":
        Image.new("L", (4, 4)).save(p)
    elif name == "dir.png":
        p.mkdir()
    elif name == "3d.npy":
        np.save(p, np.zeros((4, 4, 1), np.float32))
    elif name == "1d.npy":
        np.save(p, np.zeros(4, np.float32))
    elif name == "range.npy":
        np.save(p, np.full((4, 4), 1.5, np.float32))
    elif name == "negative.npy":
        np.save(p, np.full((4, 4), -0.1, np.float32))
    elif name == "nan.npy":
        np.save(p, np.full((4, 4), np.nan, np.float32))
    elif name == "strings.npy":
        np.save(p, np.array([["a", "b"]]))
    elif name == "object.npy":
        np.save(p, np.array([[None, 1]], dtype=object), allow_pickle=True)
    elif name == "garbage.npy":
        p.write_bytes(b"\x93NUMPY garbage")
    elif name == "archive.npy":
        with open(p, "wb") as f:
            np.savez(f, a=np.zeros((4, 4)))
    return p


@pytest.mark.parametrize("name, message", [
    ("missing.png", "mask not found"), ("missing.npy", "mask not found"),
    ("corrupt.png", "cannot read mask"), ("truncated.png", "cannot read mask"),
    ("text.png", "not a PNG, JPEG or WebP"), ("empty.png", "cannot read mask"),
    ("image.gif", "not a PNG, JPEG or WebP"), ("dir.png", "is a directory"),
    ("3d.npy", r"shape \(4, 4, 1\)"), ("1d.npy", r"shape \(4,\)"), ("range.npy", r"outside \[0, 1\]"),
    ("negative.npy", r"outside \[0, 1\]"), ("nan.npy", "NaN"), ("strings.npy", "dtype"),
    ("object.npy", "cannot read mask"), ("garbage.npy", "cannot read mask"), ("archive.npy", "npz"),
])
def test_bad_mask_files(tmp_path, name, message):
    path = _write_bad(tmp_path, name)
    with pytest.raises(UserError, match=message) as err:
        build_mask((4, 4), path)
    assert name in str(err.value)


def test_mask_selecting_nothing(tmp_path):
    Image.new("L", (4, 4), 0).save(tmp_path / "black.png")
    with pytest.raises(UserError, match="black.png selects no pixel"):
        build_mask((4, 4), tmp_path / "black.png")
    with pytest.raises(UserError, match="inverted mask selects no pixel"):
        build_mask((4, 4), rects=[":,:"], invert=True)
    with pytest.raises(UserError, match="the mask selects no pixel"):   # nothing given: nothing selected
        build_mask((4, 4))


def test_mask_spec_checks_early():
    with pytest.raises(UserError, match="malformed rectangle '1:2'"):
        MaskSpec.from_options(mask_rect=["0:1,0:1", "1:2"])
    with pytest.raises(UserError, match="no mask given"):   # the rule is the request's (options.check_mask_given)
        options.check_mask_given({"mask": None, "mask_rects": ()})
    with pytest.raises(UserError, match="grow"):
        MaskSpec(rects=("0:1,0:1",), grow=-1)
    spec = MaskSpec.from_options(None, ["0:2,0:2"], invert_mask=True, grow=1, feather=3)
    assert spec.build((6, 6)).sum() == 35  # inverted (32 pixels), then grown into 3 of the 4 kept corner pixels
    assert spec.parameters()["feather"] == 3


# ------------------------------------------------------------------------------------------ grow

def _brute_dilate(mask, radius):
    ys, xs = np.nonzero(mask)
    yy, xx = np.mgrid[:mask.shape[0], :mask.shape[1]]
    if len(ys) == 0:
        return mask.copy()
    d2 = (yy[..., None] - ys) ** 2 + (xx[..., None] - xs) ** 2
    return (d2 <= radius * radius).any(axis=-1)


@settings(max_examples=150, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), radius=st.integers(0, 30), seed=st.integers(0, 2**16),
       density=st.sampled_from([0.01, 0.05, 0.3]))
def test_grow_is_a_euclidean_disc(h, w, radius, seed, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    np.testing.assert_array_equal(dilate(mask, radius), _brute_dilate(mask, radius))


def test_grow_single_pixel_is_a_disc():
    mask = np.zeros((21, 21), bool)
    mask[10, 10] = True
    grown = dilate(mask, 3)
    assert grown.sum() == 29  # lattice points with x^2 + y^2 <= 9
    assert grown[10, 13] and grown[7, 10] and not grown[13, 13]
    np.testing.assert_array_equal(dilate(mask, 0), mask)


def test_grow_in_build_mask():
    mask = build_mask((20, 20), rects=["5:6,5:6"], grow=2)
    assert mask.sum() == 13


def test_grow_huge_is_capped_and_fills():
    mask = build_mask((30, 40), rects=["0:1,0:1"], grow=10**9)
    assert mask.all()


def _best_time(function, *args, repeat=3):
    best = math.inf
    for _ in range(repeat):
        start = time.perf_counter()
        result = function(*args)
        best = min(best, time.perf_counter() - start)
    return best, result


def test_grow_cost_does_not_depend_on_the_radius():
    """Two opposite corners of 1024x1024 grown by 10 and by 1000 (neither reaching every pixel): the large
    radius costs about the same (a method costing O(radius * H * W), one pass per row offset, is ~100x
    slower for it)."""
    mask = np.zeros((1024, 1024), bool)
    mask[0, 0] = mask[-1, -1] = True
    small, _ = _best_time(dilate, mask, 10)
    large, grown = _best_time(dilate, mask, 1000)
    assert large < 4 * small + 0.1, f"radius 1000: {large:.3f} s, radius 10: {small:.3f} s"
    yy, xx = np.mgrid[:1024, :1024]
    np.testing.assert_array_equal(grown, (yy ** 2 + xx ** 2 <= 1000 ** 2)
                                  | ((1023 - yy) ** 2 + (1023 - xx) ** 2 <= 1000 ** 2))


def test_grow_on_a_very_long_side():
    """Squared distances beyond 2**31 (pixels 46341 or more from the mask) must not wrap around."""
    mask = np.zeros((1, 100001), bool)
    mask[0, [0, -1]] = True
    x = np.arange(100001)
    np.testing.assert_array_equal(dilate(mask, 10)[0], (x <= 10) | (x >= 100000 - 10))


# ------------------------------------------------------------------------------------------ feather / paste

def test_feather_zero_is_the_hard_mask():
    mask = _pattern()
    weights = feather_weights(mask, 0)
    assert weights.dtype == np.float32
    np.testing.assert_array_equal(weights, mask.astype(np.float32))


@pytest.mark.parametrize("feather", [1, 2, 5, 16])
def test_feather_weights(feather):
    mask = np.zeros((64, 80), bool)
    mask[20:40, 30:50] = True
    weights = feather_weights(mask, feather)
    assert weights.dtype == np.float32 and weights.shape == mask.shape
    assert weights.min() >= 0 and weights.max() <= 1
    assert (weights[mask] == 1).all()                                  # the repaint area is fully generated
    assert (weights[~dilate(mask, feather)] == 0).all()               # beyond N pixels: the original
    if feather >= 5:
        row = weights[30, 50:50 + feather + 2]                          # a ramp going right from the edge
        assert (np.diff(row) <= 0).all() and row[0] > 0.9 and row[-1] == 0
        assert 0.2 < weights[30, 50 + feather // 2] < 0.8


def _reference_feather(mask, feather):
    """feather_weights by its definition, with the brute-force disc: N capped at the image diagonal, blur of
    the mask grown by N/2 (Pillow, sigma N/6), 0 beyond N pixels, 1 on the mask."""
    feather = min(feather, math.hypot(*mask.shape))
    core = Image.fromarray(_brute_dilate(mask, feather / 2).astype(np.uint8) * 255, "L")
    blurred = np.asarray(core.filter(ImageFilter.GaussianBlur(feather / 6)), dtype=np.float32) / 255.0
    weights = np.where(_brute_dilate(mask, feather), blurred, 0.0).astype(np.float32)
    weights[mask] = 1.0
    return weights


@settings(max_examples=60, deadline=None)
@given(h=st.integers(1, 24), w=st.integers(1, 24), feather=st.integers(1, 40), seed=st.integers(0, 2**16),
       density=st.sampled_from([0.01, 0.05, 0.3]))
def test_feather_is_its_definition(h, w, feather, seed, density):
    mask = np.random.default_rng(seed).random((h, w)) < density
    np.testing.assert_array_equal(feather_weights(mask, feather), _reference_feather(mask, feather))


def test_paste_back_is_exact_outside():
    rng = np.random.default_rng(1)
    original = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    generated = rng.integers(0, 256, (32, 48, 3), dtype=np.uint8)
    mask = np.zeros((32, 48), bool)
    mask[8:20, 10:30] = True
    weights = feather_weights(mask, 6)
    out = paste_back(original, generated, weights)
    assert out.dtype == np.uint8 and out.shape == original.shape
    np.testing.assert_array_equal(out[weights == 0], original[weights == 0])
    np.testing.assert_array_equal(out[weights == 1], generated[weights == 1])
    band = (weights > 0) & (weights < 1)
    assert band.any()
    expected = np.rint(original + weights[..., None] * (generated.astype(np.float32) - original))
    np.testing.assert_array_equal(out[band], expected[band].astype(np.uint8))


def test_paste_back_resizes_generated():
    original = np.full((30, 40, 3), 7, np.uint8)
    generated = Image.new("RGB", (64, 64), (200, 100, 50))
    weights = np.zeros((30, 40), np.float32)
    weights[:10, :10] = 1
    out = paste_back(original, generated, weights)
    assert (out[:10, :10] == (200, 100, 50)).all()
    assert (out[10:, :] == 7).all() and (out[:, 10:] == 7).all()
    with pytest.raises(ValueError):
        paste_back(original, generated, np.zeros((5, 5), np.float32))


def test_feather_of_full_and_huge():
    mask = np.ones((10, 10), bool)
    assert (feather_weights(mask, 5) == 1).all()
    mask[:] = False
    mask[0, 0] = True
    weights = feather_weights(mask, 10**6)
    assert weights[0, 0] == 1 and math.isfinite(float(weights.sum()))
