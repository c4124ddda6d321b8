"""Schedulers, noise contract and the decoder's mask preparation against diffusers' recorded intermediates."""
import json

import numpy as np
import pytest

from conftest import FIXTURE, assert_scaled
from kandinsky_cli.inpaint_pipeline import erode_keep_mask, get_new_h_w, nearest_resize, preprocess_mask
from kandinsky_cli.noise import Noise
from kandinsky_cli.schedulers import (DECODER_SCHEDULERS, KANDINSKY21_DDPM_CONFIG, DDIMScheduler, DDPMScheduler,
                                     DPMSolverMultistepScheduler, UnCLIPScheduler, dynamic_threshold,
                                     make_decoder_scheduler, torch_linspace_f32)


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


# ---- decoder samplers (DDPM, DPM-Solver++); their pipeline runs are in test_samplers.py ----

def _linear_train_sigmas(config):
    """sqrt((1 - abar) / abar) of the linear beta schedule, in float64: a reference independent of the port.
    diffusers' float32 1 - abar loses up to ~4e-5 (relative) near t = 0, hence rtol 1e-4 below."""
    betas = np.linspace(config["beta_start"], config["beta_end"], config["num_train_timesteps"])
    abar = np.cumprod(1.0 - betas)
    return np.sqrt((1.0 - abar) / abar)


def test_decoder_timesteps_match_diffusers(golden):
    meta = json.loads((FIXTURE / "golden" / "schedulers.json").read_text())
    assert {case["scheduler"] for case in meta["cases"]} == set(DECODER_SCHEDULERS)
    for case in meta["cases"]:
        sched = make_decoder_scheduler(case["scheduler"], _config("inpaint"))
        np.testing.assert_array_equal(sched.timesteps(case["num_inference_steps"]),
                                      golden("schedulers")[f"{case['key']}/timesteps"], err_msg=case["key"])


@pytest.mark.parametrize("steps", [1, 6, 25])
def test_dpm_sigmas_are_the_training_sigmas_at_the_timesteps(steps):
    sched = make_decoder_scheduler("dpmpp-2m", _config("inpaint"))
    ts = sched.timesteps(steps)
    ref = _linear_train_sigmas(_config("inpaint"))
    assert sched.sigmas.dtype == np.float32 and len(sched.sigmas) == steps + 1 and sched.sigmas[-1] == 0
    np.testing.assert_allclose(sched.sigmas[:-1], ref[ts], rtol=1e-4)


@pytest.mark.parametrize("steps", [2, 6, 13, 50])
def test_karras_sigmas_and_timesteps(steps):
    """sigma_i = (s_max^(1/7) + i / (n - 1) (s_min^(1/7) - s_max^(1/7)))^7 between the training schedule's ends;
    each timestep is the training timestep of its sigma, interpolated in log sigma and rounded."""
    sched = make_decoder_scheduler("dpmpp-2m-karras", _config("inpaint"))
    ts = sched.timesteps(steps)
    ref = _linear_train_sigmas(_config("inpaint"))
    ramp = np.arange(steps) / (steps - 1)
    expected = (ref[-1] ** (1 / 7) + ramp * (ref[0] ** (1 / 7) - ref[-1] ** (1 / 7))) ** 7
    assert len(sched.sigmas) == steps + 1 and sched.sigmas[-1] == 0
    np.testing.assert_allclose(sched.sigmas[:-1], expected, rtol=1e-4)
    t_of_sigma = np.interp(np.log(expected), np.log(ref), np.arange(len(ref)))
    np.testing.assert_array_equal(ts, np.round(t_of_sigma).astype(np.int64))


def test_dpm_final_sigma_min_and_ddim_only_keys():
    """final_sigmas_type 'sigma_min' ends at the smallest training sigma; DDIM-only keys do not matter."""
    cfg = _config("inpaint")
    sched = DPMSolverMultistepScheduler.from_config(cfg, final_sigmas_type="sigma_min")
    sched.timesteps(6)
    np.testing.assert_allclose(sched.sigmas[-1], _linear_train_sigmas(cfg)[0], rtol=1e-4)
    plain = make_decoder_scheduler("dpmpp-2m", cfg)
    other = make_decoder_scheduler("dpmpp-2m", {**cfg, "clip_sample": True, "set_alpha_to_one": True,
                                                "clip_sample_range": 0.5})
    np.testing.assert_array_equal(plain.timesteps(6), other.timesteps(6))
    np.testing.assert_array_equal(plain.sigmas, other.sigmas)


def test_dpm_first_step_is_a_ddim_step():
    """A first-order DPM-Solver++ step is DDIM (eta 0) between the two noise levels: x = alpha x0 + sigma eps,
    with alpha = 1 / sqrt(1 + s^2), sigma = s alpha of the scheduler's sigmas s (float64 reference)."""
    rng = np.random.default_rng(3)
    sample = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    eps = rng.standard_normal((2, 4, 3, 3)).astype(np.float32)
    sched = make_decoder_scheduler("dpmpp-2m", _config("inpaint"))
    ts = sched.timesteps(6)
    s0, s1 = sched.sigmas[:2].astype(np.float64)
    a0, a1 = 1 / np.sqrt(1 + s0 ** 2), 1 / np.sqrt(1 + s1 ** 2)
    x0 = (sample - s0 * a0 * eps) / a0
    assert_scaled(sched.step(eps, ts[0], sample), a1 * x0 + s1 * a1 * eps, 1e-6, "first step")


def test_dynamic_threshold_per_sample():
    """s = the 0.995 quantile of |x0| clipped to [1, 2]: a large sample is clipped to [-2, 2] and halved, a sample
    inside [-1, 1] is left alone."""
    big = np.linspace(-5, 5, 400, dtype=np.float32).reshape(1, 4, 10, 10)
    small = np.linspace(-0.9, 0.9, 400, dtype=np.float32).reshape(1, 4, 10, 10)
    out = dynamic_threshold(np.concatenate([big, small]), 0.995, 2.0)
    np.testing.assert_allclose(out[0], np.clip(big[0], -2, 2) / 2, rtol=1e-6)
    np.testing.assert_allclose(out[1], small[0], rtol=1e-6)


def test_noise_draws_by_step():
    cfg = _config("inpaint")
    draws = {}
    for name in DECODER_SCHEDULERS:
        sched = make_decoder_scheduler(name, cfg)
        draws[name] = [sched.needs_noise(int(t)) for t in sched.timesteps(4)]
    assert draws["ddim"] == draws["dpmpp-2m"] == draws["dpmpp-2m-karras"] == [False] * 4
    assert draws["ddpm"] == [True, True, True, False]          # no noise at the final t = 0
    assert draws["dpmpp-2m-sde"] == [True] * 4
    assert [make_decoder_scheduler(n, cfg).uses_variance for n in DECODER_SCHEDULERS] == \
        [False, True, False, False, False]


def test_unknown_scheduler_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        make_decoder_scheduler("euler", _config("inpaint"))
    assert "euler" in str(err.value) and all(name in str(err.value) for name in DECODER_SCHEDULERS)


@pytest.mark.parametrize("make", [
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, prediction_type="v_prediction"),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, solver_order=3),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, algorithm_type="dpmsolver"),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, solver_type="heun"),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, use_lu_lambdas=True),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, variance_type="learned_range"),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, thresholding=True),
    lambda cfg: DPMSolverMultistepScheduler.from_config(cfg, timestep_spacing="karras"),
    lambda cfg: DDPMScheduler({**KANDINSKY21_DDPM_CONFIG, "variance_type": "fixed_small"}),
    lambda cfg: DDPMScheduler({**KANDINSKY21_DDPM_CONFIG, "prediction_type": "v_prediction"}),
])
def test_unsupported_sampler_configs_are_rejected(make):
    with pytest.raises(ValueError, match="unsupported"):
        make(_config("inpaint"))


def test_sampler_step_counts_out_of_range():
    cfg = _config("inpaint")
    for name in DECODER_SCHEDULERS:
        with pytest.raises(ValueError):
            make_decoder_scheduler(name, cfg).timesteps(0)
    with pytest.raises(ValueError):
        make_decoder_scheduler("dpmpp-2m", cfg).timesteps(1000)   # leading spacing needs n + 1 <= 1000 points
    with pytest.raises(ValueError):
        make_decoder_scheduler("ddpm", cfg).timesteps(1001)
    with pytest.raises(ValueError, match="past the last training timestep"):
        make_decoder_scheduler("ddim", cfg).timesteps(1000)        # steps_offset 1 would start at t = 1000
    assert make_decoder_scheduler("ddim", cfg).timesteps(999)[[0, -1]].tolist() == [999, 1]
    assert make_decoder_scheduler("ddpm", cfg).timesteps(1000)[[0, -1]].tolist() == [999, 0]
