"""The inpainting controls' math without a model: seed variations (slerp), the soft change map and its rule, colour
matching, and their options' checks."""
import numpy as np
import pytest
from PIL import Image

from conftest import invoke_cli
from kandinsky_cli.colour import match_colours, match_to_original
from kandinsky_cli.inpaint_pipeline import latent_change_map, soft_keep_masks
from kandinsky_cli.masks import dilate, feather_weights, read_mask_file, soft_change_map
from kandinsky_cli.noise import Noise, VariationNoise, make_noise, slerp


# ------------------------------------------------------------------------------------------ slerp, variations

def test_slerp_endpoints_are_exact_and_the_norm_is_kept():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 8, 8)).astype(np.float32)
    b = rng.standard_normal((4, 8, 8)).astype(np.float32)
    b *= np.linalg.norm(a) / np.linalg.norm(b)       # equal norms: every point of the arc keeps it
    assert slerp(0.0, a, b) is a and slerp(1.0, a, b) is b
    ua, ub = a.ravel() / np.linalg.norm(a), b.ravel() / np.linalg.norm(b)
    omega = np.arccos(np.dot(ua.astype(np.float64), ub))
    for t in (0.1, 0.25, 0.5, 0.9):
        out = slerp(t, a, b)
        assert out.shape == a.shape and out.dtype == np.float32
        assert abs(np.linalg.norm(out) - np.linalg.norm(a)) < 1e-4 * np.linalg.norm(a)
        u = out.ravel().astype(np.float64) / np.linalg.norm(out)
        # on the great circle: angle t * omega from a, (1 - t) * omega from b
        assert np.arccos(np.clip(np.dot(u, ua), -1, 1)) == pytest.approx(t * omega, abs=1e-4)
        assert np.arccos(np.clip(np.dot(u, ub), -1, 1)) == pytest.approx((1 - t) * omega, abs=1e-4)
    # different norms: the norm moves linearly
    c = 3 * b
    assert np.linalg.norm(slerp(0.5, a, c)) == pytest.approx(2 * np.linalg.norm(a), rel=1e-5)


def test_variation_noise():
    shape = (3, 4, 8, 8)
    seed, var = Noise(11), VariationNoise(11, 500, 0.3)
    first_seed, first_var = seed.randn(shape), var.randn(shape)
    for k in range(3):   # image k slerps towards seed 500 + k
        towards = Noise(500 + k).randn(shape[1:])
        np.testing.assert_allclose(first_var[k], slerp(0.3, first_seed[k], towards), rtol=0, atol=1e-6)
        assert not np.allclose(first_var[k], first_seed[k])
    # every later draw (per-step noise) is the seed's
    np.testing.assert_array_equal(var.randn(shape), seed.randn(shape))
    # strength 0 and no variation seed: exactly the seed's noise
    for noise in (make_noise(11, 500, 0.0), make_noise(11, None, 0.0), VariationNoise(11, 500, 0.0)):
        np.testing.assert_array_equal(noise.randn(shape), Noise(11).randn(shape))
    np.testing.assert_array_equal(VariationNoise(11, 500, 1.0).randn((1, 4, 8, 8))[0], Noise(500).randn((4, 8, 8)))


# ------------------------------------------------------------------------------------------ soft change map

def test_soft_map_of_a_grey_npy_and_rects(tmp_path):
    grey = np.linspace(0, 1, 48 * 64, dtype=np.float32).reshape(48, 64)
    np.save(tmp_path / "m.npy", grey)
    change = soft_change_map((48, 64), tmp_path / "m.npy", ["0:4,0:4"])
    expected = grey.copy()
    expected[0:4, 0:4] = 1.0
    np.testing.assert_array_equal(change, expected)
    np.testing.assert_array_equal(soft_change_map((48, 64), tmp_path / "m.npy", invert=True), 1 - grey)
    # grow: grey dilation by a disc, checked by brute force on a small map
    small = np.zeros((12, 12), np.float32)
    small[5, 5], small[2, 9] = 0.4, 0.8
    np.save(tmp_path / "s.npy", small)
    grown = soft_change_map((12, 12), tmp_path / "s.npy", grow=2)
    ref = np.zeros_like(small)
    for y in range(12):
        for x in range(12):
            for (sy, sx) in ((5, 5), (2, 9)):
                if (y - sy) ** 2 + (x - sx) ** 2 <= 4:
                    ref[y, x] = max(ref[y, x], small[sy, sx])
    np.testing.assert_array_equal(grown, ref)


def test_soft_map_of_a_binary_mask_is_the_paste_back_ramp():
    hard = np.zeros((64, 64), bool)
    hard[20:40, 10:30] = True
    np.testing.assert_array_equal(soft_change_map((64, 64), rects=["20:40,10:30"], grow=3), dilate(hard, 3))
    change = soft_change_map((64, 64), rects=["20:40,10:30"], feather=12)
    np.testing.assert_array_equal(change, feather_weights(hard, 12))
    assert 0 < change[30, 35] < 1 and change[30, 20] == 1 and change[30, 60] == 0


def test_latent_change_map_is_the_block_mean():
    rng = np.random.default_rng(3)
    change = rng.random((64, 128)).astype(np.float32)
    ref = change.reshape(8, 8, 16, 8).mean(axis=(1, 3))
    np.testing.assert_allclose(latent_change_map(change, 8, 16), ref, rtol=0, atol=1e-6)


def test_soft_rule_against_a_hand_written_reference():
    """Step i of n resets the latents whose change value is below 1 - i / n."""
    values = np.array([[1.0, 0.95, 0.8, 0.5], [0.45, 0.2, 0.01, 0.0]], np.float32)
    n = 5
    keep = soft_keep_masks(values, n)
    assert keep.shape == (n, 2, 4)
    for i in range(n):
        for y in range(2):
            for x in range(4):
                threshold = 1 - i / n      # 1.0, 0.8, 0.6, 0.4, 0.2
                assert keep[i, y, x] == (values[y, x] < threshold), (i, y, x)
    assert not keep[:, 0, 0].any()                 # white: repainted from the first step
    assert keep[:, 1, 3].all()                      # black: always reset to the (noised) original
    assert keep[:, 0, 2].tolist() == [True, False, False, False, False]   # 0.8 joins at step 1
    assert keep[:, 1, 0].tolist() == [True, True, True, False, False]     # 0.45 joins at step 3


# ------------------------------------------------------------------------------------------ colour match

def _texture(seed=0, size=64):
    rng = np.random.default_rng(seed)
    base = rng.integers(40, 200, (size // 8, size // 8, 3)).astype(np.uint8)
    return np.asarray(Image.fromarray(base).resize((size, size), Image.Resampling.BICUBIC))


def test_colour_match_removes_a_cast_inside_and_changes_nothing_outside():
    original = _texture()
    region = np.zeros(original.shape[:2], bool)
    region[16:48, 8:40] = True
    cast = original.astype(np.int16) + np.array([45, -10, -30])      # a red cast on the decoder's output
    composed = original.copy()
    composed[region] = np.clip(cast, 0, 255).astype(np.uint8)[region]
    weights = region.astype(np.float32)
    out = match_to_original(composed, original, weights)
    np.testing.assert_array_equal(out[~region], composed[~region])
    before = np.abs(composed[region].mean(0) - original[region].mean(0))
    after = np.abs(out[region].mean(0) - original[region].mean(0))
    assert before.max() > 25 and after.max() < 3, (before, after)
    pixel_before = np.abs(composed[region].astype(int) - original[region]).mean()
    pixel_after = np.abs(out[region].astype(int) - original[region]).mean()
    assert pixel_after < pixel_before / 3, (pixel_before, pixel_after)


def test_colour_match_leaves_extended_margins_out_of_the_reference():
    original = _texture(1)
    added = np.zeros(original.shape[:2], bool)
    added[:, 48:] = True
    canvas = original.copy()
    canvas[added] = (255, 0, 255)     # the fill of an --extend margin: no original colour
    region = added.copy()
    out = match_to_original(canvas, canvas, region.astype(np.float32), added)
    assert (out[region][:, 1] > 20).mean() > 0.9  # matched to the original pixels, not to the magenta fill
    np.testing.assert_array_equal(out[~region], canvas[~region])
    np.testing.assert_array_equal(match_colours(canvas, original, np.zeros_like(region)), canvas)


# ------------------------------------------------------------------------------------------ bad values

@pytest.mark.parametrize("args, message", [
    (["--strength", "0"], "--strength: must be a number above 0 and at most 1, got 0.0"),
    (["--strength", "1.5"], "--strength: must be a number above 0 and at most 1"),
    (["--variation-strength", "2"], "--variation-strength: must be a number from 0 to 1"),
    (["--variation-strength", "0.5"], "--variation-strength needs --variation-seed"),
    (["--variation-seed", "-1"], "--variation-seed: must be an integer from 0"),
    (["--mix", "a hat"], "--mix: bad item 'a hat'"),
    (["--mix", "missing.png=1"], "missing.png"),
])
def test_bad_values_are_one_error_line_before_any_model_loads(tmp_path, args, message):
    Image.fromarray(_texture()).save(tmp_path / "in.png")
    result = invoke_cli("inpaint", tmp_path / "in.png", "--mask-rect", "0:10,0:10", "--prompt", "x",
                        "--decoder-model", tmp_path / "no-model", "--prior-model", tmp_path / "no-model",
                        "--out", tmp_path / "o.png", *args, code=2)
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], result.output


def test_mask_command_writes_the_soft_map(tmp_path):
    grey = np.zeros((32, 32), np.float32)
    grey[8:24, 8:24] = 0.25
    np.save(tmp_path / "g.npy", grey)
    invoke_cli("mask", "--size", "32x32", "--mask", tmp_path / "g.npy", "--mask-rect", "0:4,0:4", "--soft",
               "--out", tmp_path / "soft.png")
    written = read_mask_file(tmp_path / "soft.png")
    expected = grey.copy()
    expected[0:4, 0:4] = 1.0
    np.testing.assert_allclose(written, np.rint(expected * 255) / 255, atol=1e-6)
    invoke_cli("mask", "--size", "32x32", "--mask", tmp_path / "g.npy", "--mask-rect", "0:4,0:4",
               "--out", tmp_path / "hard.png")
    assert read_mask_file(tmp_path / "hard.png").sum() == 16   # without --soft: >= 0.5
