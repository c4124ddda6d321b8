"""The shared blocks' fast CPU formulations against plain definitions (GroupNorm, Winograd convolution)."""
from __future__ import annotations

import os

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, ops

from kandinsky_cli import layers


def group_norm_reference(x, groups, weight, bias, eps, scale=None, shift=None):
    x = x.astype(np.float64)
    n, c = x.shape[:2]
    y = x.reshape(n, groups, -1)
    y = (y - y.mean(-1, keepdims=True)) / np.sqrt(y.var(-1, keepdims=True) + eps)
    bshape = (1, c) + (1,) * (x.ndim - 2)
    out = y.reshape(x.shape) * weight.reshape(bshape) + bias.reshape(bshape)
    if scale is not None:
        sshape = (n, c) + (1,) * (x.ndim - 2)
        out = out * (1 + scale.reshape(sshape)) + shift.reshape(sshape)
    return out


def _group_norm(groups, channels, eps, rng):
    gn = layers.GroupNorm(groups, channels, eps=eps)
    weight = rng.standard_normal(channels).astype(np.float32)
    bias = rng.standard_normal(channels).astype(np.float32)
    gn.weight.set_data(Tensor(weight))
    gn.bias.set_data(Tensor(bias))
    return gn, weight, bias


@pytest.mark.parametrize("mode", ["graph", "pynative"])
@pytest.mark.parametrize("shape,groups", [((2, 64, 12, 20), 32), ((1, 96, 7, 5), 8), ((3, 32, 40), 4)])
def test_group_norm_matches_definition(shape, groups, mode):
    rng = np.random.default_rng(sum(shape))
    gn, weight, bias = _group_norm(groups, shape[1], 1e-6, rng)
    # an offset mean stresses the E[x^2] - mean^2 variance
    x = (rng.standard_normal(shape) * 2.0 + 3.0).astype(np.float32)
    out = layers.compiled(gn, mode)(Tensor(x)).asnumpy()
    ref = group_norm_reference(x, groups, weight, bias, 1e-6)
    assert np.abs(out - ref).max() < 2e-5 * np.abs(ref).max()


def test_group_norm_folds_scale_shift():
    rng = np.random.default_rng(1)
    gn, weight, bias = _group_norm(8, 32, 1e-5, rng)
    x = rng.standard_normal((2, 32, 8, 8)).astype(np.float32)
    scale, shift = (rng.standard_normal((2, 32)).astype(np.float32) for _ in range(2))
    out = layers.compiled(gn)(Tensor(x), Tensor(scale), Tensor(shift)).asnumpy()
    ref = group_norm_reference(x, 8, weight, bias, 1e-5, scale, shift)
    assert np.abs(out - ref).max() < 2e-5 * np.abs(ref).max()


def test_group_norm_float16_uses_the_kernel():
    rng = np.random.default_rng(2)
    gn, weight, bias = _group_norm(4, 16, 1e-5, rng)
    gn.to_float(ms.float16)
    x = rng.standard_normal((1, 16, 8, 8)).astype(np.float32)
    out = gn(Tensor(x, ms.float16))
    assert out.dtype == ms.float16
    ref = group_norm_reference(x, 4, weight, bias, 1e-5)
    assert np.abs(out.asnumpy().astype(np.float64) - ref).max() < 1e-2 * np.abs(ref).max()


def _direct(x, w):
    return ops.conv2d(Tensor(x), Tensor(w), pad_mode="pad", padding=1).asnumpy()


@pytest.mark.parametrize("shape,cout", [((1, 8, 12, 16), 5), ((2, 24, 8, 4), 24)])
def test_winograd_matches_direct_convolution(shape, cout):
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(np.float32)
    w = (rng.standard_normal((cout, shape[1], 3, 3)) / np.sqrt(shape[1] * 9)).astype(np.float32)
    ref = _direct(x, w)
    for fn in (layers.winograd_conv3x3, ms.jit(layers.winograd_conv3x3)):
        out = fn(Tensor(x), Tensor(w)).asnumpy()
        assert np.abs(out - ref).max() < 5e-5 * np.abs(ref).max()


def test_winograd_only_where_it_pays():
    assert layers.winograd_pays((2, 768, 96, 96), 768, 768)
    assert layers.winograd_pays((2, 384, 48, 48), 384, 384)
    assert layers.winograd_pays((1, 512, 96, 96), 512, 512)
    assert layers.winograd_pays((2, 1536, 24, 24), 1536, 1536)
    assert layers.winograd_pays((1, 1152, 24, 24), 1152, 1152)
    assert not layers.winograd_pays((2, 1152, 12, 12), 1152, 1536)     # too few tiles
    assert not layers.winograd_pays((1, 128, 768, 768), 128, 128)      # too few channels
    assert not layers.winograd_pays((2, 768, 50, 48), 768, 768)        # not a multiple of 4
    assert not layers.winograd_pays((2, 32, 32, 32), 32, 64)


@pytest.mark.parametrize("mode", ["graph", "pynative"])
def test_conv2d_switches_to_winograd_and_back(monkeypatch, mode):
    rng = np.random.default_rng(4)
    conv = layers.Conv2d(384, 384, 3, padding=1)
    w = (rng.standard_normal((384, 384, 3, 3)) / np.sqrt(384 * 9)).astype(np.float32)
    b = rng.standard_normal(384).astype(np.float32)
    conv.weight.set_data(Tensor(w))
    conv.bias.set_data(Tensor(b))
    x = rng.standard_normal((2, 384, 48, 48)).astype(np.float32)
    assert layers.winograd_pays(x.shape, 384, 384)
    ref = _direct(x, w) + b[None, :, None, None]
    fast = layers.compiled(conv, mode)(Tensor(x)).asnumpy()
    assert np.abs(fast - ref).max() < 5e-5 * np.abs(ref).max()
    assert not np.array_equal(fast, ref)      # the Winograd path really ran
    monkeypatch.setattr(layers, "WINOGRAD", False)
    conv2 = layers.Conv2d(384, 384, 3, padding=1)
    conv2.weight.set_data(Tensor(w))
    conv2.bias.set_data(Tensor(b))
    direct = layers.compiled(conv2, mode)(Tensor(x)).asnumpy()
    assert np.abs(direct - ref).max() < 2e-6 * np.abs(ref).max()


def _rss_mb() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) // 1000 for line in f if line.startswith("VmRSS"))


class _Table(ms.nn.Cell):
    def __init__(self, rows: int, width: int):
        super().__init__()
        self.weight = ms.Parameter(Tensor(np.ones((rows, width), np.float32)))

    def construct(self, ids):
        return ops.gather(self.weight, ids, 0)


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="reads the RSS from /proc")
def test_release_eager_memory_returns_a_dropped_eager_networks_weights():
    # MindSpore's eager executor keeps the weights of a dropped network it ran (the text encoder's ~1 GB embedding
    # table after each encoding) until released.
    import gc

    table = _Table(100_000, 1024)      # 400 MB
    table(Tensor(np.array([[1, 2]], np.int32))).asnumpy()
    table = None
    gc.collect()
    held = _rss_mb()
    layers.release_eager_memory()
    assert held - _rss_mb() > 300


def test_release_eager_memory_keeps_compiled_graphs_and_eager_calls_working():
    from kandinsky_cli.cache import _mindspore_compiles

    rng = np.random.default_rng(3)
    gn, *_ = _group_norm(4, 8, 1e-5, rng)
    x = Tensor(rng.standard_normal((1, 8, 6, 6)).astype(np.float32))
    fn = layers.compiled(gn)
    graph_out, eager_out = fn(x).asnumpy(), gn(x).asnumpy()
    compiles = _mindspore_compiles()
    layers.release_eager_memory()
    np.testing.assert_array_equal(fn(x).asnumpy(), graph_out)
    np.testing.assert_array_equal(gn(x).asnumpy(), eager_out)
    assert _mindspore_compiles() == compiles
