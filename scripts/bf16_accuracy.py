"""bfloat16 against float32 on the real-size networks: rel-L2 and max error of one call each.

    python scripts/make_random_pipeline.py /tmp/real         # once: real-size random weights
    python scripts/bf16_accuracy.py /tmp/real --size 256 --size 768

For each size: the UNet's CFG-batch call (sample (2, 9, s/8, s/8) at t=500, random text/image conditions),
the MoVQ encode of a random image and the MoVQ decode of random latents. Each precision runs in its own process
(MindSpore keeps a compiled network for the life of the process); the float32 outputs are the reference.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def inputs(size: int) -> dict:
    rng = np.random.default_rng(0)
    lat = size // 8

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)
    return {"sample": randn(2, 9, lat, lat), "hidden": randn(2, 77, 1024), "text": randn(2, 768),
            "image": randn(2, 768), "pixels": np.clip(randn(1, 3, size, size), -1, 1), "latents": randn(1, 4, lat, lat)}


def run_child(root: Path, size: int, bf16: bool, out: Path) -> None:
    import mindspore as ms

    from kandinsky_cli.layers import compiled, with_precision
    from kandinsky_cli.movq import VQModel
    from kandinsky_cli.unet import UNet2DConditionModel

    x = inputs(size)
    results = {}
    unet = with_precision(UNet2DConditionModel.from_pretrained(root / "inpaint" / "unet"), bf16)
    results["unet"] = compiled(unet)(ms.Tensor(x["sample"]), unet.time_proj(np.full(2, 500)), ms.Tensor(x["hidden"]),
                                     ms.Tensor(x["text"]), ms.Tensor(x["image"])).asnumpy()
    del unet
    movq = with_precision(VQModel.from_pretrained(root / "inpaint" / "movq"), bf16)
    results["movq_encode"] = compiled(movq.encode_latents)(ms.Tensor(x["pixels"])).asnumpy()
    results["movq_decode"] = compiled(movq.decode_latents)(ms.Tensor(x["latents"])).asnumpy()
    np.savez(out, **results)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("pipeline_dir", type=Path, help="folder with prior/ and inpaint/ (make_random_pipeline.py)")
    ap.add_argument("--size", type=int, action="append", help="image size (repeatable; default 256)")
    ap.add_argument("--child", nargs=3, metavar=("SIZE", "PRECISION", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        run_child(args.pipeline_dir, int(args.child[0]), args.child[1] == "bfloat16", Path(args.child[2]))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.size or [256]:
            outs = {}
            for precision in ("float32", "bfloat16"):
                out = Path(tmp) / f"{precision}-{size}.npz"
                subprocess.run([sys.executable, __file__, str(args.pipeline_dir), "--child", str(size), precision,
                                str(out)], check=True, cwd=REPO)
                outs[precision] = np.load(out)
            for key in outs["float32"].files:
                ref = outs["float32"][key].astype(np.float64)
                got = outs["bfloat16"][key].astype(np.float64)
                rows.append({"size": size, "network": key,
                             "rel_l2": float(np.linalg.norm(got - ref) / np.linalg.norm(ref)),
                             "max_abs": float(np.abs(got - ref).max()), "ref_max_abs": float(np.abs(ref).max())})
                print(json.dumps(rows[-1]), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
