#!/usr/bin/env python3
"""Write Kandinsky 2.1 prior + inpaint pipeline folders with random weights at the real sizes.

    python scripts/make_random_pipeline.py OUT_DIR [--configs configs/kandinsky-2-1] [--std 0.02]

For measuring speed and memory of the whole tool (loading included) without downloading the published
checkpoints: OUT_DIR/prior and OUT_DIR/inpaint are laid out like the hub repos (model_index.json, configs,
safetensors). Architecture configs come from configs/kandinsky-2-1; tokenizers, schedulers and the image
processor are copied from the tiny test fixture (their ids are valid in the real vocabularies). The images it
paints are noise. The real-size weights take ~13 GB of disk in float32.
"""
import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "tests" / "fixtures" / "kandinsky21-tiny"


def random_weights(cell, rng, std: float) -> dict:
    """Random normal tensors (norm weights around 1) for every parameter of ``cell``, by checkpoint name."""
    out = {}
    for name, param in cell.parameters_and_names():
        shape = tuple(param.shape)
        arr = rng.standard_normal(shape, dtype=np.float32) * np.float32(std)
        if name.endswith("weight") and len(shape) == 1:   # LayerNorm / GroupNorm scales
            arr += np.float32(1.0)
        out[name] = arr
    return out


def write_component(folder: Path, config: dict, cell, weights_name: str, rng, std: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    t0 = time.time()
    tensors = random_weights(cell, rng, std)
    save_file(tensors, str(folder / f"{weights_name}.safetensors"))
    count = sum(a.size for a in tensors.values())
    print(f"{folder}: {count / 1e6:.0f} M parameters ({time.time() - t0:.0f} s)", file=sys.stderr)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--configs", type=Path, default=REPO / "configs" / "kandinsky-2-1")
    ap.add_argument("--std", type=float, default=0.02)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    from kandinsky_cli.clip import CLIPTextModelWithProjection, CLIPVisionModelWithProjection
    from kandinsky_cli.mclip import MultilingualCLIP
    from kandinsky_cli.movq import VQModel
    from kandinsky_cli.prior import PriorTransformer
    from kandinsky_cli.unet import UNet2DConditionModel

    cfg = {name: json.loads((args.configs / f"{name}.json").read_text())
           for name in ("prior", "text_encoder", "image_encoder", "text_encoder_mclip", "unet", "movq")}
    rng = np.random.default_rng(args.seed)
    prior_dir, inpaint_dir = args.out_dir / "prior", args.out_dir / "inpaint"
    for src, dst in ((TINY / "prior", prior_dir), (TINY / "inpaint", inpaint_dir)):
        dst.mkdir(parents=True, exist_ok=True)
        shutil.copy(src / "model_index.json", dst / "model_index.json")
        for sub in ("tokenizer", "scheduler", "image_processor"):
            if (src / sub).is_dir():
                shutil.copytree(src / sub, dst / sub, dirs_exist_ok=True)

    write_component(prior_dir / "prior", cfg["prior"], PriorTransformer(cfg["prior"]), "diffusion_pytorch_model",
                    rng, args.std)
    write_component(prior_dir / "text_encoder", cfg["text_encoder"], CLIPTextModelWithProjection(cfg["text_encoder"]),
                    "model", rng, args.std)
    write_component(prior_dir / "image_encoder", cfg["image_encoder"],
                    CLIPVisionModelWithProjection(cfg["image_encoder"]), "model", rng, args.std)
    write_component(inpaint_dir / "text_encoder", cfg["text_encoder_mclip"], MultilingualCLIP(cfg["text_encoder_mclip"]),
                    "model", rng, args.std)
    write_component(inpaint_dir / "unet", cfg["unet"], UNet2DConditionModel(cfg["unet"]), "diffusion_pytorch_model",
                    rng, args.std)
    write_component(inpaint_dir / "movq", cfg["movq"], VQModel.from_config(cfg["movq"]), "diffusion_pytorch_model",
                    rng, args.std)
    print(f"wrote {prior_dir} and {inpaint_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
