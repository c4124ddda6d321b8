#!/usr/bin/env python3
"""Write Kandinsky 2.1 prior + inpaint pipeline folders with random weights at the real sizes.

    python scripts/make_random_pipeline.py OUT_DIR [--configs configs/kandinsky-2-1] [--seed 0] [--std S]

For measuring speed and memory of the whole tool (loading included) without downloading the published
checkpoints: OUT_DIR/prior and OUT_DIR/inpaint are laid out like the hub repos (model_index.json, configs,
safetensors). Architecture configs come from configs/kandinsky-2-1; tokenizers, schedulers and the image
processor are copied from the tiny test fixture (their ids are valid in the real vocabularies). The weights
come from scripts/random_weights.py (the generator scripts/bench.py uses too). The images it paints are noise.
The real-size weights take ~13 GB of disk in float32.
"""
import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from random_weights import copy_support_files, random_weights, write_component

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "kandinsky21-tiny"

# (pipeline, subfolder, config file in --configs, weights file name)
COMPONENTS = (
    ("prior", "prior", "prior", "diffusion_pytorch_model"),
    ("prior", "text_encoder", "text_encoder", "model"),
    ("prior", "image_encoder", "image_encoder", "model"),
    ("inpaint", "text_encoder", "text_encoder_mclip", "model"),
    ("inpaint", "unet", "unet", "diffusion_pytorch_model"),
    ("inpaint", "movq", "movq", "diffusion_pytorch_model"),
)


def build_cell(config_name: str, config: dict):
    """The MindSpore network of one component, built from its config (parameters not yet set)."""
    from kandinsky_cli.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    from kandinsky_cli.mclip import MultilingualCLIP
    from kandinsky_cli.movq import VQModel
    from kandinsky_cli.prior import PriorTransformer
    from kandinsky_cli.unet import UNet2DConditionModel

    builders = {"prior": PriorTransformer, "text_encoder": CLIPTextModelWithProjection,
                "image_encoder": CLIPVisionModelWithProjection, "text_encoder_mclip": MultilingualCLIP,
                "unet": UNet2DConditionModel, "movq": VQModel.from_config}
    return builders[config_name](config)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--configs", type=Path, default=REPO / "configs" / "kandinsky-2-1")
    ap.add_argument("--std", type=float, default=None,
                    help="standard deviation of every matrix (default: 1/sqrt(fan_in), per matrix)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    for pipeline in ("prior", "inpaint"):
        copy_support_files(TINY / pipeline, args.out_dir / pipeline)
    for pipeline, sub, config_name, weights_name in COMPONENTS:
        folder = args.out_dir / pipeline / sub
        config = json.loads((args.configs / f"{config_name}.json").read_text())
        t0 = time.time()
        tensors = dict(random_weights(build_cell(config_name, config), rng, args.std))
        write_component(folder, config, weights_name, tensors)
        count = sum(a.size for a in tensors.values())
        print(f"{folder}: {count / 1e6:.0f} M parameters ({time.time() - t0:.0f} s)", file=sys.stderr)
        del tensors
    print(f"wrote {args.out_dir / 'prior'} and {args.out_dir / 'inpaint'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
