"""Regenerate the tiny example inputs of configs/examples/ (a drawn 'cat' and a hat mask).

Run from the repository root: python scripts/make_example_inputs.py
"""
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "configs" / "examples"


def draw_cat(size: int = 256) -> Image.Image:
    """A flat-colour cartoon cat face on a sky-blue background (compresses to a few KB)."""
    image = Image.new("RGB", (size, size), (135, 190, 235))
    draw = ImageDraw.Draw(image)
    s = size / 256
    draw.polygon([(60 * s, 120 * s), (80 * s, 40 * s), (120 * s, 100 * s)], fill=(230, 140, 40))   # ears
    draw.polygon([(196 * s, 120 * s), (176 * s, 40 * s), (136 * s, 100 * s)], fill=(230, 140, 40))
    draw.ellipse([56 * s, 80 * s, 200 * s, 220 * s], fill=(240, 150, 50))                         # head
    draw.ellipse([92 * s, 130 * s, 112 * s, 150 * s], fill=(20, 20, 20))                          # eyes
    draw.ellipse([144 * s, 130 * s, 164 * s, 150 * s], fill=(20, 20, 20))
    draw.polygon([(120 * s, 165 * s), (136 * s, 165 * s), (128 * s, 175 * s)], fill=(200, 80, 90))  # nose
    return image


def hat_mask(size: int = 256) -> Image.Image:
    """White (repaint) over the top of the head, black (keep) elsewhere."""
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle([40 * size // 256, 0, 216 * size // 256, 100 * size // 256], fill=255)
    return mask


if __name__ == "__main__":
    OUT.mkdir(parents=True, exist_ok=True)
    draw_cat().save(OUT / "cat.png", optimize=True)
    hat_mask().save(OUT / "hat-mask.png", optimize=True)
    print(f"wrote {OUT / 'cat.png'} and {OUT / 'hat-mask.png'}")
