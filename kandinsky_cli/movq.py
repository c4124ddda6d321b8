"""MoVQ (diffusers ``VQModel``) for Kandinsky 2.1: encoder, decoder with spatial norm, no quantisation at inference.

The Cell tree mirrors diffusers' attribute names, so parameter names equal the checkpoint keys:
``encoder.*``, ``quant_conv``, ``quantize.embedding.weight``, ``post_quant_conv``, ``decoder.*``.
Everything is built from the component's ``config.json`` (keys missing there take diffusers' VQModel defaults).

- ``encode(x)``: ``quant_conv(encoder(x))`` (no codebook lookup, as the inpaint pipeline uses it).
- ``decode(z)``: ``decoder(post_quant_conv(z), zq=z)`` (``force_not_quantize=True``); with ``norm_type="spatial"``
  the decoder's norms are SpatialNorm conditioned on ``z`` itself (the latent *before* ``post_quant_conv``).
"""
from __future__ import annotations

import inspect
from typing import Optional, Sequence

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from .layers import (AttentionCell, Conv2d, Embedding, GroupNorm, Linear, ResnetBlock2D, SpatialNorm, attention,
                     upsample_nearest2x)
from .model_io import DIFFUSERS_WEIGHTS, Config, build_and_load

DOWN_BLOCK_TYPES = ("DownEncoderBlock2D", "AttnDownEncoderBlock2D")
UP_BLOCK_TYPES = ("UpDecoderBlock2D", "AttnUpDecoderBlock2D")
NORM_TYPES = ("group", "spatial")
RESNET_EPS = 1e-6  # diffusers' Encoder/Decoder pass resnet_eps=1e-6 everywhere (resnets, attention norms, out norm)
SPATIAL_GROUPS = 32  # SpatialNorm's GroupNorm groups, hard-coded in diffusers (and in layers.SpatialNorm)


def _silu(x):
    return ms.ops.silu(x)


class VQAttention(AttentionCell):
    """diffusers ``Attention`` as built for VAE blocks (``_from_deprecated_attn_block``): one head of ``channels``.

    residual = x; h = group_norm(x) (encoder / "group" decoder) or spatial_norm(x, zq) (MoVQ decoder);
    h -> (B, HW, C); out = to_out.0(SDPA(to_q h, to_k h, to_v h)) -> (B, C, H, W); out + residual
    (``residual_connection=True``, ``rescale_output_factor=1``).
    """

    def __init__(self, channels: int, norm_groups: int = 32, eps: float = RESNET_EPS,
                 spatial_norm_channels: Optional[int] = None):
        super().__init__()
        self.spatial = spatial_norm_channels is not None
        if self.spatial:
            self.spatial_norm = SpatialNorm(channels, spatial_norm_channels)
        else:
            self.group_norm = GroupNorm(norm_groups, channels, eps=eps)
        self.to_q = Linear(channels, channels)
        self.to_k = Linear(channels, channels)
        self.to_v = Linear(channels, channels)
        self.to_out = nn.CellList([Linear(channels, channels)])

    def construct(self, x, zq=None):
        residual = x
        h = self.spatial_norm(x, zq) if self.spatial else self.group_norm(x)
        b, c, hh, ww = h.shape
        h = h.reshape(b, c, hh * ww).transpose(0, 2, 1)
        out = attention(self.to_q(h), self.to_k(h), self.to_v(h), 1, bf16=self.bf16)
        out = self.to_out[0](out)
        out = out.transpose(0, 2, 1).reshape(b, c, hh, ww)
        return out + residual


class Downsample(nn.Cell):
    """diffusers ``Downsample2D(use_conv=True, padding=0)``: zero-pad right/bottom by 1, 3x3 stride-2 valid conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, stride=2, padding=(0, 1, 0, 1))

    def construct(self, x):
        return self.conv(x)


class Upsample(nn.Cell):
    """diffusers ``Upsample2D(use_conv=True)``: nearest x2, then a 3x3 conv with padding 1."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = Conv2d(channels, channels, 3, padding=1)

    def construct(self, x):
        return self.conv(upsample_nearest2x(x))


class EncoderBlock(nn.Cell):
    """``DownEncoderBlock2D`` / ``AttnDownEncoderBlock2D``: resnets (each followed by attention if ``attn``),
    then an optional downsampler."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, attn: bool,
                 add_downsample: bool):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups=groups, eps=RESNET_EPS)
            for i in range(num_layers)])
        self.has_attn = attn
        if attn:
            self.attentions = nn.CellList([VQAttention(out_channels, groups) for _ in range(num_layers)])
        self.has_downsample = add_downsample
        if add_downsample:
            self.downsamplers = nn.CellList([Downsample(out_channels)])

    def construct(self, x):
        for i in range(len(self.resnets)):
            x = self.resnets[i](x)
            if self.has_attn:
                x = self.attentions[i](x)
        if self.has_downsample:
            x = self.downsamplers[0](x)
        return x


class DecoderBlock(nn.Cell):
    """``UpDecoderBlock2D`` / ``AttnUpDecoderBlock2D``: resnets (each followed by attention if ``attn``),
    then an optional upsampler; spatial norms conditioned on ``zq`` when ``spatial_norm_channels`` is set."""

    def __init__(self, in_channels: int, out_channels: int, num_layers: int, groups: int, attn: bool,
                 add_upsample: bool, spatial_norm_channels: Optional[int]):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(in_channels if i == 0 else out_channels, out_channels, None, groups=groups, eps=RESNET_EPS,
                          spatial_norm_channels=spatial_norm_channels)
            for i in range(num_layers)])
        self.has_attn = attn
        if attn:
            self.attentions = nn.CellList([VQAttention(out_channels, groups, spatial_norm_channels=spatial_norm_channels)
                                           for _ in range(num_layers)])
        self.has_upsample = add_upsample
        if add_upsample:
            self.upsamplers = nn.CellList([Upsample(out_channels)])

    def construct(self, x, zq=None):
        for i in range(len(self.resnets)):
            x = self.resnets[i](x, None, zq)
            if self.has_attn:
                x = self.attentions[i](x, zq)
        if self.has_upsample:
            x = self.upsamplers[0](x)
        return x


class MidBlock(nn.Cell):
    """``UNetMidBlock2D`` (one layer): resnets.0 -> [attentions.0] -> resnets.1."""

    def __init__(self, channels: int, groups: int, add_attention: bool, spatial_norm_channels: Optional[int]):
        super().__init__()
        self.resnets = nn.CellList([
            ResnetBlock2D(channels, channels, None, groups=groups, eps=RESNET_EPS,
                          spatial_norm_channels=spatial_norm_channels)
            for _ in range(2)])
        self.add_attention = add_attention
        if add_attention:
            self.attentions = nn.CellList([VQAttention(channels, groups, spatial_norm_channels=spatial_norm_channels)])

    def construct(self, x, zq=None):
        x = self.resnets[0](x, None, zq)
        if self.add_attention:
            x = self.attentions[0](x, zq)
        return self.resnets[1](x, None, zq)


class Encoder(nn.Cell):
    """diffusers ``Encoder`` with ``double_z=False`` (as VQModel builds it): image -> (B, latent_channels, h, w)."""

    def __init__(self, in_channels: int, out_channels: int, down_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int,
                 mid_block_add_attention: bool = True):
        super().__init__()
        self.conv_in = Conv2d(in_channels, block_out_channels[0], 3, padding=1)
        blocks = []
        out_ch = block_out_channels[0]
        for i, block_type in enumerate(down_block_types):
            in_ch, out_ch = out_ch, block_out_channels[i]
            blocks.append(EncoderBlock(in_ch, out_ch, layers_per_block, norm_num_groups,
                                       attn=block_type == "AttnDownEncoderBlock2D",
                                       add_downsample=i != len(block_out_channels) - 1))
        self.down_blocks = nn.CellList(blocks)
        self.mid_block = MidBlock(block_out_channels[-1], norm_num_groups, mid_block_add_attention, None)
        self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[-1], eps=RESNET_EPS)
        self.conv_out = Conv2d(block_out_channels[-1], out_channels, 3, padding=1)

    def construct(self, x):
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        return self.conv_out(_silu(self.conv_norm_out(x)))


class Decoder(nn.Cell):
    """diffusers ``Decoder``: latents -> image; ``norm_type="spatial"`` is the MoVQ decoder (condition ``zq``)."""

    # --dtype bfloat16 leaves the decoder in float32: on the real-size random MoVQ its bf16 output at 768x768 was
    # 6.7e-2 rel-L2 from float32 (2.5e-2 at 256), above the 5e-2 allowed per network, for ~4 s of one call.
    keep_float32 = True

    def __init__(self, in_channels: int, out_channels: int, up_block_types: Sequence[str],
                 block_out_channels: Sequence[int], layers_per_block: int, norm_num_groups: int,
                 norm_type: str = "group", mid_block_add_attention: bool = True):
        super().__init__()
        self.spatial = norm_type == "spatial"
        zq_channels = in_channels if self.spatial else None
        self.conv_in = Conv2d(in_channels, block_out_channels[-1], 3, padding=1)
        self.mid_block = MidBlock(block_out_channels[-1], norm_num_groups, mid_block_add_attention, zq_channels)
        reversed_channels = list(reversed(block_out_channels))
        blocks = []
        out_ch = reversed_channels[0]
        for i, block_type in enumerate(up_block_types):
            in_ch, out_ch = out_ch, reversed_channels[i]
            blocks.append(DecoderBlock(in_ch, out_ch, layers_per_block + 1, norm_num_groups,
                                       attn=block_type == "AttnUpDecoderBlock2D",
                                       add_upsample=i != len(block_out_channels) - 1,
                                       spatial_norm_channels=zq_channels))
        self.up_blocks = nn.CellList(blocks)
        if self.spatial:
            self.conv_norm_out = SpatialNorm(block_out_channels[0], zq_channels)
        else:
            self.conv_norm_out = GroupNorm(norm_num_groups, block_out_channels[0], eps=RESNET_EPS)
        self.conv_out = Conv2d(block_out_channels[0], out_channels, 3, padding=1)

    def construct(self, x, zq=None):
        x = self.conv_in(x)
        x = self.mid_block(x, zq)
        for block in self.up_blocks:
            x = block(x, zq)
        x = self.conv_norm_out(x, zq) if self.spatial else self.conv_norm_out(x)
        return self.conv_out(_silu(x))


class VectorQuantizer(nn.Cell):
    """Holds the codebook (``quantize.embedding.weight``) so checkpoints load strictly; unused at inference
    (the pipeline decodes with ``force_not_quantize=True``)."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.embedding = Embedding(num_embeddings, dim)

    def construct(self, ids):
        return self.embedding(ids)


class VQModel(nn.Cell):
    """diffusers ``VQModel`` (MoVQ in Kandinsky 2.1). Keyword arguments and defaults follow diffusers 0.42;
    build it with ``from_config``, which checks them (the constructor takes them as given)."""

    def __init__(self, in_channels: int = 3, out_channels: int = 3,
                 down_block_types: Sequence[str] = ("DownEncoderBlock2D",),
                 up_block_types: Sequence[str] = ("UpDecoderBlock2D",),
                 block_out_channels: Sequence[int] = (64,), layers_per_block: int = 1, act_fn: str = "silu",
                 latent_channels: int = 3, sample_size: int = 32, num_vq_embeddings: int = 256,
                 norm_num_groups: int = 32, vq_embed_dim: Optional[int] = None, scaling_factor: float = 0.18215,
                 norm_type: str = "group", mid_block_add_attention: bool = True, lookup_from_codebook: bool = False,
                 force_upcast: bool = False):
        super().__init__()
        block_out_channels = [int(c) for c in block_out_channels]
        down_block_types = list(down_block_types)
        up_block_types = list(up_block_types)
        vq_embed_dim = latent_channels if vq_embed_dim is None else int(vq_embed_dim)
        self.config = dict(in_channels=in_channels, out_channels=out_channels, down_block_types=down_block_types,
                           up_block_types=up_block_types, block_out_channels=block_out_channels,
                           layers_per_block=layers_per_block, act_fn=act_fn, latent_channels=latent_channels,
                           sample_size=sample_size, num_vq_embeddings=num_vq_embeddings,
                           norm_num_groups=norm_num_groups, vq_embed_dim=vq_embed_dim, scaling_factor=scaling_factor,
                           norm_type=norm_type, mid_block_add_attention=mid_block_add_attention,
                           lookup_from_codebook=lookup_from_codebook, force_upcast=force_upcast)
        self.encoder = Encoder(in_channels, latent_channels, down_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, mid_block_add_attention)
        self.quant_conv = Conv2d(latent_channels, vq_embed_dim, 1)
        self.quantize = VectorQuantizer(num_vq_embeddings, vq_embed_dim)
        self.post_quant_conv = Conv2d(vq_embed_dim, latent_channels, 1)
        self.decoder = Decoder(latent_channels, out_channels, up_block_types, block_out_channels, layers_per_block,
                               norm_num_groups, norm_type, mid_block_add_attention)
        self.spatial = norm_type == "spatial"

    # ----------------------------------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config) -> "VQModel":
        """Build from a diffusers config dict (or Config): keys absent there take the defaults above, unknown keys
        (``_class_name``, ...) are ignored, and every value is typed and checked (a ModelError names the key)."""
        return cls(**vq_arguments(config))

    @classmethod
    def from_pretrained(cls, component_dir, dtype=None) -> "VQModel":
        """Build from ``component_dir/config.json`` and strictly load ``diffusion_pytorch_model.safetensors``."""
        return build_and_load(cls.from_config, component_dir, DIFFUSERS_WEIGHTS, dtype)

    @property
    def scale_factor(self) -> int:
        """Spatial downscale between image and latents: ``2 ** (len(block_out_channels) - 1)``."""
        return 2 ** (len(self.config["block_out_channels"]) - 1)

    @property
    def dtype(self):
        return self.encoder.conv_in.bias.dtype    # the compute dtype (a bf16 network keeps float32 biases)

    def _as_tensor(self, x) -> Tensor:
        if not isinstance(x, Tensor):
            x = Tensor(np.asarray(x))
        return x.astype(self.dtype)

    def encode_latents(self, x: Tensor) -> Tensor:
        """Tensor-only ``encode`` (what graph mode compiles)."""
        return self.quant_conv(self.encoder(x))

    def decode_latents(self, z: Tensor) -> Tensor:
        """Tensor-only ``decode`` (what graph mode compiles)."""
        return self.decoder(self.post_quant_conv(z), z if self.spatial else None)

    def encode(self, x) -> Tensor:
        """Image (B, in_channels, H, W) in [-1, 1] -> latents ``quant_conv(encoder(x))`` (no quantisation)."""
        return self.encode_latents(self._as_tensor(x))

    def decode(self, z) -> Tensor:
        """Latents (B, latent_channels, h, w) -> image, as diffusers ``decode(z, force_not_quantize=True)``."""
        return self.decode_latents(self._as_tensor(z))

    def construct(self, x):
        """encode then decode (Tensor in, Tensor out)."""
        return self.decode_latents(self.encode_latents(x))


def vq_arguments(config) -> dict:
    """VQModel's keyword arguments from a config.json: every value typed, then checked for consistency."""
    cfg = Config.of(config, "VQModel config")
    d = {name: p.default for name, p in inspect.signature(VQModel.__init__).parameters.items() if name != "self"}
    args = {key: cfg.int(key, d[key], min=1) for key in ("in_channels", "out_channels", "layers_per_block",
                                                         "latent_channels", "num_vq_embeddings", "norm_num_groups")}
    args.update(
        block_out_channels=cfg.list("block_out_channels", d["block_out_channels"], of=int, min=1),
        down_block_types=cfg.list("down_block_types", d["down_block_types"], options=DOWN_BLOCK_TYPES),
        up_block_types=cfg.list("up_block_types", d["up_block_types"], options=UP_BLOCK_TYPES),
        act_fn=cfg.choice("act_fn", ("silu", "swish"), d["act_fn"]),
        sample_size=cfg.value("sample_size", d["sample_size"]),  # not used by the network
        vq_embed_dim=cfg.int("vq_embed_dim", d["vq_embed_dim"], min=1),
        scaling_factor=cfg.float("scaling_factor", d["scaling_factor"]),
        norm_type=cfg.choice("norm_type", NORM_TYPES, d["norm_type"]),
        # decoding codebook indices (diffusers' lookup_from_codebook) is not implemented
        lookup_from_codebook=cfg.choice("lookup_from_codebook", (False,), d["lookup_from_codebook"]),
        **{key: cfg.bool(key, d[key]) for key in ("mid_block_add_attention", "force_upcast")})
    _check_consistency(cfg, args)
    return args


def _check_consistency(cfg: Config, args: dict) -> None:
    channels, groups = args["block_out_channels"], args["norm_num_groups"]
    for key in ("down_block_types", "up_block_types"):
        cfg.require(len(args[key]) == len(channels), key,
                    f"has {len(args[key])} entries for {len(channels)} block_out_channels (must be equal)")
    spatial = args["norm_type"] == "spatial"
    for i, c in enumerate(channels):
        cfg.require(c % groups == 0, "norm_num_groups", f"{groups} does not divide block_out_channels[{i}] = {c}")
        cfg.require(not spatial or c % SPATIAL_GROUPS == 0, "block_out_channels",
                    f"norm_type 'spatial' needs multiples of {SPATIAL_GROUPS} (its GroupNorms have "
                    f"{SPATIAL_GROUPS} groups), got {c}")
    vq_dim = args["vq_embed_dim"] or args["latent_channels"]
    # diffusers conditions SpatialNorm (built for latent_channels) on the vq_embed_dim-channel latent
    cfg.require(not spatial or vq_dim == args["latent_channels"], "vq_embed_dim",
                f"norm_type 'spatial' needs vq_embed_dim == latent_channels ({vq_dim} != {args['latent_channels']})")
