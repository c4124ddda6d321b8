"""MultilingualCLIP (XLM-R + Linear): parity with golden components, and any other size from its config."""
from __future__ import annotations

import json
import math
import shutil

import mindspore as ms
import numpy as np
import pytest
from safetensors import safe_open
from safetensors.numpy import save_file

from conftest import assert_scaled, scaled_error
from kandinsky_cli.errors import UserError
from kandinsky_cli.mclip import MCLIPConfig, MultilingualCLIP


@pytest.fixture(scope="module")
def mclip(fixture_dir):
    return MultilingualCLIP.from_pretrained(fixture_dir / "inpaint" / "text_encoder")


def _run(model, ids, mask):
    embeds, hidden = model(ms.Tensor(np.asarray(ids, np.int64)), ms.Tensor(np.asarray(mask, np.int64)))
    return embeds.asnumpy(), hidden.asnumpy()


def test_matches_golden(mclip, golden):
    g = golden("components")
    embeds, hidden = _run(mclip, g["mclip/input_ids"], g["mclip/attention_mask"])
    print(f"mclip/text_embeds scaled error {scaled_error(embeds, g['mclip/text_embeds']):.3g}; "
          f"mclip/last_hidden_state {scaled_error(hidden, g['mclip/last_hidden_state']):.3g}")
    assert_scaled(embeds, g["mclip/text_embeds"], 1e-4, "mclip/text_embeds")
    assert_scaled(hidden, g["mclip/last_hidden_state"], 1e-4, "mclip/last_hidden_state")


def test_graph_mode_matches_golden(mclip, golden):
    g = golden("components")
    run = ms.jit(mclip.construct)
    embeds, hidden = run(ms.Tensor(g["mclip/input_ids"]), ms.Tensor(g["mclip/attention_mask"]))
    assert_scaled(embeds.asnumpy(), g["mclip/text_embeds"], 1e-4, "jit mclip/text_embeds")
    assert_scaled(hidden.asnumpy(), g["mclip/last_hidden_state"], 1e-4, "jit mclip/last_hidden_state")


def test_parameter_names_are_the_checkpoint_keys(mclip, fixture_dir):
    with safe_open(str(fixture_dir / "inpaint/text_encoder/model.safetensors"), framework="numpy") as f:
        keys = {k for k in f.keys() if not k.startswith("transformer.pooler.") and not k.endswith("position_ids")}
    assert {name for name, _ in mclip.parameters_and_names()} == keys
    assert not mclip.training


def test_padding_length_does_not_change_real_tokens(mclip, golden):
    """Shorter padding: the same real-token states and embeddings (mask and positions depend on the ids only)."""
    g = golden("components")
    ids, mask = g["mclip/input_ids"], g["mclip/attention_mask"]
    short = [i for i in range(len(ids)) if mask[i].sum() < 30]
    embeds, hidden = _run(mclip, ids[short, :30], mask[short, :30])
    for row, i in enumerate(short):
        n = int(mask[i].sum())
        assert_scaled(hidden[row, :n], g["mclip/last_hidden_state"][i, :n], 1e-5, "real-token states")
        assert_scaled(embeds[row], g["mclip/text_embeds"][i], 1e-5, "text_embeds")


# ---------------------------------------------------------------------------------------------------------------
# other sizes: random weights written as a checkpoint, loaded through from_pretrained, checked against numpy
# ---------------------------------------------------------------------------------------------------------------


def _np_layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


_erf = np.vectorize(math.erf)


def _np_mclip(sd, cfg, ids, mask):
    """float64 numpy reference of diffusers' MultilingualCLIP forward."""
    sd = {k: v.astype(np.float64) for k, v in sd.items()}
    eps, heads, pad = cfg["layer_norm_eps"], cfg["num_attention_heads"], cfg["pad_token_id"]
    p = "transformer.embeddings."
    m = (ids != pad).astype(np.int64)
    pos = np.cumsum(m, 1) * m + pad
    h = sd[p + "word_embeddings.weight"][ids] + sd[p + "token_type_embeddings.weight"][0] \
        + sd[p + "position_embeddings.weight"][pos]
    h = _np_layer_norm(h, sd[p + "LayerNorm.weight"], sd[p + "LayerNorm.bias"], eps)
    bias = (1.0 - mask[:, None, None, :]) * np.finfo(np.float32).min
    B, L, C = h.shape
    d = C // heads

    def lin(x, name):
        return x @ sd[name + ".weight"].T + sd[name + ".bias"]

    for i in range(cfg["num_hidden_layers"]):
        p = f"transformer.encoder.layer.{i}."
        q, k, v = (lin(h, p + f"attention.self.{n}").reshape(B, L, heads, d).transpose(0, 2, 1, 3)
                   for n in ("query", "key", "value"))
        s = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + bias
        s = np.exp(s - s.max(-1, keepdims=True))
        a = (s / s.sum(-1, keepdims=True)) @ v
        a = a.transpose(0, 2, 1, 3).reshape(B, L, C)
        h = _np_layer_norm(lin(a, p + "attention.output.dense") + h, sd[p + "attention.output.LayerNorm.weight"],
                           sd[p + "attention.output.LayerNorm.bias"], eps)
        f = lin(h, p + "intermediate.dense")
        f = 0.5 * f * (1.0 + _erf(f / math.sqrt(2.0)))
        h = _np_layer_norm(lin(f, p + "output.dense") + h, sd[p + "output.LayerNorm.weight"],
                           sd[p + "output.LayerNorm.bias"], eps)
    pooled = (h * mask[:, :, None]).sum(1) / mask.sum(1)[:, None]
    return lin(pooled, "LinearTransformation"), h


def _random_checkpoint(model, rng):
    sd = {}
    for name, param in model.parameters_and_names():
        scale = 0.3 if name.endswith("weight") and "LayerNorm" not in name else 0.1
        value = rng.standard_normal(tuple(param.shape)) * scale
        if "LayerNorm.weight" in name:
            value += 1.0
        sd[name] = value.astype(np.float32)
    return sd


def test_other_sizes_from_config(fixture_dir, tmp_path):
    cfg = json.loads((fixture_dir / "inpaint/text_encoder/config.json").read_text())
    cfg.update(hidden_size=24, transformerDimensions=24, numDims=20, num_attention_heads=3, num_hidden_layers=2,
               intermediate_size=40, vocab_size=57, max_position_embeddings=50, pad_token_id=1)
    folder = tmp_path / "text_encoder"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    sd = _random_checkpoint(MultilingualCLIP(cfg), rng)
    extra = {"transformer.pooler.dense.weight": np.zeros((24, 24), np.float32),
             "transformer.pooler.dense.bias": np.zeros((24,), np.float32),
             "transformer.embeddings.position_ids": np.arange(50, dtype=np.int64)[None]}
    save_file({**sd, **extra}, str(folder / "model.safetensors"))

    model = MultilingualCLIP.from_pretrained(folder)
    B, L = 3, 11
    ids = rng.integers(3, 57, size=(B, L))
    lengths = [2, 7, L]
    mask = np.zeros((B, L), np.int64)
    for b, n in enumerate(lengths):
        ids[b, 0], ids[b, n - 1] = 0, 2
        ids[b, n:] = 1
        mask[b, :n] = 1
    embeds, hidden = _run(model, ids, mask)
    assert embeds.shape == (B, 20) and hidden.shape == (B, L, 24)
    ref_embeds, ref_hidden = _np_mclip(sd, cfg, ids, mask.astype(np.float64))
    assert_scaled(embeds, ref_embeds, 1e-4, "text_embeds vs numpy")
    assert_scaled(hidden, ref_hidden, 1e-4, "last_hidden_state vs numpy")


def test_wrong_config_for_weights_is_a_user_error(fixture_dir, tmp_path):
    folder = tmp_path / "text_encoder"
    shutil.copytree(fixture_dir / "inpaint/text_encoder", folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["num_hidden_layers"] += 1
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match="lacks"):
        MultilingualCLIP.from_pretrained(folder)


def test_config_defaults_and_validation():
    cfg = MCLIPConfig.from_dict({"hidden_size": 1024, "num_attention_heads": 16})
    assert (cfg.transformerDimensions, cfg.numDims, cfg.pad_token_id) == (1024, 768, 1)
    with pytest.raises(UserError, match="hidden_act"):
        MCLIPConfig.from_dict({"hidden_size": 1024, "hidden_act": "gelu_fast"})
    with pytest.raises(UserError, match="position_embedding_type"):
        MCLIPConfig.from_dict({"hidden_size": 1024, "num_attention_heads": 16,
                               "position_embedding_type": "relative_key"})
