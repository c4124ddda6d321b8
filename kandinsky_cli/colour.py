"""``--color-match``: the repainted area's colours matched to the original's, in LAB, with scikit-image.

A1111's colour correction and IOPaint's ``sd_match_histograms`` do the same job: the decoder (and the MoVQ round
trip) can shift the colours of the repainted area, which shows as a cast or a seam at the mask's edge. Here the
pixels of the repainted area (paste-back weight > 0) are converted to CIE LAB (``skimage.color.rgb2lab``), each
channel's histogram is matched (``skimage.exposure.match_histograms``) to the original's pixels of the same area (the
input image before inpainting; pixels added by ``--extend`` are not original, so the reference is the original pixels
of the area, or the whole original image when the area holds none), and converted back (``lab2rgb``). Every other
pixel is left as it is, bit for bit.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np


def match_colours(image: np.ndarray, reference: np.ndarray, region: np.ndarray) -> np.ndarray:
    """``image`` (uint8 (H, W, 3)) with the pixels of ``region`` (bool (H, W)) histogram-matched in LAB to
    ``reference`` (uint8 pixels (..., 3), any number); the other pixels unchanged."""
    from skimage.color import lab2rgb, rgb2lab
    from skimage.exposure import match_histograms

    image = np.asarray(image, dtype=np.uint8)
    region = np.asarray(region, dtype=bool)
    reference = np.asarray(reference, dtype=np.uint8).reshape(1, -1, 3)
    if not region.any() or reference.shape[1] == 0:
        return image.copy()
    source = rgb2lab(image[region].reshape(1, -1, 3))
    matched = match_histograms(source, rgb2lab(reference), channel_axis=-1)
    with warnings.catch_warnings():   # matched LAB values outside the sRGB gamut are clipped, as lab2rgb says
        warnings.simplefilter("ignore", UserWarning)
        rgb = np.clip(lab2rgb(matched), 0.0, 1.0)
    out = image.copy()
    out[region] = np.rint(rgb.reshape(-1, 3) * 255).astype(np.uint8)
    return out


def match_to_original(composed: np.ndarray, original: np.ndarray, weights: np.ndarray,
                      added: Optional[np.ndarray] = None) -> np.ndarray:
    """``--color-match`` of a pasted-back result: the area with ``weights`` > 0 matched to ``original`` (the canvas
    before inpainting) in that area, leaving out the pixels ``added`` by ``--extend`` (bool (H, W)); when the area
    has no original pixel, to every original pixel."""
    region = np.asarray(weights) > 0
    genuine = np.ones(region.shape, dtype=bool) if added is None else ~np.asarray(added, dtype=bool)
    original = np.asarray(original, dtype=np.uint8)
    reference = original[region & genuine]
    if reference.shape[0] == 0:
        reference = original[genuine]
    return match_colours(composed, reference, region)


def match_job(job, images):
    """``--color-match`` of a prepared job's outputs (a :class:`requests.Prepared`): pasted back, each matched by
    :func:`match_to_original` (the margins of ``--extend`` left out of the reference); with paste-back off, each raw
    output as a whole against the canvas's pixels in the region box."""
    canvas = np.asarray(job.image)
    if not job.request.paste_back:
        x0, y0, x1, y1 = job.plan.region_box
        region = canvas[y0:y1, x0:x1]
        return [match_colours(image, region, np.ones(image.shape[:2], dtype=bool)) for image in images]
    added = None
    if job.request.extend is not None:
        added = job.request.extend.pad(np.zeros(job.input_size, dtype=bool), True)
    return [match_to_original(out, canvas, job.blend, added) for out in images]
