"""Schedulers, noise contract and the decoder's mask preparation against diffusers' recorded intermediates."""
import json

import numpy as np
import pytest

from conftest import FIXTURE, assert_scaled
from kandinsky_cli.inpaint_pipeline import erode_keep_mask, get_new_h_w, nearest_resize, preprocess_mask
from kandinsky_cli.noise import Noise
from kandinsky_cli.schedulers import DDIMScheduler, UnCLIPScheduler, torch_linspace_f32


def _config(component):
    return json.loads((FIXTURE / component / "scheduler" / "scheduler_config.json").read_text())


def _cases(debug, prefix):
    return sorted({k.split("/")[0] for k in debug if k.startswith(prefix)})


def test_unclip_timesteps_and_steps(golden):
    dbg = golden("debug_intermediates")
    sched = UnCLIPScheduler(_config("prior"))
    assert sched.timesteps(25).tolist()[:4] == [999, 957, 916, 874]
    assert 166 in sched.timesteps(25) and 500 in sched.timesteps(25) and 832 in sched.timesteps(25)
    for case in _cases(dbg, "prior_case"):
        ts = sched.timesteps(len(dbg[f"{case}/timesteps"]))
        np.testing.assert_array_equal(ts, dbg[f"{case}/timesteps"])
        noises = sorted(k for k in dbg if k.startswith(f"{case}/noise_"))
        assert len(noises) == 1 + int((ts > 0).sum())
        for i, t in enumerate(ts):
            prev = int(ts[i + 1]) if i + 1 < len(ts) else None
            noise = dbg[noises[i + 1]] if t > 0 else None
            out = sched.step(dbg[f"{case}/step_model_out_cfg"][i], int(t), dbg[f"{case}/step_latents_in"][i],
                             prev, noise)
            assert_scaled(out, dbg[f"{case}/step_latents_out"][i], 1e-5, f"{case} step {i}")


def test_unclip_needs_noise_and_two_steps():
    sched = UnCLIPScheduler(_config("prior"))
    with pytest.raises(ValueError):
        sched.timesteps(1)
    with pytest.raises(ValueError):
        sched.step(np.zeros((1, 4), np.float32), 500, np.zeros((1, 4), np.float32), 250, None)


def test_ddim_timesteps_and_steps(golden):
    dbg = golden("debug_intermediates")
    sched = DDIMScheduler(_config("inpaint"))
    assert sched.timesteps(100)[[0, 1, -1]].tolist() == [991, 981, 1]
    for case in _cases(dbg, "inpaint_case"):
        ts = sched.timesteps(len(dbg[f"{case}/timesteps"]))
        np.testing.assert_array_equal(ts, dbg[f"{case}/timesteps"])
        latents = dbg[f"{case}/noise_00"]
        for i, t in enumerate(ts):
            latents = sched.step(dbg[f"{case}/step_eps_guided"][i], int(t), latents)
            assert_scaled(latents, dbg[f"{case}/step_latents_out"][i], 1e-5, f"{case} step {i}")


def test_torch_linspace_matches_float64_within_an_ulp():
    got = torch_linspace_f32(0.00085, 0.012, 1000)
    ref = np.linspace(0.00085, 0.012, 1000)
    assert got.dtype == np.float32 and np.abs(got - ref).max() < 1e-9


def test_noise_contract(golden, cases):
    dbg = golden("debug_intermediates")
    for i, case in enumerate(cases["prior_cases"]):
        noise = Noise(case["noise_seed"])
        for k in sorted(k for k in dbg if k.startswith(f"prior_case{i}/noise_")):
            np.testing.assert_array_equal(noise.randn(dbg[k].shape), dbg[k])


def test_decoder_mask_preparation(golden, cases):
    dbg = golden("debug_intermediates")
    inputs = golden("inpaint_pipeline")
    for i, case in enumerate(cases["inpaint_cases"]):
        mask = inputs[f"case{i}/input/mask_image"]
        if case["input_kind"] == "pil":
            from PIL import Image
            mask = Image.fromarray((mask * 255).astype(np.uint8), "L")
        keep = preprocess_mask(mask, case["height"], case["width"])
        h, w = dbg[f"inpaint_case{i}/unet_mask"].shape[-2:]
        prepared = erode_keep_mask(nearest_resize(keep, h, w))
        np.testing.assert_array_equal(prepared[0], dbg[f"inpaint_case{i}/unet_mask"][0])


def _erode_loop(mask):
    """The pipeline's own per-pixel loop, as a slow reference for the vectorised erosion."""
    old, new = mask.copy(), mask.copy()
    h, w = mask.shape
    for i in range(h):
        for j in range(w):
            if old[i, j] == 1:
                continue
            for di, dj in ((-1, 0), (0, -1), (-1, -1), (1, 0), (0, 1), (1, 1)):
                if 0 <= i + di < h and 0 <= j + dj < w:
                    new[i + di, j + dj] = 0
    return new


def test_erosion_matches_loop_on_random_masks():
    rng = np.random.default_rng(0)
    for _ in range(20):
        h, w = rng.integers(1, 12, size=2)
        mask = (rng.random((h, w)) > 0.3).astype(np.float32)
        np.testing.assert_array_equal(erode_keep_mask(mask), _erode_loop(mask))


def test_latent_size():
    assert get_new_h_w(768, 768, 8) == (96, 96)
    assert get_new_h_w(512, 640, 8) == (64, 80)
    assert get_new_h_w(64, 96, 2) == (32, 48)
