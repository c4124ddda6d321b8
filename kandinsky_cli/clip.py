"""CLIP text and vision towers with projection (transformers ``CLIPTextModelWithProjection`` /
``CLIPVisionModelWithProjection``), as used by the Kandinsky 2.1 prior pipeline.

The Cell trees mirror the transformers attribute names, so ``parameters_and_names()`` equals the
``model.safetensors`` keys and ``model_io.load_weights`` loads them by plain name match. Everything is built from
the component's ``config.json``; keys missing there take transformers' class defaults.
"""
from __future__ import annotations

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops

from . import layers, model_io
from .layers import LayerNorm, Linear
from .model_io import Config

# transformers CLIPTextConfig / CLIPVisionConfig defaults (used for keys absent from config.json).
TEXT_DEFAULTS = dict(vocab_size=49408, hidden_size=512, intermediate_size=2048, projection_dim=512,
                     num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=77,
                     hidden_act="quick_gelu", layer_norm_eps=1e-5, eos_token_id=49407)
VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=3072, projection_dim=512, num_hidden_layers=12,
                       num_attention_heads=12, num_channels=3, image_size=224, patch_size=32,
                       hidden_act="quick_gelu", layer_norm_eps=1e-5)


def _tanh_gelu(x):
    return ops.gelu(x, approximate="tanh")


# transformers ACT2FN names beyond the shared ones in layers.ACTIVATIONS.
_EXTRA_ACTIVATIONS = {"gelu_new": _tanh_gelu, "gelu_pytorch_tanh": _tanh_gelu, "gelu_fast": _tanh_gelu,
                      "relu": ops.relu, "swish": ops.silu}
HF_ACTIVATIONS = tuple(layers.ACTIVATIONS) + tuple(_EXTRA_ACTIVATIONS)


def hf_activation(name: str):
    """An activation by its transformers ``hidden_act`` name."""
    if name in _EXTRA_ACTIVATIONS:
        return _EXTRA_ACTIVATIONS[name]
    return layers.activation(name)


def _encoder_config(cfg: Config, defaults: dict) -> dict:
    """The transformer sizes that both towers share, typed and checked."""
    out = {key: cfg.int(key, defaults[key], min=1)
           for key in ("hidden_size", "intermediate_size", "projection_dim", "num_attention_heads")}
    out["num_hidden_layers"] = cfg.int("num_hidden_layers", defaults["num_hidden_layers"], min=0)
    out["hidden_act"] = cfg.choice("hidden_act", HF_ACTIVATIONS, defaults["hidden_act"])
    out["layer_norm_eps"] = cfg.float("layer_norm_eps", defaults["layer_norm_eps"], min=0)
    cfg.require(out["hidden_size"] % out["num_attention_heads"] == 0, "num_attention_heads",
                f"{out['num_attention_heads']} heads do not divide hidden_size {out['hidden_size']}")
    return out


def text_config(config) -> dict:
    """The effective CLIPTextConfig: config.json over transformers' defaults, every value typed and checked."""
    cfg = Config.of(config, "CLIP text config")
    out = _encoder_config(cfg, TEXT_DEFAULTS)
    out["vocab_size"] = cfg.int("vocab_size", TEXT_DEFAULTS["vocab_size"], min=1)
    out["max_position_embeddings"] = cfg.int("max_position_embeddings", TEXT_DEFAULTS["max_position_embeddings"],
                                             min=1)
    out["eos_token_id"] = cfg.int("eos_token_id", TEXT_DEFAULTS["eos_token_id"], min=0)
    return out


def vision_config(config) -> dict:
    """The effective CLIPVisionConfig: config.json over transformers' defaults, every value typed and checked."""
    cfg = Config.of(config, "CLIP vision config")
    out = _encoder_config(cfg, VISION_DEFAULTS)
    for key in ("num_channels", "image_size", "patch_size"):
        out[key] = cfg.int(key, VISION_DEFAULTS[key], min=1)
    cfg.require(out["patch_size"] <= out["image_size"], "patch_size",
                f"{out['patch_size']} is larger than image_size {out['image_size']}")
    return out


class CLIPAttention(layers.AttentionCell):
    """Multi-head self-attention with ``q_proj``/``k_proj``/``v_proj``/``out_proj`` (all with bias)."""

    def __init__(self, hidden: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q_proj = Linear(hidden, hidden)
        self.k_proj = Linear(hidden, hidden)
        self.v_proj = Linear(hidden, hidden)
        self.out_proj = Linear(hidden, hidden)

    def construct(self, x, mask=None):
        out = layers.attention(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, mask, self.bf16)
        return self.out_proj(out)


class CLIPMLP(nn.Cell):
    def __init__(self, hidden: int, intermediate: int, act: str):
        super().__init__()
        self.act = hf_activation(act)
        self.fc1 = Linear(hidden, intermediate)
        self.fc2 = Linear(intermediate, hidden)

    def construct(self, x):
        return self.fc2(self.act(self.fc1(x)))


class CLIPEncoderLayer(nn.Cell):
    """Pre-LN transformer block: x += attn(LN1(x)); x += mlp(LN2(x))."""

    def __init__(self, hidden: int, heads: int, intermediate: int, act: str, eps: float):
        super().__init__()
        self.self_attn = CLIPAttention(hidden, heads)
        self.layer_norm1 = LayerNorm(hidden, eps)
        self.mlp = CLIPMLP(hidden, intermediate, act)
        self.layer_norm2 = LayerNorm(hidden, eps)

    def construct(self, x, mask=None):
        x = x + self.self_attn(self.layer_norm1(x), mask)
        return x + self.mlp(self.layer_norm2(x))


class CLIPEncoder(nn.Cell):
    def __init__(self, cfg: dict):
        super().__init__()
        self.layers = nn.CellList([
            CLIPEncoderLayer(cfg["hidden_size"], cfg["num_attention_heads"], cfg["intermediate_size"],
                             cfg["hidden_act"], cfg["layer_norm_eps"])
            for _ in range(cfg["num_hidden_layers"])])

    def construct(self, x, mask=None):
        for layer in self.layers:
            x = layer(x, mask)
        return x


class CLIPTextEmbeddings(nn.Cell):
    def __init__(self, vocab: int, hidden: int, max_positions: int):
        super().__init__()
        self.token_embedding = layers.Embedding(vocab, hidden)
        self.position_embedding = layers.Embedding(max_positions, hidden)

    def construct(self, input_ids):
        seq = input_ids.shape[1]
        return self.token_embedding(input_ids) + self.position_embedding.weight[:seq][None]


class CLIPTextTransformer(nn.Cell):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = CLIPTextEmbeddings(cfg["vocab_size"], cfg["hidden_size"], cfg["max_position_embeddings"])
        self.encoder = CLIPEncoder(cfg)
        self.final_layer_norm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])
        n = cfg["max_position_embeddings"]
        # Causal mask (key j > query i masked), as torch's min-float fill; a constant, not a parameter.
        causal = np.triu(np.full((n, n), np.finfo(np.float32).min, dtype=np.float32), 1)
        self.causal_mask = Tensor(causal[None, None])
        eos = cfg["eos_token_id"]
        self.legacy_pool = eos == 2
        self.eos_token_id = eos

    def construct(self, input_ids):
        seq = input_ids.shape[1]
        x = self.embeddings(input_ids)
        mask = self.causal_mask[:, :, :seq, :seq]
        x = self.encoder(x, mask)
        last_hidden_state = self.final_layer_norm(x)
        if self.legacy_pool:
            # openai configs store eos_token_id=2: pool at the (first) largest id, i.e. the first <|endoftext|>.
            index = ops.argmax(input_ids, -1)
        else:
            index = ops.argmax((input_ids == self.eos_token_id).astype(ms.int32), -1)
        pooled = ops.gather(last_hidden_state, index.astype(ms.int32), 1, batch_dims=1)
        return pooled, last_hidden_state


class CLIPTextModelWithProjection(nn.Cell):
    """``construct(input_ids (B, L) int) -> (text_embeds (B, projection_dim), last_hidden_state (B, L, hidden))``.

    Only the causal mask is applied (the prior pipeline passes no padding mask).
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = text_config(config)
        self.config = cfg
        self.text_model = CLIPTextTransformer(cfg)
        self.text_projection = Linear(cfg["hidden_size"], cfg["projection_dim"], bias=False)

    def construct(self, input_ids):
        pooled, last_hidden_state = self.text_model(input_ids)
        return self.text_projection(pooled), last_hidden_state

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None) -> "CLIPTextModelWithProjection":
        return model_io.build_and_load(cls, component_dir, model_io.TRANSFORMERS_WEIGHTS, dtype)


class CLIPVisionEmbeddings(nn.Cell):
    def __init__(self, cfg: dict):
        super().__init__()
        hidden, patch = cfg["hidden_size"], cfg["patch_size"]
        num_patches = (cfg["image_size"] // patch) ** 2
        self.class_embedding = Parameter(Tensor(np.zeros((hidden,), np.float32)), name="class_embedding")
        self.patch_embedding = layers.Conv2d(cfg["num_channels"], hidden, patch, stride=patch, bias=False)
        self.position_embedding = layers.Embedding(num_patches + 1, hidden)

    def construct(self, pixel_values):
        w = self.patch_embedding.weight
        x = self.patch_embedding(pixel_values.astype(w.dtype))  # (B, C, gh, gw)
        b, c = x.shape[0], x.shape[1]
        x = x.reshape(b, c, -1).transpose(0, 2, 1)  # (B, N, C)
        cls = ops.broadcast_to(self.class_embedding.astype(x.dtype).reshape(1, 1, c), (b, 1, c))
        x = ops.concat((cls, x), 1)
        return x + self.position_embedding.weight.astype(x.dtype)[None]


class CLIPVisionTransformer(nn.Cell):
    def __init__(self, cfg: dict):
        super().__init__()
        self.embeddings = CLIPVisionEmbeddings(cfg)
        self.pre_layrnorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])  # sic: transformers' name
        self.encoder = CLIPEncoder(cfg)
        self.post_layernorm = LayerNorm(cfg["hidden_size"], cfg["layer_norm_eps"])

    def construct(self, pixel_values):
        x = self.pre_layrnorm(self.embeddings(pixel_values))
        x = self.encoder(x)
        return self.post_layernorm(x[:, 0])


class CLIPVisionModelWithProjection(nn.Cell):
    """``construct(pixel_values (B, C, S, S)) -> image_embeds (B, projection_dim)`` (S = config image_size)."""

    def __init__(self, config: dict):
        super().__init__()
        cfg = vision_config(config)
        self.config = cfg
        self.vision_model = CLIPVisionTransformer(cfg)
        self.visual_projection = Linear(cfg["hidden_size"], cfg["projection_dim"], bias=False)

    def construct(self, pixel_values):
        return self.visual_projection(self.vision_model(pixel_values))

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None) -> "CLIPVisionModelWithProjection":
        return model_io.build_and_load(cls, component_dir, model_io.TRANSFORMERS_WEIGHTS, dtype)
