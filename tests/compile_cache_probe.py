"""A process that compiles a small network for the given batch sizes with the tool's compile cache on, and prints
JSON: whether every result equals numpy's, and the cache's state. Used by tests/test_cache.py."""
import json
import sys

import numpy as np


def main():
    import mindspore as ms
    from mindspore import nn, ops

    from kandinsky_cli.cache import compile_cache
    from kandinsky_cli.layers import compiled

    ms.set_context(mode=ms.PYNATIVE_MODE, device_target="CPU")

    class Net(nn.Cell):
        def __init__(self, width):
            super().__init__()
            self.dense = nn.Dense(8, width)

        def construct(self, x):
            return ops.relu(self.dense(x)) * 2

    width, rows = int(sys.argv[1]), [int(r) for r in sys.argv[2].split(",")]
    net = Net(width)
    rng = np.random.default_rng(width)
    net.dense.weight.set_data(ms.Tensor(rng.standard_normal((width, 8)).astype(np.float32)))
    compile_cache.allowed = True
    compile_cache.configure("cpu", "graph", "float32")
    compile_cache.set_hint("probe")
    fn = compiled(net, "graph")
    results = []
    for n in rows:
        x = rng.standard_normal((n, 8)).astype(np.float32)
        y = fn(ms.Tensor(x)).asnumpy()
        ref = np.maximum(x @ net.dense.weight.asnumpy().T + net.dense.bias.asnumpy(), 0) * 2
        results.append(bool(y.shape == ref.shape and np.allclose(y, ref, atol=1e-5)))
    print(json.dumps({"ok": results, "state": compile_cache.state,
                      "entry": str(compile_cache.entry) if compile_cache.entry else None}))


if __name__ == "__main__":
    main()
