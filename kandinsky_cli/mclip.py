"""MultilingualCLIP, the inpaint pipeline's text encoder: XLM-RoBERTa + one Linear, as diffusers' ``MultilingualCLIP``.

Parameter names are the checkpoint's (``transformer.*`` = transformers' XLMRobertaModel, ``LinearTransformation.*``);
``transformer.pooler.*`` exists in the file but is unused and skipped by the loader.

``construct(input_ids, attention_mask) -> (text_embeds (B, numDims), last_hidden_state (B, L, hidden))``:

1. positions: m = (ids != pad_token_id); pos = cumsum(m) * m + pad_token_id (real tokens from pad_token_id + 1);
   token types all 0; emb = LayerNorm(word + token_type + position).
2. post-LN encoder layers: h = LN(h + dense(attn(h))); h = LN(h + dense2(act(dense1(h)))); the attention mask
   adds the dtype's most negative finite value to the scores of padded keys (padded queries still attend).
3. text_embeds = LinearTransformation(sum_t(h * mask) / sum_t(mask)) (mean over all unmasked tokens, <s> and
   </s> included); last_hidden_state is returned for every position, pads included.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from .layers import ACTIVATIONS, AttentionCell, Embedding, LayerNorm, Linear, activation, attention
from .model_io import TRANSFORMERS_WEIGHTS, Config, build_and_load

FLOAT32_MIN = -3.4028234663852886e38
FLOAT16_MIN = -65504.0


@dataclass
class MCLIPConfig:
    """The fields of diffusers' ``MCLIPConfig`` (an ``XLMRobertaConfig``) that the forward pass uses.

    Missing keys take the class defaults (XLMRobertaConfig / MCLIPConfig), as ``from_pretrained`` would.
    ``from_dict`` is the way to make one from a config.json.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 1
    transformerDimensions: int = 1024
    numDims: int = 768

    @classmethod
    def from_dict(cls, config) -> "MCLIPConfig":
        """The fields from a config.json dict (or Config), typed and checked: a bad value is a ModelError."""
        cfg = Config.of(config, "MultilingualCLIP config")
        d = cls()
        sizes = {key: cfg.int(key, getattr(d, key), min=1)
                 for key in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                             "intermediate_size", "max_position_embeddings", "type_vocab_size")}
        # MCLIPConfig(transformerDimSize=1024, imageDimSize=768, **kwargs): saved configs carry the attribute
        # names, older ones perhaps only the constructor's
        dims = {}
        for name, alias in (("transformerDimensions", "transformerDimSize"), ("numDims", "imageDimSize")):
            key = alias if name not in cfg and alias in cfg else name
            dims[name] = cfg.int(key, getattr(d, name), min=1)
        out = cls(**sizes, **dims, hidden_act=cfg.choice("hidden_act", tuple(ACTIVATIONS), d.hidden_act),
                  layer_norm_eps=cfg.float("layer_norm_eps", d.layer_norm_eps, min=0),
                  pad_token_id=cfg.int("pad_token_id", d.pad_token_id, min=0))
        out.validate(cfg)
        return out

    def validate(self, cfg: Config):
        """What the values must agree on, and the XLM-R options this port does not implement."""
        cfg.require(self.hidden_size % self.num_attention_heads == 0, "num_attention_heads",
                    f"{self.num_attention_heads} heads do not divide hidden_size {self.hidden_size}")
        cfg.require(self.transformerDimensions == self.hidden_size, "transformerDimensions",
                    f"{self.transformerDimensions} differs from hidden_size {self.hidden_size}")
        cfg.require(self.pad_token_id < self.vocab_size, "pad_token_id",
                    f"{self.pad_token_id} is outside the vocabulary (vocab_size {self.vocab_size})")
        cfg.choice("position_embedding_type", ("absolute", None), "absolute")
        cfg.choice("is_decoder", (False,), False)


class XLMRobertaEmbeddings(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.word_embeddings = Embedding(config.vocab_size, config.hidden_size)
        self.position_embeddings = Embedding(config.max_position_embeddings, config.hidden_size)
        self.token_type_embeddings = Embedding(config.type_vocab_size, config.hidden_size)
        self.LayerNorm = LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.pad_token_id = config.pad_token_id

    def construct(self, input_ids):
        not_pad = ops.cast(ops.not_equal(input_ids, self.pad_token_id), ms.int32)
        positions = ops.cumsum(not_pad, 1) * not_pad + self.pad_token_id
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]  # token_type_ids are all 0
        x = x + self.position_embeddings(positions)
        return self.LayerNorm(x)


class XLMRobertaSelfAttention(AttentionCell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)

    def construct(self, h, mask):
        return attention(self.query(h), self.key(h), self.value(h), self.heads, mask, self.bf16)


class XLMRobertaResidualOutput(nn.Cell):
    """``dense`` then post-LN with the residual (transformers' XLMRobertaSelfOutput and XLMRobertaOutput)."""

    def __init__(self, in_features: int, hidden_size: int, eps: float):
        super().__init__()
        self.dense = Linear(in_features, hidden_size)
        self.LayerNorm = LayerNorm(hidden_size, eps=eps)

    def construct(self, h, residual):
        return self.LayerNorm(self.dense(h) + residual)


class XLMRobertaAttention(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        # the checkpoint's name is "attention.self.*"; a Cell attribute may be called "self"
        self.self = XLMRobertaSelfAttention(config)
        self.output = XLMRobertaResidualOutput(config.hidden_size, config.hidden_size, config.layer_norm_eps)

    def construct(self, h, mask):
        return self.output(self.self(h, mask), h)


class XLMRobertaIntermediate(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.dense = Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def construct(self, h):
        return self.act(self.dense(h))


class XLMRobertaLayer(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.attention = XLMRobertaAttention(config)
        self.intermediate = XLMRobertaIntermediate(config)
        self.output = XLMRobertaResidualOutput(config.intermediate_size, config.hidden_size, config.layer_norm_eps)

    def construct(self, h, mask):
        h = self.attention(h, mask)
        return self.output(self.intermediate(h), h)


class XLMRobertaEncoder(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.layer = nn.CellList([XLMRobertaLayer(config) for _ in range(config.num_hidden_layers)])

    def construct(self, h, mask):
        for block in self.layer:
            h = block(h, mask)
        return h


def padding_mask_bias(attention_mask, dtype):
    """(B, L) 1/0 mask -> additive (B, 1, 1, L) bias in ``dtype``: 0 for kept keys, the dtype's min for padding."""
    neg = FLOAT16_MIN if dtype == ms.float16 else FLOAT32_MIN
    keep = ops.cast(attention_mask, ms.float32)
    bias = (1.0 - keep) * neg
    return ops.cast(bias, dtype).reshape(attention_mask.shape[0], 1, 1, attention_mask.shape[1])


class XLMRobertaModel(nn.Cell):
    """transformers' XLMRobertaModel without the (unused) pooler: returns last_hidden_state (B, L, hidden)."""

    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.embeddings = XLMRobertaEmbeddings(config)
        self.encoder = XLMRobertaEncoder(config)

    def construct(self, input_ids, attention_mask):
        h = self.embeddings(input_ids)
        return self.encoder(h, padding_mask_bias(attention_mask, h.dtype))


class MultilingualCLIP(nn.Cell):
    """diffusers' ``MultilingualCLIP``: (text_embeds (B, numDims), last_hidden_state (B, L, hidden))."""

    def __init__(self, config):
        super().__init__()
        if isinstance(config, dict):
            config = MCLIPConfig.from_dict(config)
        self.config = config
        self.transformer = XLMRobertaModel(config)
        self.LinearTransformation = Linear(config.transformerDimensions, config.numDims)

    def construct(self, input_ids, attention_mask):
        h = self.transformer(input_ids, attention_mask)
        m = ops.cast(attention_mask, h.dtype).reshape(attention_mask.shape[0], attention_mask.shape[1], 1)
        pooled = (h * m).sum(axis=1) / m.sum(axis=1)
        return self.LinearTransformation(pooled), h

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None, variant: Optional[str] = None) -> "MultilingualCLIP":
        """Build from ``component_dir/config.json`` and load ``model.safetensors`` (strict); eval mode."""
        return build_and_load(cls, component_dir, TRANSFORMERS_WEIGHTS, dtype, variant)
