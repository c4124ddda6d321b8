"""Building blocks shared by every network: parameter names mirror the PyTorch checkpoints.

MindSpore's own ``nn.LayerNorm``/``nn.GroupNorm``/``nn.Embedding`` name their parameters
``gamma``/``beta``/``embedding_table``; the cells here hold ``weight``/``bias`` so that a Cell tree that
mirrors the diffusers/transformers attribute names loads a checkpoint by plain name match.
Only ``mindspore.nn``/``mindspore.ops`` kernels are used (they exist on CPU, GPU and Ascend).
Parameters start as zeros: every one of them is overwritten by the checkpoint loader.
"""
from __future__ import annotations

import math
import os
from typing import Optional

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor, nn, ops


def _zeros(shape, dtype=ms.float32) -> Parameter:
    return Parameter(Tensor(np.zeros(shape, dtype=np.float32), dtype))


class Dense(nn.Dense):
    """``nn.Dense`` that can run in bfloat16 (:func:`to_bfloat16`): ``weight`` is then replaced by its bf16 bits
    ``weight_bf16`` (1, out, in) and the product runs in the custom operator; the bias add stays float32."""

    bf16 = False

    def construct(self, x):
        shape = x.shape
        if self.bf16:
            # reshape, not [0]: indexing the operator's output costs more than the product in a compiled graph
            out = self.bf16_mm_nt(x.reshape(1, -1, shape[-1]), self.weight_bf16).reshape(-1, self.out_channels)
        else:
            out = self.matmul(x.reshape(-1, shape[-1]), self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        return out.reshape(shape[:-1] + (out.shape[-1],))


def Linear(in_features: int, out_features: int, bias: bool = True) -> Dense:
    """``torch.nn.Linear``: ``weight`` [out, in] and optional ``bias`` [out]."""
    return Dense(in_features, out_features, weight_init="zeros", bias_init="zeros", has_bias=bias)


# Winograd F(4x4, 3x3) (Lavin & Gray): 36 multiplies per 4x4 output tile instead of 144. Kronecker products
# turn the 2-D tile transforms into single matmuls: V = KB . d, U = KG . g, Y = KA . M.
_WINO_BT = np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0], [0, -2, -1, 2, 1, 0],
                     [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)
_WINO_G = np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6], [1 / 24, 1 / 12, 1 / 6],
                    [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64)
_WINO_AT = np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0], [0, 1, -1, 8, -8, 1]], np.float64)
_WINO_KB, _WINO_KG, _WINO_KA = (Tensor(np.kron(m, m).astype(np.float32)) for m in (_WINO_BT, _WINO_G, _WINO_AT))

# Off with KANDINSKY_WINOGRAD=0: the direct convolution is then used everywhere.
WINOGRAD = os.environ.get("KANDINSKY_WINOGRAD", "1").strip().lower() not in ("0", "false", "no", "off")


def winograd_pays(shape, in_channels: int, out_channels: int) -> bool:
    """Where Winograd is used: >= 384 channels and >= 36 output tiles of 4x4 (e.g. CFG batch 2 at 24x24).

    Measured on a 2-core CPU against MindSpore's direct convolution (float32, compiled, 8 convolutions in a row):
    1152 channels at 24x24, batch 2 (72 tiles): 0.93 s against 2.44 s; batch 1 (36 tiles): 0.77 s against 1.51 s;
    1536 channels at 12x12, batch 2 (18 tiles): 1.03 s against 1.10 s, no gain, and slower for fewer tiles or
    channels (the transforms then dominate). On the real UNet step at 768x768 (batch 2): 23.0 s against 28.2 s
    with the previous limit of 288 tiles, peak RSS 9.07 GB against 8.97 GB.
    """
    n, _, h, w = shape
    if h % 4 or w % 4:
        return False
    return min(in_channels, out_channels) >= 384 and n * (h // 4) * (w // 4) >= 36


_matmul_nt2d = ops.MatMul(transpose_b=True)


def _row_order(a: int, b: int, c: int) -> Tensor:
    """Row indices that reorder rows laid out (a, b, c) into (c, b, a)."""
    return Tensor(np.arange(a * b * c).reshape(a, b, c).transpose(2, 1, 0).reshape(-1).astype(np.int32))


def winograd_conv3x3(x, weight):
    """3x3 convolution, stride 1, zero padding 1, NCHW with H and W multiples of 4, by Winograd F(4x4, 3x3).

    The 36 products per tile are one batched matmul (36, Cout, Cin) x (36, Cin, N*tiles). Tiles are cut by
    ``unfold`` and put back by ``fold``; the axis reorders in between are row gathers, not transposes:
    on CPU a compiled graph never reuses the memory around MindSpore's (view) transposes, which made
    every such convolution pin several times its input size. Relative error ~1e-5 in float32 (direct: ~5e-7).
    """
    n, c, h, w = x.shape
    co = weight.shape[0]
    tiles = (h // 4) * (w // 4)
    weight = ops.depend(weight, x)   # transform the weights when x is there, not all at once at the start
    u = _matmul_nt2d(_WINO_KG, weight.reshape(co * c, 9)).reshape(36, co, c)
    d = ops.unfold(x, kernel_size=6, padding=1, stride=4).reshape(n * c * 36, tiles)      # rows (n, c, t)
    d = ops.gather(d, _row_order(n, c, 36), 0).reshape(36, -1)                             # rows (t, c, n)
    v = ops.matmul(_WINO_KB, d).reshape(36, c, n * tiles)
    m = ops.bmm(u, v).reshape(36, -1)
    y = ops.matmul(_WINO_KA, m).reshape(16 * co * n, tiles)                                # rows (t, co, n)
    y = ops.gather(y, _row_order(16, co, n), 0).reshape(n, co * 16, tiles)                 # rows (n, co, t)
    return ops.fold(y, Tensor(np.array([h, w], np.int32)), kernel_size=4, stride=4)


class Conv2d(nn.Conv2d):
    """``torch.nn.Conv2d``: ``weight`` [out, in, kh, kw], ``bias`` [out]; explicit zero padding.

    Large float32 3x3 convolutions (stride 1, padding 1) run as Winograd F(4x4, 3x3) where
    :func:`winograd_pays`; the choice is made per input shape when the graph is traced.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1, padding=0,
                 bias: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride,
                         pad_mode="valid" if padding == 0 else "pad", padding=padding, has_bias=bias,
                         weight_init="zeros", bias_init="zeros")
        self.winograd_ok = kernel_size == 3 and stride == 1 and padding == 1
        self.pointwise = kernel_size == 1 and stride == 1 and padding == 0

    bf16 = False   # set by to_bfloat16: ``weight`` is then gone, replaced by ``weight_bf16``

    def construct(self, x):
        if self.bf16:
            return self.construct_bf16(x)
        if WINOGRAD and self.winograd_ok and x.dtype == ms.float32 and \
                winograd_pays(x.shape, self.in_channels, self.out_channels):
            out = winograd_conv3x3(x, self.weight)
        else:
            out = self.conv2d(x, self.weight)
        if self.has_bias:
            out = self.bias_add(out, self.bias)
        return out

    def construct_bf16(self, x):
        n, _, h, w = x.shape
        if self.pointwise:        # (1, Cout, Cin) @ (N, Cin, H*W)
            out = self.bf16_mm_nn(self.weight_bf16, x.reshape(n, self.in_channels, h * w))
            out = out.reshape(n, self.out_channels, h, w)
            return self.bias_add(out, self.bias) if self.has_bias else out
        return self.bf16_winograd3x3(x, self.weight_bf16, self.bias)


BF16_MIN_CHANNELS = 32


def to_bfloat16(net: nn.Cell, min_channels: int = BF16_MIN_CHANNELS) -> nn.Cell:
    """Switch ``net``'s heavy products to bfloat16, in place, on a loaded float32 network; returns ``net``.

    Every :class:`Dense` and every :class:`Conv2d` that is 1x1 or 3x3 (stride 1, padding 1), with at least
    ``min_channels`` input and output channels, keeps its weights as bf16 bits (3x3: Winograd-transformed, 16/9
    the values at half the bytes) and drops the float32 copy; the products run in the operators of :mod:`.bf16`.
    Everything else (norms, softmax, elementwise, strided convolutions, biases) stays float32; the attention products (QK^T, PV) run in bf16 too. Cells with a
    true ``keep_float32`` attribute stay float32 with everything in them. Call it before the network is first
    compiled.
    """
    from . import bf16

    global _bf16_mm_nn, _bf16_mm_nt
    kernels = bf16.ops()
    _bf16_mm_nn, _bf16_mm_nt = kernels.mm_nn, kernels.mm_nt
    kept = []        # the names of subtrees that stay float32 (cells with keep_float32 set)
    for name, cell in net.cells_and_names():
        if getattr(cell, "keep_float32", False):
            kept.append(name + ".")
        if any((name + ".").startswith(prefix) for prefix in kept):
            continue
        if isinstance(cell, AttentionCell):
            cell.bf16 = True
            continue
        if isinstance(cell, Dense) and not cell.bf16:
            bits = bf16.round_weights(cell.weight.asnumpy())[None]
            cell.bf16_mm_nt = kernels.mm_nt
        elif isinstance(cell, Conv2d) and not cell.bf16 and (cell.pointwise or cell.winograd_ok) and \
                min(cell.in_channels, cell.out_channels) >= min_channels:
            weight = cell.weight.asnumpy()
            if cell.pointwise:
                bits = bf16.round_weights(weight.reshape(cell.out_channels, cell.in_channels))[None]
                cell.bf16_mm_nn = kernels.mm_nn
            else:
                bits = bf16.winograd_weights(weight)
                cell.bf16_winograd3x3 = kernels.winograd3x3
                if not cell.has_bias:   # the operator adds a bias
                    cell.bias = Parameter(Tensor(np.zeros(cell.out_channels, np.float32)), name="bias")
        else:
            continue
        name = cell.weight.name
        del cell.weight
        cell.weight_bf16 = Parameter(Tensor.from_numpy(bits), name=name + "_bf16", requires_grad=False)
        cell.bf16 = True
    return net


def with_precision(net: nn.Cell, bf16: bool) -> nn.Cell:
    """``net`` as loaded (float32/float16), or switched to the bf16 operators (:func:`to_bfloat16`)."""
    return to_bfloat16(net) if bf16 else net


class LayerNorm(nn.Cell):
    """LayerNorm over the last axis with torch's parameter names (``weight``, ``bias``)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.weight = _zeros((dim,))
        self.bias = _zeros((dim,))
        self.norm = ops.LayerNorm(begin_norm_axis=-1, begin_params_axis=-1, epsilon=eps)

    def construct(self, x):
        return self.norm(x, self.weight.astype(x.dtype), self.bias.astype(x.dtype))[0]


class GroupNorm(nn.Cell):
    """GroupNorm over (N, C, ...) with torch's parameter names (``weight``, ``bias``).

    ``construct(x, scale, shift)`` also applies a per-sample ``* (1 + scale) + shift`` ((N, C) each, the UNet's
    "scale_shift" time embedding) folded into the same pass.

    Float32 runs a formulation ~2-4x faster on CPU than MindSpore's GroupNorm kernel: the group sums come from
    a matmul against a ones vector over the last axis (the BLAS kernel accumulates in blocks, which keeps the
    error near torch's pairwise sums), variance = E[x^2] - mean^2, and the normalisation plus both affine steps
    run as one inference-mode BatchNorm pass over (1, N*C, ...) with per-(sample, channel) statistics.
    Other dtypes use ``ops.group_norm``.
    """

    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5):
        super().__init__()
        if num_groups < 1 or num_channels % num_groups:
            raise ValueError(f"GroupNorm: {num_channels} channels cannot be split into {num_groups} groups")
        self.num_groups = num_groups
        self.eps = eps
        self.weight = _zeros((num_channels,))
        self.bias = _zeros((num_channels,))
        self.batch_norm = ops.BatchNorm(is_training=False, epsilon=eps)

    def construct(self, x, scale=None, shift=None):
        if x.dtype != ms.float32:
            out = ops.group_norm(x, self.num_groups, self.weight.astype(x.dtype), self.bias.astype(x.dtype), self.eps)
            if scale is not None:
                out = out * (1 + scale.reshape(scale.shape + (1,) * (x.ndim - 2))) + \
                    shift.reshape(shift.shape + (1,) * (x.ndim - 2))
            return out
        n, c = x.shape[0], x.shape[1]
        g = self.num_groups
        last = x.shape[-1]
        rows = x.reshape(-1, last)
        ones = ops.ones((last, 1), x.dtype) / last
        mean = ops.matmul(rows, ones).reshape(n * g, -1).mean(axis=-1)
        var = ops.matmul(ops.square(rows), ones).reshape(n * g, -1).mean(axis=-1) - mean * mean
        var = ops.maximum(var, 0.0)
        mean = ops.broadcast_to(mean.reshape(n, g, 1), (n, g, c // g)).reshape(n * c)
        var = ops.broadcast_to(var.reshape(n, g, 1), (n, g, c // g)).reshape(n * c)
        weight = ops.broadcast_to(self.weight.reshape(1, c), (n, c))
        bias = ops.broadcast_to(self.bias.reshape(1, c), (n, c))
        if scale is not None:
            weight = weight * (1 + scale)
            bias = bias * (1 + scale) + shift
        flat = x.reshape(1, n * c, -1, last)
        out = self.batch_norm(flat, weight.reshape(n * c), bias.reshape(n * c), mean, var)[0]
        return out.reshape(x.shape)


class Embedding(nn.Cell):
    """``torch.nn.Embedding``: a ``weight`` table [num, dim] indexed by integer ids."""

    def __init__(self, num_embeddings: int, dim: int):
        super().__init__()
        self.weight = _zeros((num_embeddings, dim))

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


def quick_gelu(x):
    return x * ops.sigmoid(1.702 * x)


def gelu(x):
    """Exact (erf) GELU, as torch's default ``nn.GELU()`` / transformers' ``"gelu"``."""
    return ops.gelu(x, approximate="none")


ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": gelu, "silu": ops.silu}


def activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unsupported activation {name!r}") from None


_matmul_nt = ops.BatchMatMul(transpose_b=True)
# The bf16 operators for attention products, set by to_bfloat16 (module globals: a compiled graph reads them
# when it is traced, and they are set before any bf16 network is first called).
_bf16_mm_nn = _bf16_mm_nt = None


def attention(q, k, v, heads: int, mask=None, bf16: bool = False):
    """Multi-head scaled dot-product attention on (B, L, C) tensors.

    ``mask`` is additive and broadcasts against (B, heads, Lq, Lk). The softmax runs in float32
    (diffusers' ``upcast_softmax``), the matmuls in the input dtype, or with ``bf16`` in the bf16 operators
    (float32 in and out).
    """
    b, lq, c = q.shape
    lk = k.shape[1]
    d = c // heads
    q = (q * (d ** -0.5)).reshape(b, lq, heads, d).transpose(0, 2, 1, 3)
    k = k.reshape(b, lk, heads, d).transpose(0, 2, 1, 3)
    v = v.reshape(b, lk, heads, d).transpose(0, 2, 1, 3)
    if bf16:
        scores = _bf16_mm_nt(q.reshape(b * heads, lq, d), k.reshape(b * heads, lk, d)).reshape(b, heads, lq, lk)
    else:
        scores = _matmul_nt(q, k)
    if mask is not None:
        scores = scores + mask.astype(scores.dtype)
    if scores.dtype != ms.float32:
        scores = scores.astype(ms.float32)
    probs = ops.softmax(scores, axis=-1).astype(v.dtype)
    if bf16:
        out = _bf16_mm_nn(probs.reshape(b * heads, lq, lk), v.reshape(b * heads, lk, d)).reshape(b, heads, lq, d)
    else:
        out = ops.matmul(probs, v)
    return out.transpose(0, 2, 1, 3).reshape(b, lq, c)


class AttentionCell(nn.Cell):
    """Base of the cells that call :func:`attention`: ``self.bf16`` (set by to_bfloat16) selects its products."""

    bf16 = False


def timestep_embedding(timesteps: np.ndarray, dim: int, flip_sin_to_cos: bool = True,
                       downscale_freq_shift: float = 0.0, max_period: int = 10000) -> np.ndarray:
    """Sinusoidal timestep embedding (diffusers ``get_timestep_embedding``), float32, computed on the host.

    Returns (B, dim); cos first when ``flip_sin_to_cos``.
    """
    half = dim // 2
    exponent = -math.log(max_period) * np.arange(half, dtype=np.float32)
    exponent = (exponent / np.float32(half - downscale_freq_shift)).astype(np.float32)
    freqs = np.exp(exponent).astype(np.float32)
    args = np.asarray(timesteps, dtype=np.float32).reshape(-1, 1) * freqs[None, :]
    emb = np.concatenate([np.sin(args), np.cos(args)], axis=-1).astype(np.float32)
    if flip_sin_to_cos:
        emb = np.concatenate([emb[:, half:], emb[:, :half]], axis=-1)
    if dim % 2 == 1:
        emb = np.pad(emb, ((0, 0), (0, 1)))
    return emb




def release_eager_memory() -> None:
    """Return what MindSpore's eager (PyNative) executor still holds from earlier eager calls.

    After the eager XLM-R text encoder is dropped its executor keeps about 1 GB (the size of its embedding table)
    until this runs; compiled graphs are not affected (measured: they keep their working memory, and their
    results, across the call).
    """
    from mindspore.common.api import _pynative_executor

    _pynative_executor.clear_res()


def compiled(fn, mode: str = "graph"):
    """``fn`` (a Cell or a tensor-only method) compiled with ``ms.jit`` in graph mode, as is in pynative mode.

    A compiled function is traced once per input shape and dtype and reused for every later call; where the
    engine turned the compile cache on, a trace of an earlier process is reused (see :mod:`.cache`).
    """
    from .options import MODES

    if mode not in MODES:
        raise ValueError(f"unknown execution mode {mode!r} (graph or pynative)")
    if mode == "pynative":
        return fn
    from .cache import Graph

    owner = fn if isinstance(fn, nn.Cell) else getattr(fn, "__self__", None)
    name = f"{type(owner).__qualname__}.{getattr(fn, '__name__', 'construct')}"
    return Graph(ms.jit(fn.construct if isinstance(fn, nn.Cell) else fn), owner, name)


def upsample_nearest2x(x):
    """Nearest-neighbour x2 on NCHW (= ``F.interpolate(scale_factor=2)``); stacking copies is ~3x faster on
    CPU than MindSpore's interpolate kernel."""
    n, c, h, w = x.shape
    x = ops.stack((x, x), axis=-1).reshape(n, c, h, 2 * w)
    return ops.stack((x, x), axis=-2).reshape(n, c, 2 * h, 2 * w)


def avg_pool2x(x):
    return ops.avg_pool2d(x, kernel_size=2, stride=2)


class SpatialNorm(nn.Cell):
    """MoVQ's spatially conditioned GroupNorm: GN(f) * conv_y(zq') + conv_b(zq'), zq' = nearest-resized zq.

    The GroupNorm has 32 groups and eps 1e-6 (hard-coded in diffusers, whatever the model config says).
    """

    def __init__(self, f_channels: int, zq_channels: int):
        super().__init__()
        self.norm_layer = GroupNorm(32, f_channels, eps=1e-6)
        self.conv_y = Conv2d(zq_channels, f_channels, 1)
        self.conv_b = Conv2d(zq_channels, f_channels, 1)

    def construct(self, f, zq):
        # The zq branch depends on the small latents only, so a compiled graph would run every SpatialNorm's
        # full-size conv_y/conv_b at the start and keep them all alive; tie it to f to compute them here.
        zq = ops.interpolate(ops.depend(zq, f), size=(f.shape[2], f.shape[3]), mode="nearest")
        return self.norm_layer(f) * self.conv_y(zq) + self.conv_b(zq)


class ResnetBlock2D(nn.Cell):
    """diffusers' ResnetBlock2D / ResnetBlockCondNorm2D (spatial norm), as used by the UNet and MoVQ.

    - ``temb_channels``: size of the time embedding (None: no ``time_emb_proj``);
      ``time_embedding_norm``: "default" (add before norm2) or "scale_shift" (norm2 * (1 + scale) + shift).
    - ``spatial_norm_channels``: when set, norm1/norm2 are SpatialNorm conditioned on ``zq`` (the MoVQ decoder).
    - ``up``/``down``: nearest x2 / average-pool /2 applied to both the hidden state and the shortcut input.
    """

    def __init__(self, in_channels: int, out_channels: Optional[int] = None, temb_channels: Optional[int] = None,
                 groups: int = 32, eps: float = 1e-6, time_embedding_norm: str = "default",
                 spatial_norm_channels: Optional[int] = None, up: bool = False, down: bool = False):
        super().__init__()
        out_channels = out_channels or in_channels
        self.spatial = spatial_norm_channels is not None
        if self.spatial:
            self.norm1 = SpatialNorm(in_channels, spatial_norm_channels)
            self.norm2 = SpatialNorm(out_channels, spatial_norm_channels)
        else:
            self.norm1 = GroupNorm(groups, in_channels, eps=eps)
            self.norm2 = GroupNorm(groups, out_channels, eps=eps)
        self.conv1 = Conv2d(in_channels, out_channels, 3, padding=1)
        self.scale_shift = time_embedding_norm == "scale_shift"
        if time_embedding_norm not in ("default", "scale_shift"):
            raise ValueError(f"unsupported resnet_time_scale_shift {time_embedding_norm!r}")
        self.has_temb = temb_channels is not None
        if self.has_temb:
            self.time_emb_proj = Linear(temb_channels, out_channels * 2 if self.scale_shift else out_channels)
        self.conv2 = Conv2d(out_channels, out_channels, 3, padding=1)
        self.has_shortcut = in_channels != out_channels
        if self.has_shortcut:
            self.conv_shortcut = Conv2d(in_channels, out_channels, 1)
        self.up = up
        self.down = down

    def construct(self, x, temb=None, zq=None):
        h = self.norm1(x, zq) if self.spatial else self.norm1(x)
        h = ops.silu(h)
        if self.up:
            x = upsample_nearest2x(x)
            h = upsample_nearest2x(h)
        elif self.down:
            x = avg_pool2x(x)
            h = avg_pool2x(h)
        h = self.conv1(h)
        if self.has_temb:
            t = self.time_emb_proj(ops.silu(temb))
            if self.scale_shift:
                scale, shift = ops.split(t, t.shape[1] // 2, axis=1)
                h = self.norm2(h, scale, shift)
            else:
                h = self.norm2(h + t[:, :, None, None])
        else:
            h = self.norm2(h, zq) if self.spatial else self.norm2(h)
        h = self.conv2(ops.silu(h))
        if self.has_shortcut:
            x = self.conv_shortcut(x)
        return x + h
