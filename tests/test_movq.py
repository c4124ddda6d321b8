"""MoVQ (VQModel) against the tiny fixture's diffusers goldens, plus config-driven construction and loading."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import FIXTURE, assert_scaled
from kandinsky_cli.errors import UserError
from kandinsky_cli.movq import VQModel

MOVQ_DIR = FIXTURE / "inpaint" / "movq"
WEIGHTS = "diffusion_pytorch_model.safetensors"


def _checkpoint(path):
    with safe_open(str(path), framework="numpy") as f:
        return {k: f.get_tensor(k) for k in f.keys()}


@pytest.fixture(scope="module")
def movq():
    return VQModel.from_pretrained(MOVQ_DIR)


def test_parameter_names_match_checkpoint(movq):
    ckpt = _checkpoint(MOVQ_DIR / WEIGHTS)
    params = {name: tuple(p.shape) for name, p in movq.parameters_and_names()}
    assert params == {k: tuple(v.shape) for k, v in ckpt.items()}
    config = json.loads((MOVQ_DIR / "config.json").read_text())
    assert movq.scale_factor == 2 ** (len(config["block_out_channels"]) - 1)


def test_encode(movq, golden):
    g = golden("components")
    assert_scaled(movq.encode(g["movq/image"]).asnumpy(), g["movq/encode_latents"], 1e-4, "movq/encode_latents")


def test_decode_of_encode(movq, golden):
    g = golden("components")
    latents = movq.encode(g["movq/image"])
    assert_scaled(movq.decode(latents).asnumpy(), g["movq/decode_of_encode"], 1e-4, "movq/decode_of_encode")


def test_decode_non_square(movq, golden):
    g = golden("components")
    z = g["movq/decode_latents_in"]
    out = movq.decode(z).asnumpy()
    assert out.shape == (z.shape[0], 3, z.shape[2] * movq.scale_factor, z.shape[3] * movq.scale_factor)
    assert_scaled(out, g["movq/decode_out"], 1e-4, "movq/decode_out")


def test_deprecated_attention_names_load(tmp_path, movq, golden):
    legacy = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    renamed = {}
    for key, value in _checkpoint(MOVQ_DIR / WEIGHTS).items():
        for new, old in legacy.items():
            if ".attentions." in key and f".{new}." in key:
                key = key.replace(f".{new}.", f".{old}.")
        renamed[key] = value
    assert any(".proj_attn." in k for k in renamed) and not any(".to_q." in k for k in renamed)
    shutil.copy(MOVQ_DIR / "config.json", tmp_path / "config.json")
    save_file(renamed, str(tmp_path / WEIGHTS))
    old = VQModel.from_pretrained(tmp_path)
    z = golden("components")["movq/decode_latents_in"]
    np.testing.assert_array_equal(old.decode(z).asnumpy(), movq.decode(z).asnumpy())


# --- other configurations (random weights written to a checkpoint, then loaded strictly) -----------------------

def _random_checkpoint(tmp_path, config, seed=0):
    """Write config.json + random weights named after a from_config model; return the loaded model."""
    rng = np.random.default_rng(seed)
    model = VQModel.from_config(config)
    state = {}
    for name, p in model.parameters_and_names():
        arr = rng.standard_normal(tuple(p.shape)).astype(np.float32) * 0.1
        if name.endswith(("norm1.weight", "norm2.weight", "group_norm.weight", "conv_norm_out.weight",
                          "norm_layer.weight")):
            arr += 1.0
        state[name] = arr
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(state, str(tmp_path / WEIGHTS))
    return VQModel.from_pretrained(tmp_path)


DEEP_SPATIAL = {
    "_class_name": "VQModel", "some_future_key": 1,
    "in_channels": 3, "out_channels": 5, "latent_channels": 6, "vq_embed_dim": 6, "num_vq_embeddings": 7,
    "block_out_channels": [32, 64, 64], "layers_per_block": 2, "norm_num_groups": 16, "norm_type": "spatial",
    "down_block_types": ["DownEncoderBlock2D", "AttnDownEncoderBlock2D", "AttnDownEncoderBlock2D"],
    "up_block_types": ["AttnUpDecoderBlock2D", "UpDecoderBlock2D", "AttnUpDecoderBlock2D"],
}


def test_deep_spatial_config_shapes(tmp_path):
    model = _random_checkpoint(tmp_path, DEEP_SPATIAL)
    names = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    assert model.scale_factor == 4
    # encoder: 2 resnets per block, downsamplers on all but the last block, attention where requested
    assert names["encoder.down_blocks.0.resnets.1.norm1.weight"] == (32,)
    assert names["encoder.down_blocks.1.resnets.0.conv_shortcut.weight"] == (64, 32, 1, 1)
    assert "encoder.down_blocks.1.downsamplers.0.conv.weight" in names
    assert not any(n.startswith("encoder.down_blocks.2.downsamplers") for n in names)
    assert not any(n.startswith("encoder.down_blocks.0.attentions") for n in names)
    assert names["encoder.down_blocks.2.attentions.1.group_norm.weight"] == (64,)
    assert names["encoder.conv_out.weight"] == (6, 64, 3, 3)  # double_z=False
    assert names["quantize.embedding.weight"] == (7, 6)
    # decoder: reversed channels, layers_per_block + 1 resnets, spatial norms conditioned on the 6-ch latent
    assert names["decoder.conv_in.weight"] == (64, 6, 3, 3)
    assert names["decoder.up_blocks.0.resnets.2.norm2.conv_y.weight"] == (64, 6, 1, 1)
    assert "decoder.up_blocks.0.resnets.3.conv1.weight" not in names
    assert names["decoder.up_blocks.2.resnets.0.conv_shortcut.weight"] == (32, 64, 1, 1)
    assert names["decoder.up_blocks.2.attentions.2.spatial_norm.norm_layer.weight"] == (32,)
    assert not any(n.startswith("decoder.up_blocks.1.attentions") for n in names)
    assert "decoder.up_blocks.1.upsamplers.0.conv.weight" in names
    assert not any(n.startswith("decoder.up_blocks.2.upsamplers") for n in names)
    assert names["decoder.mid_block.attentions.0.spatial_norm.conv_b.weight"] == (64, 6, 1, 1)
    assert names["decoder.conv_norm_out.conv_y.weight"] == (32, 6, 1, 1)
    assert names["decoder.conv_out.weight"] == (5, 32, 3, 3)

    x = np.random.default_rng(1).uniform(-1, 1, (2, 3, 24, 40)).astype(np.float32)
    z = model.encode(x).asnumpy()
    assert z.shape == (2, 6, 6, 10)
    out = model.decode(z).asnumpy()
    assert out.shape == (2, 5, 24, 40) and np.isfinite(out).all()
    out2 = model.decode(np.zeros((1, 6, 5, 3), np.float32)).asnumpy()
    assert out2.shape == (1, 5, 20, 12)


def test_group_norm_config_without_mid_attention(tmp_path):
    config = {"block_out_channels": [16, 24], "layers_per_block": 1, "norm_num_groups": 8, "latent_channels": 3,
              "vq_embed_dim": 5, "mid_block_add_attention": False,
              "down_block_types": ["AttnDownEncoderBlock2D", "DownEncoderBlock2D"],
              "up_block_types": ["UpDecoderBlock2D", "AttnUpDecoderBlock2D"]}
    model = _random_checkpoint(tmp_path, config)
    names = {n: tuple(p.shape) for n, p in model.parameters_and_names()}
    assert not any(".mid_block.attentions" in n for n in names)
    assert names["decoder.up_blocks.1.attentions.1.group_norm.weight"] == (16,)
    assert names["decoder.conv_norm_out.weight"] == (16,)
    assert names["quant_conv.weight"] == (5, 3, 1, 1) and names["post_quant_conv.weight"] == (3, 5, 1, 1)
    x = np.random.default_rng(2).uniform(-1, 1, (1, 3, 16, 8)).astype(np.float32)
    z = model.encode(x)
    assert tuple(z.shape) == (1, 5, 8, 4)
    out = model.decode(z).asnumpy()
    assert out.shape == (1, 3, 16, 8) and np.isfinite(out).all()


def test_defaults_and_errors(tmp_path):
    model = VQModel.from_config({})  # diffusers defaults: one DownEncoderBlock2D of 64 channels, 3 latent channels
    assert model.scale_factor == 1 and model.config["latent_channels"] == 3
    assert tuple(model.encode(np.zeros((1, 3, 8, 8), np.float32)).shape) == (1, 3, 8, 8)
    with pytest.raises(ValueError, match="CrossAttnDownBlock2D"):
        VQModel.from_config(dict(DEEP_SPATIAL, down_block_types=["DownEncoderBlock2D", "CrossAttnDownBlock2D",
                                                                 "DownEncoderBlock2D"]))
    with pytest.raises(ValueError, match="UpBlock2D"):
        VQModel.from_config(dict(DEEP_SPATIAL, up_block_types=["UpBlock2D"] * 3))
    with pytest.raises(ValueError, match="norm_type"):
        VQModel.from_config(dict(DEEP_SPATIAL, norm_type="ada_group"))
    # a checkpoint that does not fit the config is rejected by the strict loader
    shutil.copy(MOVQ_DIR / WEIGHTS, tmp_path / WEIGHTS)
    (tmp_path / "config.json").write_text(json.dumps(dict(json.loads((MOVQ_DIR / "config.json").read_text()),
                                                          layers_per_block=2)))
    with pytest.raises(UserError, match="lacks"):
        VQModel.from_pretrained(tmp_path)
