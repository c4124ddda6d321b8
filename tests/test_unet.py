"""Kandinsky 2.1 UNet: parity with diffusers on the tiny fixture, and config-driven construction."""
from __future__ import annotations

import json

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from conftest import assert_scaled
from kandinsky_cli.unet import UNet2DConditionModel, count_parameters


@pytest.fixture(scope="module")
def unet_dir(fixture_dir):
    return fixture_dir / "inpaint" / "unet"


@pytest.fixture(scope="module")
def tiny_config(unet_dir):
    return json.loads((unet_dir / "config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def unet(unet_dir):
    return UNet2DConditionModel.from_pretrained(unet_dir)


def _inputs(g):
    return g["unet/sample"], g["unet/encoder_hidden_states"], g["unet/text_embeds"], g["unet/image_embeds"]


def test_timesteps_are_the_documented_ones(golden):
    assert [int(t) for t in golden("components")["unet/timesteps"]] == [601, 1]


@pytest.mark.parametrize("t", [601, 1])
def test_unet_matches_diffusers(unet, golden, t):
    g = golden("components")
    sample, enc, text, image = _inputs(g)
    out = unet.predict(sample, t, enc, text, image).asnumpy()
    assert out.dtype == np.float32
    assert_scaled(out, g[f"unet/out_t{t}"], 1e-4, what=f"unet/out_t{t}")


def test_unet_under_jit_matches_diffusers(unet, golden):
    g = golden("components")
    sample, enc, text, image = _inputs(g)
    temb = unet.time_proj(np.full(sample.shape[0], 1))
    out = ms.jit(unet.construct)(Tensor(sample), temb, Tensor(enc), Tensor(text), Tensor(image)).asnumpy()
    assert_scaled(out, g["unet/out_t1"], 1e-4, what="unet/out_t1 (jit)")


def test_missing_keys_take_diffusers_defaults(tiny_config):
    full = UNet2DConditionModel(tiny_config)
    cfg = dict(tiny_config)
    for key in ("resnet_out_scale_factor", "mid_block_only_cross_attention", "cross_attention_norm",
                "conv_in_kernel", "conv_out_kernel", "time_embedding_dim", "dual_cross_attention"):
        del cfg[key]
    cfg["some_future_key"] = 123
    reduced = UNet2DConditionModel(cfg)
    shapes = lambda m: {n: tuple(p.shape) for n, p in m.parameters_and_names()}  # noqa: E731
    assert shapes(reduced) == shapes(full)


@pytest.mark.parametrize("key,value", [
    ("down_block_types", ["DownBlock2D", "SimpleCrossAttnDownBlock2D"]),
    ("up_block_types", ["CrossAttnUpBlock2D", "ResnetUpsampleBlock2D"]),
    ("mid_block_type", "UNetMidBlock2DCrossAttn"),
    ("addition_embed_type", "image"),
    ("encoder_hid_dim_type", "image_proj"),
    ("block_out_channels", [32, 64, 64]),
])
def test_unsupported_config_raises_value_error(tiny_config, key, value):
    cfg = dict(tiny_config, **{key: value})
    with pytest.raises(ValueError):
        UNet2DConditionModel(cfg)


def _randomise(cell, seed=0, std=0.05):
    rng = np.random.default_rng(seed)
    for _, p in cell.parameters_and_names():
        p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * std))


@pytest.mark.parametrize("variant", ["three_blocks", "per_block_lists"])
def test_other_sizes_and_depths(tiny_config, variant):
    cfg = dict(tiny_config)
    cfg.update(
        block_out_channels=[32, 64, 96],
        down_block_types=["ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D"],
        up_block_types=["SimpleCrossAttnUpBlock2D", "SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"],
        layers_per_block=2, attention_head_dim=16, cross_attention_dim=48, encoder_hid_dim=40,
        in_channels=5, out_channels=6,
    )
    if variant == "per_block_lists":
        cfg.update(layers_per_block=[1, 2, 3], attention_head_dim=[8, 16, 32])
    model = UNet2DConditionModel(cfg)
    names = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    lpb = cfg["layers_per_block"] if isinstance(cfg["layers_per_block"], list) else [2, 2, 2]
    # checkpoint-style names and shapes, derived from the config
    assert names["encoder_hid_proj.image_embeds.weight"] == (10 * 48, 48)
    assert names["encoder_hid_proj.text_proj.weight"] == (48, 40)
    assert names["add_embedding.text_proj.weight"] == (128, 48)
    assert names["time_embedding.linear_1.weight"] == (128, 32)
    assert names["down_blocks.2.attentions.0.add_k_proj.weight"] == (96, 48)
    assert names["mid_block.attentions.0.to_out.0.weight"] == (96, 96)
    assert "down_blocks.1.downsamplers.0.conv1.weight" in names
    assert not any(n.startswith("down_blocks.2.downsamplers") for n in names)
    assert not any(n.startswith("up_blocks.2.upsamplers") for n in names)
    assert not any(".attentions." in n for n in names if n.startswith(("down_blocks.0.", "up_blocks.2.")))
    for i, n_layers in enumerate(reversed(lpb)):
        assert f"up_blocks.{i}.resnets.{n_layers}.conv1.weight" in names
        assert f"up_blocks.{i}.resnets.{n_layers + 1}.conv1.weight" not in names
    # first up resnet eats [96 (mid) + 96 (last skip)], last resnet of the final block [32 + 32 (conv_in)]
    assert names["up_blocks.0.resnets.0.conv1.weight"] == (96, 192, 3, 3)
    assert names[f"up_blocks.2.resnets.{lpb[0]}.conv1.weight"] == (32, 64, 3, 3)
    if variant == "per_block_lists":
        # diffusers indexes attention_head_dim by block position for the up blocks too (not reversed)
        assert model.down_blocks[1].attentions[0].heads == 64 // 16
        assert model.mid_block.attentions[0].heads == 96 // 32
        assert model.up_blocks[0].attentions[0].heads == 96 // 8

    _randomise(model)
    rng = np.random.default_rng(1)
    b, h, w = 2, 16, 24
    out = model.predict(rng.standard_normal((b, 5, h, w)).astype(np.float32), 500,
                        rng.standard_normal((b, 7, 40)).astype(np.float32),
                        rng.standard_normal((b, 48)).astype(np.float32),
                        rng.standard_normal((b, 48)).astype(np.float32)).asnumpy()
    assert out.shape == (b, 6, h, w)
    assert np.isfinite(out).all() and out.std() > 0


def test_real_size_config_parameter_count(tiny_config):
    """The published inpaint UNet (reference section 2.5): parameters are lazily zero-initialised, so cheap."""
    cfg = dict(tiny_config)
    cfg.update(
        block_out_channels=[384, 768, 1152, 1536], layers_per_block=3,
        down_block_types=["ResnetDownsampleBlock2D"] + ["SimpleCrossAttnDownBlock2D"] * 3,
        up_block_types=["SimpleCrossAttnUpBlock2D"] * 3 + ["ResnetUpsampleBlock2D"],
        attention_head_dim=64, cross_attention_dim=768, encoder_hid_dim=1024,
    )
    model = UNet2DConditionModel(cfg)
    names = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    assert count_parameters(model) == 1_228_679_048
    assert names["encoder_hid_proj.image_embeds.weight"] == (7680, 768)
    assert names["up_blocks.0.resnets.3.conv1.weight"] == (1536, 2688, 3, 3)
    assert names["up_blocks.3.resnets.0.conv1.weight"] == (384, 1152, 3, 3)
    assert [model.down_blocks[i].attentions[0].heads for i in (1, 2, 3)] == [12, 18, 24]
    assert model.mid_block.attentions[0].heads == 24
