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

from dataclasses import dataclass, fields
from typing import Optional

import mindspore as ms
from mindspore import nn, ops

from .errors import UserError
from .layers import ACTIVATIONS, Embedding, LayerNorm, Linear, activation, attention
from .model_io import TRANSFORMERS_WEIGHTS, build_and_load

FLOAT32_MIN = -3.4028234663852886e38
FLOAT16_MIN = -65504.0


@dataclass
class MCLIPConfig:
    """The fields of diffusers' ``MCLIPConfig`` (an ``XLMRobertaConfig``) that the forward pass uses.

    Missing keys take the class defaults (XLMRobertaConfig / MCLIPConfig), as ``from_pretrained`` would.
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
    def from_dict(cls, cfg: dict) -> "MCLIPConfig":
        cfg = dict(cfg)
        # MCLIPConfig(transformerDimSize=1024, imageDimSize=768, **kwargs): saved configs carry the attribute names
        if "transformerDimensions" not in cfg and "transformerDimSize" in cfg:
            cfg["transformerDimensions"] = cfg["transformerDimSize"]
        if "numDims" not in cfg and "imageDimSize" in cfg:
            cfg["numDims"] = cfg["imageDimSize"]
        kwargs = {f.name: cfg[f.name] for f in fields(cls) if cfg.get(f.name) is not None}
        try:
            out = cls(**kwargs)
            for f in fields(cls):
                value = getattr(out, f.name)
                setattr(out, f.name, float(value) if f.type in ("float", float) else
                        str(value) if f.type in ("str", str) else int(value))
        except (TypeError, ValueError) as exc:
            raise UserError(f"bad MultilingualCLIP config: {exc}") from None
        out.validate(cfg)
        return out

    def validate(self, raw: Optional[dict] = None):
        raw = raw or {}
        if self.hidden_act not in ACTIVATIONS:
            raise UserError(f"MultilingualCLIP config: unsupported hidden_act {self.hidden_act!r} "
                            f"(supported: {', '.join(sorted(ACTIVATIONS))})")
        if self.hidden_size % self.num_attention_heads:
            raise UserError(f"MultilingualCLIP config: hidden_size {self.hidden_size} is not a multiple of "
                            f"num_attention_heads {self.num_attention_heads}")
        if self.transformerDimensions != self.hidden_size:
            raise UserError(f"MultilingualCLIP config: transformerDimensions {self.transformerDimensions} != "
                            f"hidden_size {self.hidden_size}")
        pos_type = raw.get("position_embedding_type", "absolute")
        if pos_type not in (None, "absolute"):
            raise UserError(f"MultilingualCLIP config: position_embedding_type {pos_type!r} is not supported "
                            "(only 'absolute')")
        if raw.get("is_decoder"):
            raise UserError("MultilingualCLIP config: is_decoder=true is not supported")


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


class XLMRobertaSelfAttention(nn.Cell):
    def __init__(self, config: MCLIPConfig):
        super().__init__()
        self.heads = config.num_attention_heads
        self.query = Linear(config.hidden_size, config.hidden_size)
        self.key = Linear(config.hidden_size, config.hidden_size)
        self.value = Linear(config.hidden_size, config.hidden_size)

    def construct(self, h, mask):
        return attention(self.query(h), self.key(h), self.value(h), self.heads, mask)


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
        return build_and_load(lambda config: cls(MCLIPConfig.from_dict(config)), component_dir,
                              TRANSFORMERS_WEIGHTS, dtype, variant)
