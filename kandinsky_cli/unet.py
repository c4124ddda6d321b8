"""Kandinsky 2.1 UNet (diffusers ``UNet2DConditionModel`` in its Kandinsky configuration) on MindSpore.

Built only from the component's ``config.json``; the Cell tree mirrors diffusers' attribute names so the
safetensors keys load by plain name match. Supported block types: ``ResnetDownsampleBlock2D``,
``SimpleCrossAttnDownBlock2D``, ``UNetMidBlock2DSimpleCrossAttn``, ``SimpleCrossAttnUpBlock2D``,
``ResnetUpsampleBlock2D`` (the ``UNetRes`` prefix is accepted, as in diffusers); conditioning by
``encoder_hid_dim_type`` "text_image_proj"/"text_proj"/None and ``addition_embed_type`` "text_image"/None.

The sinusoidal timestep embedding is computed on the host (``layers.timestep_embedding``) and passed in, so
``construct`` holds no numpy and no data-dependent Python control flow (it runs under ``ms.jit``).
"""
from __future__ import annotations

import json
from typing import Optional

import numpy as np
from mindspore import Tensor, nn, ops

from . import layers
from .layers import Conv2d, GroupNorm, LayerNorm, Linear, ResnetBlock2D
from .model_io import DIFFUSERS_WEIGHTS, Config, build_and_load

# diffusers 0.42 ``UNet2DConditionModel.__init__`` defaults: keys missing from config.json take these.
DEFAULTS = dict(
    sample_size=None, in_channels=4, out_channels=4, center_input_sample=False, flip_sin_to_cos=True,
    freq_shift=0,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    mid_block_type="UNetMidBlock2DCrossAttn",
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    only_cross_attention=False, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
    downsample_padding=1, mid_block_scale_factor=1, dropout=0.0, act_fn="silu", norm_num_groups=32,
    norm_eps=1e-5, cross_attention_dim=1280, transformer_layers_per_block=1,
    reverse_transformer_layers_per_block=None, encoder_hid_dim=None, encoder_hid_dim_type=None,
    attention_head_dim=8, num_attention_heads=None, dual_cross_attention=False, use_linear_projection=False,
    class_embed_type=None, addition_embed_type=None, addition_time_embed_dim=None, num_class_embeds=None,
    upcast_attention=False, resnet_time_scale_shift="default", resnet_skip_time_act=False,
    resnet_out_scale_factor=1.0, time_embedding_type="positional", time_embedding_dim=None,
    time_embedding_act_fn=None, timestep_post_act=None, time_cond_proj_dim=None, conv_in_kernel=3,
    conv_out_kernel=3, projection_class_embeddings_input_dim=None, attention_type="default",
    class_embeddings_concat=False, mid_block_only_cross_attention=None, cross_attention_norm=None,
    addition_embed_type_num_heads=64,
)

# Fixed by diffusers, not by the config.
ATTENTION_GROUP_NORM_EPS = 1e-5      # ``Attention(eps=1e-5)`` default: the blocks never pass norm_eps/resnet_eps
NUM_IMAGE_TEXT_EMBEDS = 10           # ``TextImageProjection(num_image_text_embeds=10)`` default
CROSS_NORM_GROUPS = 32               # ``Attention(cross_attention_norm_num_groups=32)`` default

DOWN_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}   # type -> has attention
UP_TYPES = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
MID_TYPES = ("UNetMidBlock2DSimpleCrossAttn", None)

# The optional activations (time_embedding_act_fn, timestep_post_act) by diffusers name.
ACTIVATIONS = {"silu": ops.silu, "swish": ops.silu, "gelu": layers.gelu}


def _activation(name: Optional[str]):
    """An optional activation as a Python function (None stays None)."""
    return None if name is None else ACTIVATIONS[name]


def _strip_unetres(name):
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


# ----------------------------------------------------------------------------------------------------------
# Attention with added (encoder) K/V: diffusers ``Attention`` + ``AttnAddedKVProcessor2_0``
# ----------------------------------------------------------------------------------------------------------

class AddedKVAttention(layers.AttentionCell):
    """Self-attention over the pixels with the encoder tokens' K/V prepended (encoder tokens first).

    out = x + to_out(SDPA(q=to_q(gn(x)), k=[add_k(enc); to_k(gn(x))], v=[add_v(enc); to_v(gn(x))])).
    No output rescale (the processor ignores ``rescale_output_factor``); the residual is always added.
    """

    def __init__(self, channels: int, heads: int, head_dim: int, added_kv_dim: int, groups: int,
                 only_cross_attention: bool = False, cross_attention_norm: Optional[str] = None):
        super().__init__()
        inner = heads * head_dim
        self.heads = heads
        self.only_cross = bool(only_cross_attention)
        self.group_norm = GroupNorm(groups, channels, eps=ATTENTION_GROUP_NORM_EPS)
        self.to_q = Linear(channels, inner)
        if not self.only_cross:
            self.to_k = Linear(channels, inner)
            self.to_v = Linear(channels, inner)
        self.add_k_proj = Linear(added_kv_dim, inner)
        self.add_v_proj = Linear(added_kv_dim, inner)
        self.to_out = nn.CellList([Linear(inner, channels)])
        self.cross_norm = cross_attention_norm
        if cross_attention_norm == "layer_norm":
            # diffusers sizes it by the attention's cross_attention_dim (= the block channels)
            self.norm_cross = LayerNorm(channels)
        elif cross_attention_norm == "group_norm":
            self.norm_cross = GroupNorm(CROSS_NORM_GROUPS, added_kv_dim, eps=1e-5)

    def construct(self, x, enc):
        b, c, h, w = x.shape
        if self.cross_norm == "layer_norm":
            enc = self.norm_cross(enc)
        elif self.cross_norm == "group_norm":
            enc = self.norm_cross(enc.transpose(0, 2, 1)).transpose(0, 2, 1)
        # GroupNorm over (B, C, HW) equals GroupNorm over (B, C, H, W): normalise before flattening.
        hn = self.group_norm(x).reshape(b, c, h * w).transpose(0, 2, 1)
        q = self.to_q(hn)
        k = self.add_k_proj(enc)
        v = self.add_v_proj(enc)
        if not self.only_cross:
            k = ops.cat((k, self.to_k(hn)), 1)
            v = ops.cat((v, self.to_v(hn)), 1)
        out = layers.attention(q, k, v, self.heads, bf16=self.bf16)
        out = self.to_out[0](out)
        return out.transpose(0, 2, 1).reshape(b, c, h, w) + x


# ----------------------------------------------------------------------------------------------------------
# Embeddings
# ----------------------------------------------------------------------------------------------------------

class TimestepEmbedding(nn.Cell):
    """linear_2(act(linear_1(x))) [then post_act]."""

    def __init__(self, in_dim: int, dim: int, act_fn: str = "silu", post_act_fn: Optional[str] = None):
        super().__init__()
        self.linear_1 = Linear(in_dim, dim)
        self.linear_2 = Linear(dim, dim)
        self.act = _activation(act_fn)
        self.post_act = _activation(post_act_fn)

    def construct(self, x):
        x = self.linear_2(self.act(self.linear_1(x)))
        if self.post_act is not None:
            x = self.post_act(x)
        return x


class TextImageProjection(nn.Cell):
    """Encoder tokens: [image_embeds(img) as num_tokens x cross_dim tokens ; text_proj(text hidden states)]."""

    def __init__(self, text_embed_dim: int, image_embed_dim: int, cross_attention_dim: int,
                 num_image_text_embeds: int = NUM_IMAGE_TEXT_EMBEDS):
        super().__init__()
        self.num_tokens = num_image_text_embeds
        self.cross_dim = cross_attention_dim
        self.image_embeds = Linear(image_embed_dim, num_image_text_embeds * cross_attention_dim)
        self.text_proj = Linear(text_embed_dim, cross_attention_dim)

    def construct(self, text_hidden, image_embeds):
        img = self.image_embeds(image_embeds).reshape(image_embeds.shape[0], self.num_tokens, self.cross_dim)
        return ops.cat((img, self.text_proj(text_hidden)), 1)


class TextImageTimeEmbedding(nn.Cell):
    """image_proj(img) + text_norm(text_proj(text)): added to the time embedding (no activation after)."""

    def __init__(self, text_embed_dim: int, image_embed_dim: int, time_embed_dim: int):
        super().__init__()
        self.text_proj = Linear(text_embed_dim, time_embed_dim)
        self.text_norm = LayerNorm(time_embed_dim, eps=1e-5)
        self.image_proj = Linear(image_embed_dim, time_embed_dim)

    def construct(self, text_embeds, image_embeds):
        return self.image_proj(image_embeds) + self.text_norm(self.text_proj(text_embeds))


# ----------------------------------------------------------------------------------------------------------
# Blocks
# ----------------------------------------------------------------------------------------------------------

def _resnet(cin, cout, temb, groups, eps, scale_shift, up=False, down=False):
    return ResnetBlock2D(cin, cout, temb_channels=temb, groups=groups, eps=eps, time_embedding_norm=scale_shift,
                         up=up, down=down)


def _attentions(num_layers, channels, head_dim, cross_dim, groups, only_cross, cross_norm) -> nn.CellList:
    """One added-KV attention per resnet of a SimpleCrossAttn block (heads = channels // head_dim)."""
    heads = channels // head_dim
    return nn.CellList([AddedKVAttention(channels, heads, head_dim, cross_dim, groups, only_cross, cross_norm)
                        for _ in range(num_layers)])


class DownBlock(nn.Cell):
    """ResnetDownsampleBlock2D (``with_attention`` False) / SimpleCrossAttnDownBlock2D (True).

    Returns (h, skips): one skip per resnet(+attention) and one after the downsampler (a down-resnet).
    """

    def __init__(self, num_layers, cin, cout, temb, groups, eps, scale_shift, out_scale, add_downsample,
                 with_attention, head_dim=None, cross_dim=None, only_cross=False, cross_norm=None):
        super().__init__()
        self.num_layers = num_layers
        self.with_attention = with_attention
        self.out_scale = float(out_scale)
        self.rescale = self.out_scale != 1.0
        self.resnets = nn.CellList([_resnet(cin if i == 0 else cout, cout, temb, groups, eps, scale_shift)
                                    for i in range(num_layers)])
        if with_attention:
            self.attentions = _attentions(num_layers, cout, head_dim, cross_dim, groups, only_cross, cross_norm)
        self.add_downsample = add_downsample
        if add_downsample:
            self.downsamplers = nn.CellList([_resnet(cout, cout, temb, groups, eps, scale_shift, down=True)])

    def construct(self, h, temb, enc):
        skips = ()
        for i in range(self.num_layers):
            h = self.resnets[i](h, temb)
            if self.rescale:
                h = h / self.out_scale
            if self.with_attention:
                h = self.attentions[i](h, enc)
            skips = skips + (h,)
        if self.add_downsample:
            h = self.downsamplers[0](h, temb)
            if self.rescale:
                h = h / self.out_scale
            skips = skips + (h,)
        return h, skips


class UpBlock(nn.Cell):
    """ResnetUpsampleBlock2D / SimpleCrossAttnUpBlock2D: each resnet eats cat([h, skip], channels)."""

    def __init__(self, num_layers, cin, cout, prev_out, temb, groups, eps, scale_shift, out_scale, add_upsample,
                 with_attention, head_dim=None, cross_dim=None, only_cross=False, cross_norm=None):
        super().__init__()
        self.num_layers = num_layers
        self.with_attention = with_attention
        self.out_scale = float(out_scale)
        self.rescale = self.out_scale != 1.0
        resnets = []
        for i in range(num_layers):
            skip_ch = cin if i == num_layers - 1 else cout
            res_in = prev_out if i == 0 else cout
            resnets.append(_resnet(res_in + skip_ch, cout, temb, groups, eps, scale_shift))
        self.resnets = nn.CellList(resnets)
        if with_attention:
            self.attentions = _attentions(num_layers, cout, head_dim, cross_dim, groups, only_cross, cross_norm)
        self.add_upsample = add_upsample
        if add_upsample:
            self.upsamplers = nn.CellList([_resnet(cout, cout, temb, groups, eps, scale_shift, up=True)])

    def construct(self, h, skips, temb, enc):
        """``skips``: this block's ``num_layers`` skip tensors, oldest first (consumed from the end)."""
        for i in range(self.num_layers):
            h = ops.cat((h, skips[self.num_layers - 1 - i]), 1)
            h = self.resnets[i](h, temb)
            if self.rescale:
                h = h / self.out_scale
            if self.with_attention:
                h = self.attentions[i](h, enc)
        if self.add_upsample:
            h = self.upsamplers[0](h, temb)
            if self.rescale:
                h = h / self.out_scale
        return h


class MidBlock(nn.Cell):
    """UNetMidBlock2DSimpleCrossAttn: resnets.0 -> (attentions.i -> resnets.i+1) for each layer."""

    def __init__(self, channels, temb, groups, eps, scale_shift, out_scale, head_dim, cross_dim, only_cross,
                 cross_norm, num_layers=1):
        super().__init__()
        heads = channels // head_dim
        self.num_layers = num_layers
        self.out_scale = float(out_scale)
        self.rescale = self.out_scale != 1.0
        self.resnets = nn.CellList([_resnet(channels, channels, temb, groups, eps, scale_shift)
                                    for _ in range(num_layers + 1)])
        self.attentions = nn.CellList([AddedKVAttention(channels, heads, head_dim, cross_dim, groups, only_cross,
                                                        cross_norm) for _ in range(num_layers)])

    def construct(self, h, temb, enc):
        h = self.resnets[0](h, temb)
        if self.rescale:
            h = h / self.out_scale
        for i in range(self.num_layers):
            h = self.attentions[i](h, enc)
            h = self.resnets[i + 1](h, temb)
            if self.rescale:
                h = h / self.out_scale
        return h


# ----------------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------------

def resolve_config(config) -> dict:
    """The effective config: config.json over diffusers' defaults, every value this port reads typed and
    checked (a problem is a ModelError naming the key), per-block values as one entry per block.
    Keys that SimpleCrossAttn blocks never read (dropout, sample_size, ``_class_name``, ...) are dropped."""
    cfg = Config.of(config, "UNet2DConditionModel config")
    _check_unsupported(cfg)
    d = DEFAULTS
    out = dict(down_block_types=_block_types(cfg, "down_block_types", DOWN_TYPES),
               up_block_types=_block_types(cfg, "up_block_types", UP_TYPES),
               block_out_channels=cfg.list("block_out_channels", d["block_out_channels"], of=int, min=1))
    n = len(out["down_block_types"])
    for key in ("up_block_types", "block_out_channels"):
        cfg.require(len(out[key]) == n, key, f"has {len(out[key])} entries for {n} down_block_types (must be equal)")
    out.update(
        layers_per_block=cfg.per_block("layers_per_block", n, d["layers_per_block"], of=int, min=1),
        attention_head_dim=cfg.per_block("attention_head_dim", n, d["attention_head_dim"], of=int, min=1,
                                         optional=True),
        cross_attention_dim=cfg.per_block("cross_attention_dim", n, d["cross_attention_dim"], of=int, min=1),
        only_cross_attention=cfg.per_block("only_cross_attention", n, d["only_cross_attention"], of=bool),
        mid_block_type=cfg.choice("mid_block_type", MID_TYPES, d["mid_block_type"]),
        mid_block_only_cross_attention=cfg.bool("mid_block_only_cross_attention", None),
        time_embedding_dim=cfg.int("time_embedding_dim", None, min=1),
        encoder_hid_dim=cfg.int("encoder_hid_dim", None, min=1),
        encoder_hid_dim_type=cfg.choice("encoder_hid_dim_type", (None, "text_proj", "text_image_proj"), None),
        addition_embed_type=cfg.choice("addition_embed_type", (None, "text_image"), None),
        act_fn=cfg.choice("act_fn", ("silu", "swish"), d["act_fn"]),  # the resnets are SiLU-only
        timestep_post_act=cfg.choice("timestep_post_act", (None, *ACTIVATIONS), None),
        time_embedding_act_fn=cfg.choice("time_embedding_act_fn", (None, *ACTIVATIONS), None),
        resnet_time_scale_shift=cfg.choice("resnet_time_scale_shift", ("default", "scale_shift"),
                                           d["resnet_time_scale_shift"]),
        cross_attention_norm=cfg.choice("cross_attention_norm", (None, "layer_norm", "group_norm"), None),
        **{key: cfg.int(key, d[key], min=1)
           for key in ("in_channels", "out_channels", "norm_num_groups", "conv_in_kernel", "conv_out_kernel")},
        **{key: cfg.bool(key, d[key]) for key in ("center_input_sample", "flip_sin_to_cos")},
        norm_eps=cfg.float("norm_eps", d["norm_eps"], min=0),
        **{key: cfg.float(key, d[key]) for key in ("freq_shift", "mid_block_scale_factor", "resnet_out_scale_factor")})
    _resolve_implied(cfg, out)
    _check_consistency(cfg, out)
    return out


def image_embed_dim(config) -> int:
    """The width of the image embeddings a UNet with this config.json takes (its cross_attention_dim)."""
    return resolve_config(config)["cross_attention_dim"][0]


def _block_types(cfg: Config, key: str, known: dict) -> list:
    """A list of block type names, the ``UNetRes`` prefix stripped as diffusers does."""
    types = [_strip_unetres(t) for t in cfg.list(key, DEFAULTS[key], of=str)]
    for i, t in enumerate(types):
        cfg.require(t in known, f"{key}[{i}]", f"must be one of {', '.join(known)}, got {json.dumps(t)}")
    return types


def _check_unsupported(cfg: Config) -> None:
    """Options whose diffusers code paths this port does not implement: only their default is accepted."""
    cfg.choice("num_attention_heads", (None,), None)   # diffusers rejects it too; attention_head_dim is used
    cfg.choice("time_embedding_type", ("positional",), "positional")
    for key in ("class_embed_type", "num_class_embeds", "time_cond_proj_dim"):
        cfg.choice(key, (None,), None)
    cfg.choice("resnet_skip_time_act", (False,), False)
    cfg.choice("attention_type", ("default",), "default")


def _resolve_implied(cfg: Config, out: dict) -> None:
    """The values diffusers derives from others when they are not set."""
    only_cross = cfg.value("only_cross_attention", DEFAULTS["only_cross_attention"])
    if out["mid_block_only_cross_attention"] is None:
        out["mid_block_only_cross_attention"] = only_cross if isinstance(only_cross, bool) else False
    if out["encoder_hid_dim_type"] is None and out["encoder_hid_dim"] is not None:
        out["encoder_hid_dim_type"] = "text_proj"


def _check_consistency(cfg: Config, out: dict) -> None:
    """What the values must agree on for the network to be built (before any weights are read)."""
    boc, groups = out["block_out_channels"], out["norm_num_groups"]
    for i, c in enumerate(boc):
        cfg.require(c % groups == 0, "norm_num_groups", f"{groups} does not divide block_out_channels[{i}] = {c}")
    if out["cross_attention_norm"] == "group_norm":
        for i, c in enumerate(out["cross_attention_dim"]):
            cfg.require(c % CROSS_NORM_GROUPS == 0, "cross_attention_dim",
                        f"cross_attention_norm 'group_norm' needs multiples of {CROSS_NORM_GROUPS}, got {c}")
    if out["encoder_hid_dim_type"] is not None:
        cfg.require(out["encoder_hid_dim"] is not None, "encoder_hid_dim",
                    f"is needed by encoder_hid_dim_type {out['encoder_hid_dim_type']!r}")
    if out["encoder_hid_dim_type"] is not None or out["addition_embed_type"] is not None:
        cfg.require(not isinstance(cfg.value("cross_attention_dim", None), (list, tuple)), "cross_attention_dim",
                    "must be a single integer with encoder_hid_dim_type / addition_embed_type (the image "
                    "embeddings have one width)")
    for key in ("mid_block_scale_factor", "resnet_out_scale_factor"):
        cfg.require(out[key] != 0, key, "must not be 0 (hidden states are divided by it)")
    heads = out["attention_head_dim"]
    attention = [(boc[i], heads[i]) for i, t in enumerate(out["down_block_types"]) if DOWN_TYPES[t]]
    # diffusers quirk kept: the up blocks index attention_head_dim by i, not reversed
    attention += [(boc[::-1][i], heads[i]) for i, t in enumerate(out["up_block_types"]) if UP_TYPES[t]]
    if out["mid_block_type"] is not None:
        cfg.require(heads[-1] is not None, "attention_head_dim", "the mid block needs a value (got null)")
        attention.append((boc[-1], heads[-1]))
    for channels, head_dim in attention:
        cfg.require(head_dim is None or head_dim <= channels, "attention_head_dim",
                    f"{head_dim} is wider than an attention block's {channels} channels (no head would be left)")


class UNet2DConditionModel(nn.Cell):
    """Kandinsky 2.1 UNet. ``construct(sample, temb_input, encoder_hidden_states, text_embeds, image_embeds)``.

    - ``sample`` (B, in_channels, H, W), H and W divisible by 2**(len(block_out_channels)-1);
    - ``temb_input`` (B, block_out_channels[0]): the host sinusoid of the timestep (see ``time_proj``);
    - ``encoder_hidden_states`` (B, L, encoder_hid_dim), ``text_embeds`` / ``image_embeds`` (B, E).
    Returns (B, out_channels, H, W).
    """

    def __init__(self, config):
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        boc = cfg["block_out_channels"]
        n = len(boc)
        layers_per_block, head_dims = cfg["layers_per_block"], cfg["attention_head_dim"]
        cross_dims, only_cross = cfg["cross_attention_dim"], cfg["only_cross_attention"]
        groups, eps, scale_shift = cfg["norm_num_groups"], cfg["norm_eps"], cfg["resnet_time_scale_shift"]
        res_scale, cross_norm = cfg["resnet_out_scale_factor"], cfg["cross_attention_norm"]

        self.block_out_channels = tuple(boc)
        self.in_channels = cfg["in_channels"]
        self.out_channels = cfg["out_channels"]
        self.flip_sin_to_cos = cfg["flip_sin_to_cos"]
        self.freq_shift = cfg["freq_shift"]
        self.center_input_sample = cfg["center_input_sample"]

        # input and time embedding
        k_in = cfg["conv_in_kernel"]
        self.conv_in = Conv2d(self.in_channels, boc[0], k_in, padding=(k_in - 1) // 2)
        time_embed_dim = cfg["time_embedding_dim"] or boc[0] * 4
        self.time_embed_dim = time_embed_dim
        self.time_embedding = TimestepEmbedding(boc[0], time_embed_dim, cfg["act_fn"], cfg["timestep_post_act"])
        self.time_embed_act = _activation(cfg["time_embedding_act_fn"])

        # encoder hidden states projection and added (text/image) embedding: one cross_attention_dim
        self.image_embed_dim = cd = cross_dims[0]
        self.hid_type = cfg["encoder_hid_dim_type"]
        if self.hid_type == "text_image_proj":
            self.encoder_hid_proj = TextImageProjection(cfg["encoder_hid_dim"], cd, cd)
        elif self.hid_type == "text_proj":
            self.encoder_hid_proj = Linear(cfg["encoder_hid_dim"], cd)
        self.add_type = cfg["addition_embed_type"]
        if self.add_type == "text_image":
            self.add_embedding = TextImageTimeEmbedding(cd, cd, time_embed_dim)

        # down
        down = []
        out_ch = boc[0]
        for i, t in enumerate(cfg["down_block_types"]):
            in_ch, out_ch = out_ch, boc[i]
            hd = head_dims[i] if head_dims[i] is not None else out_ch
            down.append(DownBlock(layers_per_block[i], in_ch, out_ch, time_embed_dim, groups, eps, scale_shift,
                                  res_scale, i < n - 1, DOWN_TYPES[t], hd, cross_dims[i], only_cross[i], cross_norm))
        self.down_blocks = nn.CellList(down)

        # mid
        self.has_mid = cfg["mid_block_type"] is not None
        if self.has_mid:
            self.mid_block = MidBlock(boc[-1], time_embed_dim, groups, eps, scale_shift, cfg["mid_block_scale_factor"],
                                      head_dims[-1], cross_dims[-1], cfg["mid_block_only_cross_attention"], cross_norm)

        # up (diffusers quirk kept: attention_head_dim is indexed by i, *not* reversed, for the up blocks)
        rev_ch = list(reversed(boc))
        rev_layers = list(reversed(layers_per_block))
        rev_cross = list(reversed(cross_dims))
        rev_only_cross = list(reversed(only_cross))
        up = []
        out_ch = rev_ch[0]
        for i, t in enumerate(cfg["up_block_types"]):
            prev_out, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            hd = head_dims[i] if head_dims[i] is not None else out_ch
            up.append(UpBlock(rev_layers[i] + 1, in_ch, out_ch, prev_out, time_embed_dim, groups, eps, scale_shift,
                              res_scale, i < n - 1, UP_TYPES[t], hd, rev_cross[i], rev_only_cross[i], cross_norm))
        self.up_blocks = nn.CellList(up)
        self.skips_per_up = tuple(x + 1 for x in rev_layers)

        # out
        self.conv_norm_out = GroupNorm(groups, boc[0], eps=eps)
        k_out = cfg["conv_out_kernel"]
        self.conv_out = Conv2d(boc[0], self.out_channels, k_out, padding=(k_out - 1) // 2)

    # -- forward -------------------------------------------------------------------------------------------

    def construct(self, sample, temb_input, encoder_hidden_states, text_embeds, image_embeds):
        if self.center_input_sample:
            sample = 2 * sample - 1.0
        emb = self.time_embedding(temb_input.astype(sample.dtype))
        if self.add_type == "text_image":
            emb = emb + self.add_embedding(text_embeds, image_embeds)
        if self.time_embed_act is not None:
            emb = self.time_embed_act(emb)

        enc = encoder_hidden_states
        if self.hid_type == "text_image_proj":
            enc = self.encoder_hid_proj(encoder_hidden_states, image_embeds)
        elif self.hid_type == "text_proj":
            enc = self.encoder_hid_proj(encoder_hidden_states)

        h = self.conv_in(sample)
        skips = (h,)
        for block in self.down_blocks:
            h, res = block(h, emb, enc)
            skips = skips + res
        if self.has_mid:
            h = self.mid_block(h, emb, enc)
        end = len(skips)
        for i in range(len(self.skips_per_up)):
            start = end - self.skips_per_up[i]
            h = self.up_blocks[i](h, skips[start:end], emb, enc)
            end = start
        h = ops.silu(self.conv_norm_out(h))
        return self.conv_out(h)

    # -- host helpers --------------------------------------------------------------------------------------

    @property
    def dtype(self):
        return self.conv_in.bias.dtype    # the compute dtype (a bf16 network keeps float32 biases)

    def time_proj(self, timesteps) -> Tensor:
        """The sinusoidal embedding (B, block_out_channels[0]) of ``timesteps`` (scalar or (B,)), fp32 -> dtype."""
        emb = layers.timestep_embedding(np.asarray(timesteps).reshape(-1), self.block_out_channels[0],
                                        self.flip_sin_to_cos, self.freq_shift)
        return Tensor(emb).astype(self.dtype)

    def predict(self, sample, t, encoder_hidden_states, text_embeds, image_embeds) -> Tensor:
        """One UNet call at integer timestep ``t`` (broadcast to the batch). Accepts numpy arrays or Tensors."""
        def as_tensor(x):
            return x.astype(self.dtype) if isinstance(x, Tensor) else Tensor(np.asarray(x)).astype(self.dtype)

        sample = as_tensor(sample)
        temb = self.time_proj(np.full(sample.shape[0], t))
        return self(sample, temb, as_tensor(encoder_hidden_states), as_tensor(text_embeds), as_tensor(image_embeds))

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None) -> "UNet2DConditionModel":
        """Build from ``component_dir/config.json``, load ``diffusion_pytorch_model`` safetensors, eval mode."""
        return build_and_load(cls, component_dir, DIFFUSERS_WEIGHTS, dtype)


def count_parameters(cell: nn.Cell) -> int:
    return int(sum(int(np.prod(p.shape)) for p in cell.get_parameters()))
