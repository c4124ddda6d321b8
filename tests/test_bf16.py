"""The bfloat16 path: the custom operators against their definitions, every network against the float32 goldens,
and --dtype bfloat16 / auto through the tool. Skipped, with the reason, on machines that cannot run bf16."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from conftest import FIXTURE
from kandinsky_cli import bf16
import parity_lib as parity  # scripts/parity.py's harness (conftest puts scripts/ on the path)

REASON = bf16.unavailable_reason()
needs_bf16 = pytest.mark.skipif(REASON is not None, reason=f"bf16 unavailable: {REASON}")
TOLERANCE = 5e-2        # rel-L2 of a network against float32 (mindone.diffusers' figure for its fp16 pipelines)
# rel-L2 of a whole pipeline's images: the per-call error compounds over the steps and guidance (x4) amplifies it.
# Measured on the tiny fixture: 3.0e-2 .. 7.0e-2 (5 steps); diffusers in bf16 has the larger per-network error
# there (UNet 1.9e-2 vs ours 1.3e-2, MoVQ decode 3.6e-2 vs 2.8e-2).
IMAGE_TOLERANCE = 1e-1


def rel_l2(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-30))


def rounded(a) -> np.ndarray:
    """float64 values of a's bf16 rounding."""
    return bf16.from_bits(bf16.to_bits(a)).astype(np.float64)


# ------------------------------------------------------------------------------------------- without the CPU


def test_to_bits_rounds_to_nearest_even():
    # 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even mantissa (1.0);
    # 1 + 3 * 2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: to 1 + 2^-6.
    values = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -8 + 2 ** -20, -2.5, 0.0, np.inf], np.float32)
    expected = np.array([1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, -2.5, 0.0, np.inf], np.float32)
    np.testing.assert_array_equal(bf16.from_bits(bf16.to_bits(values)), expected)
    nan = bf16.from_bits(bf16.to_bits(np.array([np.nan, -np.nan], np.float32)))
    assert np.isnan(nan).all()
    x = np.random.default_rng(0).standard_normal(10000).astype(np.float32)
    assert np.max(np.abs(bf16.from_bits(bf16.to_bits(x)) - x) / np.abs(x)) <= 2 ** -8


@needs_bf16
def test_the_library_converts_weights_as_defined():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((70001,)).astype(np.float32)
    np.testing.assert_array_equal(bf16.round_weights(w), bf16.to_bits(w))
    g = rng.standard_normal((5, 3, 3, 3)).astype(np.float32)
    G = bf16.WINOGRAD_G.astype(np.float64)
    expected = np.einsum("ij,ocjk,lk->iloc", G, g.astype(np.float64), G).reshape(16, 5, 3)
    u = bf16.from_bits(bf16.winograd_weights(g)).astype(np.float64)
    np.testing.assert_allclose(u, expected, rtol=2 ** -8, atol=1e-7)    # within bf16's rounding


def test_auto_and_explicit_dtypes_resolve_per_device():
    assert bf16.resolve_dtype("float32", "cpu") == "float32"
    assert bf16.resolve_dtype("float16", "gpu") == "float16"
    assert bf16.resolve_dtype("auto", "gpu") == "float16"       # the seed's own choice off the CPU
    assert bf16.resolve_dtype("auto", "cpu") == ("float32" if REASON else "bfloat16")
    from kandinsky_cli.errors import UserError
    with pytest.raises(UserError, match="CPU only"):
        bf16.resolve_dtype("bfloat16", "ascend")


def test_the_switch_turns_it_off(monkeypatch):
    monkeypatch.setenv("KANDINSKY_BF16", "0")
    bf16.unavailable_reason.cache_clear()
    try:
        assert "KANDINSKY_BF16=0" in bf16.unavailable_reason()
        assert bf16.resolve_dtype("auto", "cpu") == "float32"
    finally:
        monkeypatch.delenv("KANDINSKY_BF16")
        bf16.unavailable_reason.cache_clear()


def test_a_cpu_without_the_flag_is_named(tmp_path):
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f\n\nprocessor\t: 1\nflags\t\t: fpu sse2\n")
    assert bf16.cpu_flags(info) == {"fpu", "sse2", "avx2", "avx512f"}
    assert bf16.cpu_flags(tmp_path / "missing") == set()


# ------------------------------------------------------------------------------------------- the operators

@needs_bf16
@pytest.mark.parametrize("mode", ["pynative", "graph"])
@pytest.mark.parametrize("bits_a, bits_b", [(False, False), (True, False), (False, True)])
def test_matmuls_are_bf16_products_with_float32_sums(mode, bits_a, bits_b):
    rng = np.random.default_rng(2)
    kernels = bf16.ops()
    for a_shape, b_shape, transpose in [((3, 17, 40), (1, 40, 9), False), ((1, 5, 64), (2, 64, 33), False),
                                        ((2, 7, 24), (2, 11, 24), True), ((1, 300, 130), (1, 70, 130), True)]:
        a = rng.standard_normal(a_shape).astype(np.float32)
        b = rng.standard_normal(b_shape).astype(np.float32)
        ta = Tensor(bf16.to_bits(a)) if bits_a else Tensor(a)
        tb = Tensor(bf16.to_bits(b)) if bits_b else Tensor(b)
        op = kernels.mm_nt if transpose else kernels.mm_nn
        fn = ms.jit(op) if mode == "graph" else op
        out = fn(ta, tb).asnumpy()
        ref = np.matmul(rounded(a), np.swapaxes(rounded(b), 1, 2) if transpose else rounded(b))
        assert out.dtype == np.float32 and out.shape == ref.shape
        np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-4 * np.abs(ref).max())
        # the operator rounds float32 operands as to_bits does
        exact = fn(Tensor(bf16.to_bits(a)), Tensor(bf16.to_bits(b))).asnumpy()
        np.testing.assert_array_equal(out, exact)


@needs_bf16
@pytest.mark.parametrize("shape", [(2, 8, 5, 7, 9), (1, 3, 4, 4, 4), (2, 16, 16, 1, 1), (1, 5, 3, 2, 33),
                                   (3, 40, 17, 18, 3), (2, 4, 3, 190, 101)])   # the last: chunks across samples
def test_winograd_conv_matches_the_direct_convolution(shape):
    n, ci, co, h, w = shape
    rng = np.random.default_rng(3)
    x = rng.standard_normal((n, ci, h, w)).astype(np.float32)
    g = rng.standard_normal((co, ci, 3, 3)).astype(np.float32)
    bias = rng.standard_normal(co).astype(np.float32)
    out = bf16.ops().winograd3x3(Tensor(x), Tensor(bf16.winograd_weights(g)), Tensor(bias)).asnumpy()
    ref = ops.conv2d(Tensor(x), Tensor(g), pad_mode="pad", padding=1).asnumpy() + bias[None, :, None, None]
    assert out.shape == ref.shape
    assert rel_l2(out, ref) < 1e-2      # bf16 operands: ~4e-3


@needs_bf16
def test_conversion_drops_the_float32_weights_and_keeps_small_layers():
    from kandinsky_cli import layers

    net = ms.nn.SequentialCell([layers.Conv2d(3, 64, 3, padding=1), layers.Conv2d(64, 64, 3, padding=1),
                                layers.Conv2d(64, 64, 1), layers.Conv2d(64, 64, 3, stride=2, padding=1)])
    layers.to_bfloat16(net)
    assert [cell.bf16 for cell in net] == [False, True, True, False]   # 3 channels; strided: float32
    params = {name: p for name, p in net.parameters_and_names()}
    assert "1.weight" not in params and params["1.weight_bf16"].dtype == ms.uint16
    assert tuple(params["1.weight_bf16"].shape) == (16, 64, 64) and tuple(params["2.weight_bf16"].shape) == (1, 64, 64)
    assert params["0.weight"].dtype == ms.float32


# ------------------------------------------------------------------------------------------- the networks

@needs_bf16
@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_decoder_networks_in_bf16_match_the_float32_goldens(golden, mode):
    ref = golden("components")
    out = parity.decoder_component_outputs(FIXTURE, ref, mode=mode, bf16=True)
    keys = ["mclip/text_embeds", "mclip/last_hidden_state", "movq/encode_latents", "movq/decode_of_encode",
            "movq/decode_out"] + [f"unet/out_t{int(t)}" for t in ref["unet/timesteps"]]
    errors = {k: rel_l2(out[k], ref[k]) for k in keys}
    print("bf16 rel-L2 " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    assert all(v < TOLERANCE for v in errors.values()), errors
    assert errors["movq/decode_out"] < 1e-4          # the MoVQ decoder stays float32 (movq.Decoder.keep_float32)
    assert min(v for k, v in errors.items() if k != "movq/decode_out") > 1e-5     # the bf16 operators really ran


@needs_bf16
def test_prior_networks_in_bf16_match_the_float32_goldens(golden):
    ref = golden("components")
    out = parity.prior_component_outputs(FIXTURE, ref, bf16=True)
    keys = ["clip_text/text_embeds", "clip_text/last_hidden_state", "clip_vision/image_embeds",
            "clip_vision/zero_image_embeds"] + [f"prior/predicted_image_embedding_t{int(t)}" for t in
                                                ref["prior/timesteps"]]
    errors = {k: rel_l2(out[k], ref[k]) for k in keys}
    print("bf16 rel-L2 " + ", ".join(f"{k}={v:.2e}" for k, v in errors.items()))
    assert all(v < TOLERANCE for v in errors.values()), errors


@needs_bf16
def test_inpaint_pipeline_in_bf16_is_close_to_the_golden_images(golden):
    from kandinsky_cli.inpaint_pipeline import InpaintPipeline

    ref = golden("inpaint_pipeline")
    images = parity.inpaint_pipeline_outputs(FIXTURE, pipe=InpaintPipeline(FIXTURE / "inpaint", bf16=True))
    for key in [k for k in ref if k.endswith("/images")]:
        diff = np.abs(images[key].astype(np.float64) - ref[key])
        print(f"{key}: bf16 mean |diff| {diff.mean():.2e}, max {diff.max():.2e}")
        assert diff.mean() < 4e-2 and rel_l2(images[key], ref[key]) < IMAGE_TOLERANCE, key


# ------------------------------------------------------------------------------------------- the tool

def _cli(*args):
    from typer.testing import CliRunner

    from kandinsky_cli.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


@needs_bf16
def test_inpaint_with_dtype_auto_runs_bf16_and_says_so(tmp_path, golden):
    from PIL import Image

    from kandinsky_cli.files import read_png_metadata

    Image.fromarray(golden("inpaint_pipeline")["case0/input/image"]).save(tmp_path / "in.png")
    out = tmp_path / "out.png"
    result = _cli("inpaint", tmp_path / "in.png", "--mask-rect", "0:16,0:16", "--prompt", "a hat",
                  "--prior-model", FIXTURE / "prior", "--decoder-model", FIXTURE / "inpaint", "--steps", 2,
                  "--prior-steps", 2, "--resolution", 64, "--dtype", "auto", "--mode", "pynative", "--seed", 3, "--out", out, "--json")
    assert result.exit_code == 0, result.output
    meta = read_png_metadata(out)["parameters"]
    assert meta["dtype"] == "bfloat16" and meta["dtype_requested"] == "auto"
    assert '"bfloat16"' in result.stdout


def test_bfloat16_where_it_cannot_run_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("KANDINSKY_BF16", "0")
    bf16.unavailable_reason.cache_clear()
    try:
        result = _cli("prior", "a hat", "--prior-model", FIXTURE / "prior", "--steps", 2, "--dtype", "bfloat16",
                      "--out-dir", tmp_path / "e")
    finally:
        monkeypatch.delenv("KANDINSKY_BF16")
        bf16.unavailable_reason.cache_clear()
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "bfloat16 is unavailable" in lines[0], lines
    assert "KANDINSKY_BF16=0" in lines[0] and not (tmp_path / "e").exists()
