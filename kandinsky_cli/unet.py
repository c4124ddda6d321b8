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

from typing import Optional

import numpy as np
from mindspore import Tensor, nn, ops

from . import layers
from .errors import UserError
from .layers import Conv2d, GroupNorm, LayerNorm, Linear, ResnetBlock2D
from .model_io import DIFFUSERS_WEIGHTS, build_and_load


class UNetConfigError(UserError, ValueError):
    """A UNet config.json value this port does not support (or that diffusers itself rejects)."""


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

DOWN_TYPES = {"ResnetDownsampleBlock2D": False, "SimpleCrossAttnDownBlock2D": True}
UP_TYPES = {"ResnetUpsampleBlock2D": False, "SimpleCrossAttnUpBlock2D": True}
MID_TYPES = ("UNetMidBlock2DSimpleCrossAttn", None)


def _silu_only(name: Optional[str], what: str):
    if name not in ("silu", "swish"):
        raise UNetConfigError(f"unet config: {what}={name!r} is not supported (the resnets use SiLU)")


def _optional_act(name: Optional[str], what: str):
    """An optional activation as a Python function (None stays None)."""
    if name is None:
        return None
    acts = {"silu": ops.silu, "swish": ops.silu, "gelu": layers.gelu}
    if name not in acts:
        raise UNetConfigError(f"unet config: {what}={name!r} is not supported (use silu, swish or gelu)")
    return acts[name]


def _per_block(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise UNetConfigError(f"unet config: {what} has {len(value)} entries for {n} down blocks")
        return list(value)
    return [value] * n


def _strip_unetres(name):
    return name[7:] if isinstance(name, str) and name.startswith("UNetRes") else name


# ----------------------------------------------------------------------------------------------------------
# Attention with added (encoder) K/V: diffusers ``Attention`` + ``AttnAddedKVProcessor2_0``
# ----------------------------------------------------------------------------------------------------------

class AddedKVAttention(nn.Cell):
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
        if cross_attention_norm not in (None, "layer_norm", "group_norm"):
            raise UNetConfigError(f"unet config: unknown cross_attention_norm {cross_attention_norm!r}")
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
        out = layers.attention(q, k, v, self.heads)
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
        self.act = _optional_act(act_fn, "act_fn")
        self.post_act = _optional_act(post_act_fn, "timestep_post_act")

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
    if heads < 1:
        raise UNetConfigError(f"unet config: {channels} channels < attention_head_dim {head_dim}")
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
        if heads < 1:
            raise UNetConfigError(f"unet config: {channels} channels < attention_head_dim {head_dim}")
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

def resolve_config(config: dict) -> dict:
    """config.json values over diffusers' defaults; unknown keys (and ``_class_name`` etc.) are dropped."""
    cfg = dict(DEFAULTS)
    cfg.update({k: v for k, v in config.items() if k in DEFAULTS})
    return cfg


class UNet2DConditionModel(nn.Cell):
    """Kandinsky 2.1 UNet. ``construct(sample, temb_input, encoder_hidden_states, text_embeds, image_embeds)``.

    - ``sample`` (B, in_channels, H, W), H and W divisible by 2**(len(block_out_channels)-1);
    - ``temb_input`` (B, block_out_channels[0]): the host sinusoid of the timestep (see ``time_proj``);
    - ``encoder_hidden_states`` (B, L, encoder_hid_dim), ``text_embeds`` / ``image_embeds`` (B, E).
    Returns (B, out_channels, H, W).
    """

    def __init__(self, config: dict):
        super().__init__()
        cfg = resolve_config(config)
        self.config = cfg
        self._check(cfg)

        boc = [int(c) for c in cfg["block_out_channels"]]
        down_types = [_strip_unetres(t) for t in cfg["down_block_types"]]
        up_types = [_strip_unetres(t) for t in cfg["up_block_types"]]
        n = len(down_types)
        if len(up_types) != n or len(boc) != n:
            raise UNetConfigError(f"unet config: {len(down_types)} down_block_types, {len(up_types)} "
                                  f"up_block_types and {len(boc)} block_out_channels must be equal")
        layers_per_block = [int(x) for x in _per_block(cfg["layers_per_block"], n, "layers_per_block")]
        head_dims = _per_block(cfg["attention_head_dim"], n, "attention_head_dim")
        cross_dims = _per_block(cfg["cross_attention_dim"], n, "cross_attention_dim")
        only_cross = cfg["only_cross_attention"]
        mid_only_cross = cfg["mid_block_only_cross_attention"]
        if isinstance(only_cross, bool):
            if mid_only_cross is None:
                mid_only_cross = only_cross
            only_cross = [only_cross] * n
        only_cross = _per_block(only_cross, n, "only_cross_attention")
        if mid_only_cross is None:
            mid_only_cross = False

        groups = int(cfg["norm_num_groups"])
        eps = float(cfg["norm_eps"])
        scale_shift = cfg["resnet_time_scale_shift"]
        if scale_shift not in ("default", "scale_shift"):
            raise UNetConfigError(f"unet config: resnet_time_scale_shift={scale_shift!r} is not supported")
        res_scale = cfg["resnet_out_scale_factor"]
        cross_norm = cfg["cross_attention_norm"]

        self.block_out_channels = tuple(boc)
        self.in_channels = int(cfg["in_channels"])
        self.out_channels = int(cfg["out_channels"])
        self.flip_sin_to_cos = bool(cfg["flip_sin_to_cos"])
        self.freq_shift = float(cfg["freq_shift"])
        self.center_input_sample = bool(cfg["center_input_sample"])

        # input and time embedding
        k_in = int(cfg["conv_in_kernel"])
        self.conv_in = Conv2d(self.in_channels, boc[0], k_in, padding=(k_in - 1) // 2)
        time_embed_dim = int(cfg["time_embedding_dim"] or boc[0] * 4)
        self.time_embed_dim = time_embed_dim
        self.time_embedding = TimestepEmbedding(boc[0], time_embed_dim, cfg["act_fn"], cfg["timestep_post_act"])
        self.time_embed_act = _optional_act(cfg["time_embedding_act_fn"], "time_embedding_act_fn")

        # encoder hidden states projection
        hid_type = cfg["encoder_hid_dim_type"]
        hid_dim = cfg["encoder_hid_dim"]
        if hid_type is None and hid_dim is not None:
            hid_type = "text_proj"
        if hid_type is not None and hid_dim is None:
            raise UNetConfigError(f"unet config: encoder_hid_dim_type={hid_type!r} needs encoder_hid_dim")
        self.hid_type = hid_type
        if hid_type == "text_image_proj":
            cd = self._single_cross_dim(cfg, "encoder_hid_dim_type 'text_image_proj'")
            self.encoder_hid_proj = TextImageProjection(int(hid_dim), cd, cd)
        elif hid_type == "text_proj":
            cd = self._single_cross_dim(cfg, "encoder_hid_dim_type 'text_proj'")
            self.encoder_hid_proj = Linear(int(hid_dim), cd)
        elif hid_type is not None:
            raise UNetConfigError(f"unet config: encoder_hid_dim_type={hid_type!r} is not supported "
                                  "(text_image_proj, text_proj or null)")

        # added (text/image) embedding
        add_type = cfg["addition_embed_type"]
        self.add_type = add_type
        if add_type == "text_image":
            cd = self._single_cross_dim(cfg, "addition_embed_type 'text_image'")
            self.add_embedding = TextImageTimeEmbedding(cd, cd, time_embed_dim)
        elif add_type is not None:
            raise UNetConfigError(f"unet config: addition_embed_type={add_type!r} is not supported (text_image or null)")

        # down
        down = []
        out_ch = boc[0]
        for i, t in enumerate(down_types):
            if t not in DOWN_TYPES:
                raise UNetConfigError(f"unet config: down block type {t!r} is not supported "
                                      f"({', '.join(DOWN_TYPES)})")
            in_ch, out_ch = out_ch, boc[i]
            hd = head_dims[i] if head_dims[i] is not None else out_ch
            down.append(DownBlock(layers_per_block[i], in_ch, out_ch, time_embed_dim, groups, eps, scale_shift,
                                  res_scale, i < n - 1, DOWN_TYPES[t], int(hd), int(cross_dims[i]),
                                  bool(only_cross[i]), cross_norm))
        self.down_blocks = nn.CellList(down)

        # mid
        mid_type = cfg["mid_block_type"]
        if mid_type not in MID_TYPES:
            raise UNetConfigError(f"unet config: mid_block_type {mid_type!r} is not supported "
                                  "(UNetMidBlock2DSimpleCrossAttn or null)")
        self.has_mid = mid_type is not None
        if self.has_mid:
            self.mid_block = MidBlock(boc[-1], time_embed_dim, groups, eps, scale_shift,
                                      cfg["mid_block_scale_factor"], int(head_dims[-1]), int(cross_dims[-1]),
                                      bool(mid_only_cross), cross_norm)

        # up (diffusers quirk kept: attention_head_dim is indexed by i, *not* reversed, for the up blocks)
        rev_ch = list(reversed(boc))
        rev_layers = list(reversed(layers_per_block))
        rev_cross = list(reversed(cross_dims))
        rev_only_cross = list(reversed(only_cross))
        up = []
        skips_per_up = []
        out_ch = rev_ch[0]
        for i, t in enumerate(up_types):
            if t not in UP_TYPES:
                raise UNetConfigError(f"unet config: up block type {t!r} is not supported ({', '.join(UP_TYPES)})")
            prev_out, out_ch = out_ch, rev_ch[i]
            in_ch = rev_ch[min(i + 1, n - 1)]
            hd = head_dims[i] if head_dims[i] is not None else out_ch
            up.append(UpBlock(rev_layers[i] + 1, in_ch, out_ch, prev_out, time_embed_dim, groups, eps, scale_shift,
                              res_scale, i < n - 1, UP_TYPES[t], int(hd), int(rev_cross[i]),
                              bool(rev_only_cross[i]), cross_norm))
            skips_per_up.append(rev_layers[i] + 1)
        self.up_blocks = nn.CellList(up)
        self.skips_per_up = tuple(skips_per_up)
        n_skips = 1 + sum(layers_per_block) + (n - 1)
        if n_skips != sum(skips_per_up):
            raise UNetConfigError(f"unet config: down blocks give {n_skips} skips, up blocks use {sum(skips_per_up)}")

        # out
        self.conv_norm_out = GroupNorm(groups, boc[0], eps=eps)
        k_out = int(cfg["conv_out_kernel"])
        self.conv_out = Conv2d(boc[0], self.out_channels, k_out, padding=(k_out - 1) // 2)

    # -- config checks ---------------------------------------------------------------------------------------

    @staticmethod
    def _single_cross_dim(cfg, what) -> int:
        cd = cfg["cross_attention_dim"]
        if isinstance(cd, (list, tuple)):
            raise UNetConfigError(f"unet config: {what} needs a single int cross_attention_dim, got {cd}")
        return int(cd)

    @staticmethod
    def _check(cfg):
        def unsupported(key, why=""):
            raise UNetConfigError(f"unet config: {key}={cfg[key]!r} is not supported{why}")

        if cfg["num_attention_heads"] is not None:
            unsupported("num_attention_heads", " (diffusers rejects it too; use attention_head_dim)")
        if cfg["time_embedding_type"] != "positional":
            unsupported("time_embedding_type")
        if cfg["class_embed_type"] is not None or cfg["num_class_embeds"] is not None:
            unsupported("class_embed_type" if cfg["class_embed_type"] is not None else "num_class_embeds")
        if cfg["time_cond_proj_dim"] is not None:
            unsupported("time_cond_proj_dim")
        if cfg["resnet_skip_time_act"]:
            unsupported("resnet_skip_time_act")
        if cfg["norm_num_groups"] is None:
            unsupported("norm_num_groups")
        if cfg["attention_type"] != "default":
            unsupported("attention_type")
        _silu_only(cfg["act_fn"], "act_fn")

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
        return self.conv_in.weight.dtype

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
