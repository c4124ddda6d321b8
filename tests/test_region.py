"""kandinsky_cli.region: aspect-true working sizes, mask-region boxes, crop/compose, the outpainting canvas."""
import math

import numpy as np
import pytest

from kandinsky_cli.requests import InpaintRequest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from kandinsky_cli.errors import UserError
from kandinsky_cli.files import to_json
from kandinsky_cli.inpaint_pipeline import preprocess_image, preprocess_mask
from kandinsky_cli.masks import feather_weights, mask_to_image, paste_back
from kandinsky_cli.region import (AREA_TOLERANCE, Extend, check_options, extend_canvas, mask_bbox, padded_box,
                                  parse_extend, plan, region_box, working_size)

RNG = np.random.default_rng(1234)


def _photo(width, height):
    return RNG.integers(0, 256, (height, width, 3), dtype=np.uint8)


def _rect(width, height, x0, y0, x1, y1):
    mask = np.zeros((height, width), bool)
    mask[y0:y1, x0:x1] = True
    return mask


# ------------------------------------------------------------------------------------------ working size

@pytest.mark.parametrize("side", [768, 1024, 512, 50, 24000])
def test_square_inputs_work_at_768_by_default(side):
    assert working_size(side, side) == (768, 768)


# Expected sizes worked out by hand from the documented rule (R = 768, R^2 = 589824, area limit 619315):
@pytest.mark.parametrize("size, expected", [
    # ideal 886.8 x 665.1 -> {832, 896} x {640, 704}; 896x704 = 630784 is over the limit; aspects 1.300, 1.182,
    # 1.400 against 1.333 -> 832x640
    ((4000, 3000), (832, 640)),
    ((3000, 4000), (640, 832)),
    # 3:2: ideal 940.6 x 627.1 -> 960x640 is exactly 3:2 (area 614400, within the limit)
    ((6000, 4000), (960, 640)),
    # 16:9: ideal 1024 x 576 exactly
    ((1920, 1080), (1024, 576)),
    # 5:3 (tiny, upscaled): ideal 991.5 x 594.9 -> {960, 1024} x {576, 640}; 960x576 is exactly 5:3
    ((50, 30), (960, 576)),
    # aspect 100: ideal 7680 x 76.8 -> {7680} x {64, 128}; 7680x128 is over the limit
    ((10000, 100), (7680, 64)),
    ((100, 10000), (64, 7680)),
    # aspect 100000 is capped at R^2 / 64^2 = 144: ideal 9216 x 64
    ((100000, 1), (9216, 64)),
])
def test_working_size_examples(size, expected):
    assert working_size(*size) == expected


def test_working_size_other_resolutions():
    assert working_size(1000, 1000, 512) == (512, 512)
    assert working_size(1000, 1000, 64) == (64, 64)
    # 700 is no multiple of 64: 640x640 and 704x704 are both square, 704^2 = 495616 is nearer 490000
    assert working_size(300, 300, 700) == (704, 704)


@settings(max_examples=300, deadline=None)
@given(width=st.integers(1, 30000), height=st.integers(1, 30000), resolution=st.integers(64, 2048))
def test_working_size_is_bounded_and_symmetric(width, height, resolution):
    w, h = working_size(width, height, resolution)
    assert w % 64 == 0 and h % 64 == 0 and w >= 64 and h >= 64
    assert w * h <= resolution ** 2 * (1 + AREA_TOLERANCE)
    assert working_size(height, width, resolution) == (h, w)


@settings(max_examples=300, deadline=None)
@given(aspect=st.floats(0.25, 4.0), resolution=st.sampled_from([512, 576, 640, 704, 768, 832, 896, 960, 1024]))
def test_working_size_is_aspect_true_and_near_the_area(aspect, resolution):
    width, height = round(1000 * aspect), 1000
    w, h = working_size(width, height, resolution)
    assert abs(math.log(w / h / (width / height))) <= math.log(1.15)
    assert w * h >= 0.8 * resolution ** 2


@pytest.mark.parametrize("scale", [2, 3, 7])
def test_working_size_depends_on_the_aspect_only(scale):
    for width, height in [(400, 300), (13, 7), (1, 90)]:
        assert working_size(width * scale, height * scale) == working_size(width, height)


@pytest.mark.parametrize("resolution", [0, 63, -768, 768.0, 1.5, "768", True, 20000])
def test_bad_resolution(resolution):
    with pytest.raises(UserError, match="bad resolution"):
        working_size(100, 100, resolution)


@pytest.mark.parametrize("region, padding, match", [("box", 32, "bad region"), ("Mask", 32, "bad region"),
                                                     ("mask", -1, "bad region padding"),
                                                     ("mask", 2.5, "bad region padding")])
def test_bad_region_options(region, padding, match):
    with pytest.raises(UserError, match=match):
        check_options(region, padding, 768)
    with pytest.raises(UserError, match=match):
        plan((64, 64), np.ones((64, 64), bool), region, padding)


# ------------------------------------------------------------------------------------------ region boxes

def test_mask_bbox_is_exclusive():
    assert mask_bbox(_rect(50, 40, 3, 5, 20, 31)) == (3, 5, 20, 31)
    one = np.zeros((4, 4), bool)
    one[3, 3] = True
    assert mask_bbox(one) == (3, 3, 4, 4)


def test_empty_mask_is_a_user_error():
    with pytest.raises(UserError, match="selects no pixel"):
        region_box(np.zeros((10, 10), bool), 4, (64, 64))
    with pytest.raises(UserError, match="selects no pixel"):
        plan((10, 10), np.zeros((10, 10), bool), "mask")


def test_padding_then_widening_around_the_centre():
    mask = _rect(1000, 800, 300, 100, 500, 200)                # 200 x 100
    assert padded_box(mask, 32) == (268, 68, 532, 232)       # 264 x 164
    # square: the height grows by 100, 50 on each side
    assert region_box(mask, 32, (768, 768)) == (268, 18, 532, 282)
    # 960x576: the width grows to ceil(164 * 960 / 576) = 274, by 10, 5 on each side
    assert region_box(mask, 32, (960, 576)) == (263, 68, 537, 232)


def test_box_is_shifted_inside_at_the_borders():
    mask = _rect(400, 300, 0, 0, 100, 50)                    # top-left corner
    assert padded_box(mask, 32) == (0, 0, 132, 82)           # the padding outside the image is dropped
    assert region_box(mask, 32, (64, 64)) == (0, 0, 132, 132)
    mask = _rect(400, 300, 350, 280, 400, 300)               # bottom-right corner, 50 x 20
    assert region_box(mask, 0, (64, 64)) == (350, 250, 400, 300)     # rows 265:315 shifted up by 15
    assert region_box(mask, 0, (128, 64)) == (350, 275, 400, 300)    # rows 278:303 shifted up by 3
    mask = _rect(400, 300, 380, 0, 400, 300)                 # right edge, 20 x 300
    assert region_box(mask, 0, (64, 64)) == (100, 0, 400, 300)       # columns 240:540 shifted left by 140


def test_box_is_clamped_where_the_image_is_too_small():
    mask = _rect(300, 100, 100, 0, 200, 100)
    assert region_box(mask, 32, (64, 64)) == (68, 0, 232, 100)   # would need 164 rows: the whole height
    assert region_box(mask, 32, (768, 256)) == (0, 0, 300, 100)  # would need 300 columns: all of them
    assert region_box(np.ones((30, 50), bool), 8, (64, 64)) == (0, 0, 50, 30)


@st.composite
def _masks(draw):
    width, height = draw(st.integers(1, 200)), draw(st.integers(1, 200))
    x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
    x1, y1 = draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))
    mask = _rect(width, height, x0, y0, x1, y1)
    mask[draw(st.integers(0, height - 1)), draw(st.integers(0, width - 1))] = True   # a stray pixel
    return mask


@settings(max_examples=300, deadline=None)
@given(mask=_masks(), padding=st.integers(0, 64),
       aspect=st.tuples(st.integers(1, 40), st.integers(1, 40)).map(lambda t: (64 * t[0], 64 * t[1])))
def test_region_box_properties(mask, padding, aspect):
    height, width = mask.shape
    x0, y0, x1, y1 = box = region_box(mask, padding, aspect)
    px0, py0, px1, py1 = padded_box(mask, padding)
    assert 0 <= x0 <= px0 and 0 <= y0 <= py0 and px1 <= x1 <= width and py1 <= y1 <= height
    bw, bh = x1 - x0, y1 - y0
    assert bw == px1 - px0 or bh == py1 - py0                # only one axis is widened
    aw, ah = aspect
    if bw < width and bh < height:                           # not clamped: the aspect up to rounding one side up
        assert bw == math.ceil(bh * aw / ah) or bh == math.ceil(bw * ah / aw)
    if 0 < x0 and x1 < width:                                # not shifted: centred on the padded box
        assert abs((x0 + x1) - (px0 + px1)) <= 1
    if 0 < y0 and y1 < height:
        assert abs((y0 + y1) - (py0 + py1)) <= 1


# ------------------------------------------------------------------------------------------ plans

def test_square_768_full_plan_is_todays_behaviour():
    original = _photo(768, 768)
    mask = _rect(768, 768, 250, 0, 518, 250)
    p = plan((768, 768), mask)
    assert p.working_size == (768, 768) and p.region == "full" and p.region_box == (0, 0, 768, 768)
    image, crop_mask = p.crop(Image.fromarray(original), mask)
    np.testing.assert_array_equal(np.asarray(image), original)
    np.testing.assert_array_equal(crop_mask, mask)
    generated = _photo(768, 768)
    weights = feather_weights(mask, 12)
    np.testing.assert_array_equal(p.compose(original, generated, weights), paste_back(original, generated, weights))


def test_full_plan_of_a_photo_keeps_its_aspect():
    mask = _rect(4000, 3000, 0, 0, 10, 10)
    p = plan((4000, 3000), mask)
    assert p.working_size == (832, 640) and p.region_box == (0, 0, 4000, 3000)
    assert plan((4000, 3000), mask, height=768, width=768).working_size == (768, 768)


@pytest.mark.parametrize("height, width", [(512, None), (None, 512)])
def test_height_and_width_go_together(height, width, tmp_path):
    # the user's rule is the request's (one line, flags or keys); the planner only guards its contract
    with pytest.raises(UserError, match="--height and --width go together"):
        InpaintRequest({"image": tmp_path / "in.png", "prompt": "x", "out": tmp_path / "o.png", "height": height,
                        "width": width})
    with pytest.raises(ValueError, match="height and width go together"):
        plan((64, 64), np.ones((64, 64), bool), height=height, width=width)


def _region_case():
    """A 'photo' of 900x700 with a small mask: the padded box is upscaled to the working size."""
    original = _photo(900, 700)
    mask = _rect(900, 700, 610, 400, 700, 450)
    mask[455, 640] = True
    return original, mask


def test_mask_plan_box_and_working_size():
    original, mask = _region_case()
    p = plan((900, 700), mask, "mask", 32)
    assert padded_box(mask, 32) == (578, 368, 732, 488)                  # 154 x 120
    # aspect 1.283: ideal 869.1 x 677.2; 896x704 is over the area limit; 832x640 (1.300) is the nearest
    assert p.working_size == (832, 640)
    assert p.region_box == (577, 368, 733, 488)                          # 156 = 120 * 832 / 640 columns
    fixed = plan((900, 700), mask, "mask", 32, height=512, width=1024)
    assert fixed.working_size == (1024, 512) and fixed.region_box == (535, 368, 775, 488)   # 240 = 2 * 120


def test_mask_plan_equals_a_hand_cropped_full_run():
    """region=mask hands the pipeline exactly what a full run on the hand-cropped image and mask at the recorded
    working size gets, and composes exactly paste_back of that run's output resized into the box."""
    original, mask = _region_case()
    p = plan((900, 700), mask, "mask", 32, feather=8)
    x0, y0, x1, y1 = p.region_box
    hand_image, hand_mask = Image.fromarray(original[y0:y1, x0:x1]), mask[y0:y1, x0:x1]
    w, h = p.working_size
    full = plan(hand_image.size, hand_mask, "full", height=h, width=w)
    image, crop_mask = p.crop(Image.fromarray(original), mask)
    hand_image, hand_mask = full.crop(hand_image, hand_mask)
    np.testing.assert_array_equal(preprocess_image(image, h, w), preprocess_image(hand_image, h, w))
    np.testing.assert_array_equal(preprocess_mask(mask_to_image(crop_mask), h, w),
                                  preprocess_mask(mask_to_image(hand_mask), h, w))

    generated = _photo(w, h)
    weights = feather_weights(mask, 8)
    out = p.compose(original, generated, weights)
    resized = np.asarray(Image.fromarray(generated).resize((x1 - x0, y1 - y0), Image.Resampling.BICUBIC))
    expected = original.copy()
    expected[y0:y1, x0:x1] = paste_back(original[y0:y1, x0:x1], resized, weights[y0:y1, x0:x1])
    np.testing.assert_array_equal(out, expected)
    outside = np.ones(mask.shape, bool)
    outside[y0:y1, x0:x1] = False
    np.testing.assert_array_equal(out[outside], original[outside])
    assert not np.array_equal(out[mask], original[mask])


def test_feather_wider_than_the_padding_widens_the_box():
    original, mask = _region_case()
    weights = feather_weights(mask, 40)
    p = plan((900, 700), mask, "mask", 8, feather=40)
    # padded by 40: (570, 360, 740, 496), 170 x 136 -> 832x640 -> 177 = ceil(136 * 1.3) columns
    assert p.region_box == (567, 360, 744, 496)
    p.compose(original, _photo(*p.working_size), weights)        # the ramp lies inside the box
    narrow = plan((900, 700), mask, "mask", 8)
    with pytest.raises(ValueError, match="outside the region box"):
        narrow.compose(original, _photo(*narrow.working_size), weights)


def test_plan_checks_sizes():
    p = plan((64, 48), np.ones((48, 64), bool))
    with pytest.raises(ValueError):
        p.crop(Image.new("RGB", (48, 64)), np.ones((48, 64), bool))
    with pytest.raises(ValueError):
        p.compose(_photo(64, 48), _photo(64, 64), np.ones((64, 64), np.float32))
    with pytest.raises(ValueError):
        plan((64, 48), np.ones((64, 48), bool))


def test_plan_parameters():
    original, mask = _region_case()
    p = plan((900, 700), mask, "mask", 32, extend=Extend(left=16))
    params = p.parameters()
    assert params == {"working_size": [832, 640], "region": "mask", "region_box": [577, 368, 733, 488],
                      "extend": {"top": 0, "right": 0, "bottom": 0, "left": 16}, "resolution": 768,
                      "region_padding": 32}
    assert to_json(params)
    assert plan((64, 64), np.ones((64, 64), bool), extend=Extend.none()).parameters()["extend"] is None


# ------------------------------------------------------------------------------------------ extend

@pytest.mark.parametrize("text, expected", [
    ("top=10,left=5", Extend(top=10, left=5)),
    (" top = 10 , right=3 ", Extend(top=10, right=3)),
    ("bottom=0,right=7", Extend(right=7)),
    ("left=1,right=2,top=3,bottom=4", Extend(3, 2, 4, 1)),
    ({"top": 128, "left": "64"}, Extend(top=128, left=64)),
])
def test_parse_extend(text, expected):
    extend = parse_extend(text)
    assert extend == expected and extend
    assert extend.as_dict() == {side: getattr(expected, side) for side in ("top", "right", "bottom", "left")}


def test_extend_none_adds_nothing():
    assert not Extend.none() and Extend.none().as_dict() == {"top": 0, "right": 0, "bottom": 0, "left": 0}


@pytest.mark.parametrize("text, reason", [
    ("", "nothing given"), ("   ", "nothing given"), (None, "nothing given"),
    ("top", "'top' is not SIDE=N"), ("top=5,", "'' is not SIDE=N"),
    ("up=5", "unknown side 'up'"), ("Top=5", "unknown side 'Top'"), ({"front": 5}, "unknown side 'front'"),
    ("top=5,top=6", "side top is given twice"),
    ("top=-1", "top=-1 is not a whole number"), ("top=1.5", "top=1.5 is not a whole number"),
    ("top=abc", "top=abc is not a whole number"), ("top=+5", r"top=\+5 is not a whole number"),
    ("top=", "top= is not a whole number"), ("top=99999", "top=99999 is not a whole number"),
    ({"top": -3}, "top=-3 is not"), ({"top": 2.0}, "top=2.0 is not"), ({"top": True}, "top=True is not"),
    ("top=0", "adds nothing"), ("top=0,left=0", "adds nothing"),
])
def test_bad_extend(text, reason):
    with pytest.raises(UserError, match=f"bad extend .*{reason}") as err:
        parse_extend(text)
    assert "\n" not in str(err.value)


def _small_photo():
    return _photo(30, 20)


def test_extend_canvas_sizes_and_masks():
    original = _small_photo()
    user = _rect(30, 20, 5, 5, 10, 10)
    extend = Extend(top=3, right=4, bottom=5, left=6)
    canvas, mask = extend_canvas(Image.fromarray(original), user, extend)
    assert canvas.size == extend.canvas_size((30, 20)) == (40, 28) and mask.shape == (28, 40)
    np.testing.assert_array_equal(np.asarray(canvas)[3:23, 6:36], original)
    expected = np.ones((28, 40), bool)
    expected[3:23, 6:36] = user
    np.testing.assert_array_equal(mask, expected)
    _, alone = extend_canvas(Image.fromarray(original), None, extend)
    expected[3:23, 6:36] = False
    np.testing.assert_array_equal(alone, expected)


def test_extend_nothing_with_no_mask_is_a_user_error():
    with pytest.raises(UserError, match="nothing to repaint"):
        extend_canvas(Image.fromarray(_small_photo()), None, Extend.none())


@pytest.mark.parametrize("fill", ["edge", "blur", "mean", "noise"])
def test_every_fill_keeps_the_original_pixels(fill):
    original = _small_photo()
    canvas, _ = extend_canvas(Image.fromarray(original), None, Extend(top=7, left=40, bottom=1), fill)
    assert canvas.mode == "RGB" and canvas.size == (70, 28)
    np.testing.assert_array_equal(np.asarray(canvas)[7:27, 40:70], original)


def test_edge_fill_repeats_the_nearest_edge_pixel():
    original = _small_photo()
    canvas, _ = extend_canvas(Image.fromarray(original), None, Extend(top=3, right=4, bottom=5, left=6))
    rows = np.clip(np.arange(28) - 3, 0, 19)
    cols = np.clip(np.arange(40) - 6, 0, 29)
    np.testing.assert_array_equal(np.asarray(canvas), original[rows[:, None], cols[None, :]])


def test_mean_fill_is_the_mean_colour():
    original = _small_photo()
    canvas = np.asarray(extend_canvas(Image.fromarray(original), None, Extend(right=5), "mean")[0])
    mean = np.rint(original.reshape(-1, 3).astype(np.float64).mean(axis=0))
    np.testing.assert_array_equal(canvas[:, 30:], np.broadcast_to(mean, (20, 5, 3)))


def test_blur_fill_is_smooth_and_within_the_edge_colours():
    original = np.zeros((20, 30, 3), np.uint8)
    original[:, 15:] = 200                                    # two flat halves
    canvas = np.asarray(extend_canvas(Image.fromarray(original), None, Extend(bottom=40), "blur")[0])
    margin = canvas[20:].astype(int)
    assert margin.min() >= 0 and margin.max() <= 200
    assert 0 < margin[20, 15, 0] < 200                        # the step is blurred below the image
    edge = np.asarray(extend_canvas(Image.fromarray(original), None, Extend(bottom=40))[0]).astype(int)
    assert np.abs(np.diff(margin, axis=1)).max() < np.abs(np.diff(edge[20:], axis=1)).max()


def test_noise_fill_is_reproducible_noise():
    image = Image.fromarray(_small_photo())
    first = np.asarray(extend_canvas(image, None, Extend(left=30), "noise")[0])
    second = np.asarray(extend_canvas(image, None, Extend(left=30), "noise")[0])
    np.testing.assert_array_equal(first, second)
    assert first[:, :30].std() > 50


def test_bad_fill():
    with pytest.raises(UserError, match="bad extend fill 'zeros'"):
        extend_canvas(Image.fromarray(_small_photo()), None, Extend(top=1), "zeros")


def test_extend_pad_places_blend_weights():
    weights = np.full((2, 3), 0.25, np.float32)
    padded = Extend(top=1, left=2).pad(weights, 1.0)
    assert padded.shape == (3, 5) and padded.dtype == np.float32
    np.testing.assert_array_equal(padded[1:, 2:], weights)
    assert (padded[0] == 1).all() and (padded[:, :2] == 1).all()


def test_outpainting_with_the_mask_region():
    """Extend right by 40 with no user mask: the region box covers the new margin, the output has the canvas size
    and the original pixels are unchanged outside the margin."""
    original = _photo(100, 80)
    extend = Extend(right=40)
    canvas, mask = extend_canvas(Image.fromarray(original), None, extend)
    p = plan(canvas.size, mask, "mask", 16, extend=extend)
    x0, y0, x1, y1 = p.region_box
    assert x0 <= 100 - 16 and x1 == 140 and (y0, y1) == (0, 80)
    crop_image, crop_mask = p.crop(canvas, mask)
    assert crop_image.size == (x1 - x0, 80) and crop_mask[:, 100 - x0:].all() and not crop_mask[:, :100 - x0].any()
    weights = extend.pad(np.zeros((80, 100), np.float32), 1.0)
    generated = _photo(*p.working_size)
    out = p.compose(np.asarray(canvas), generated, weights)
    assert out.shape == (80, 140, 3)
    np.testing.assert_array_equal(out[:, :100], original)
    assert not np.array_equal(out[:, 100:], np.asarray(canvas)[:, 100:])
