"""``--strength`` against diffusers' own schedulers (tests/fixtures/strength_goldens.npz, made by
make_strength_goldens.py): the truncated schedule, the noised start latents, the noised original of every remaining
step (soft inpainting's reset) and the steps taken from there, for all five samplers."""
import json
from pathlib import Path

import numpy as np
import pytest

from conftest import FIXTURE, assert_scaled
from kandinsky_cli.schedulers import DECODER_SCHEDULERS, make_decoder_scheduler, strength_start, strength_timesteps

HERE = Path(__file__).parent / "fixtures"
META = json.loads((HERE / "strength_goldens.json").read_text(encoding="utf-8"))
CONFIG = json.loads((FIXTURE / "inpaint" / "scheduler" / "scheduler_config.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def ref():
    with np.load(HERE / "strength_goldens.npz") as f:
        return {k: f[k] for k in f.files}


def test_goldens_cover_every_sampler_at_several_strengths():
    for name in DECODER_SCHEDULERS:
        strengths = {c["strength"] for c in META["cases"] if c["scheduler"] == name}
        assert len(strengths) >= 5 and 1.0 in strengths and min(strengths) <= 0.1, name


@pytest.mark.parametrize("name", DECODER_SCHEDULERS)
def test_strength_matches_diffusers(ref, name):
    x0, eps = ref["image_latents"], ref["noise"]
    for case in (c for c in META["cases"] if c["scheduler"] == name):
        key, what = case["key"], f"{name} steps={case['steps']} strength={case['strength']}"
        sampler = make_decoder_scheduler(name, CONFIG)
        timesteps, start = strength_timesteps(sampler, case["steps"], case["strength"])
        np.testing.assert_array_equal(timesteps, ref[f"{key}/timesteps"], err_msg=what)
        assert len(timesteps) == case["remaining"]
        latents = sampler.add_noise(x0, eps, start)
        assert_scaled(latents, ref[f"{key}/start"], 1e-6, what + " start")
        rng = np.random.default_rng(case["noise_seed"])
        for i, t in enumerate(timesteps):
            assert_scaled(sampler.add_noise(x0, eps, start + i), ref[f"{key}/noised"][i], 1e-6, f"{what} noised {i}")
            noise = rng.standard_normal(latents.shape).astype(np.float32) if sampler.needs_noise(int(t)) else None
            latents = sampler.step(ref[f"{key}/model_out"][i], int(t), latents, noise)
            assert_scaled(latents, ref[f"{key}/steps"][i], 1e-5, f"{what} step {i}")


def test_strength_start_rule():
    assert strength_start(10, 1.0) == 0
    assert strength_start(10, 0.55) == 5          # int(5.5) = 5 steps run
    assert strength_start(10, 0.3) == 7           # 10 * 0.3 = 3.0000000000000004 -> 3
    assert strength_start(10, 0.01) == 9          # int(0.1) = 0 -> at least one step
    assert strength_start(25, 1e-9) == 24


@pytest.mark.parametrize("name", DECODER_SCHEDULERS)
def test_tiny_strength_runs_the_last_step(name):
    sampler = make_decoder_scheduler(name, CONFIG)
    full = sampler.timesteps(10)
    timesteps, start = strength_timesteps(make_decoder_scheduler(name, CONFIG), 10, 0.001)
    assert start == 9 and timesteps.tolist() == full[-1:].tolist()


@pytest.mark.parametrize("name", DECODER_SCHEDULERS)
def test_strength_one_is_the_whole_schedule(name):
    sampler = make_decoder_scheduler(name, CONFIG)
    full = sampler.timesteps(25)
    timesteps, start = strength_timesteps(make_decoder_scheduler(name, CONFIG), 25, 1.0)
    assert start == 0 and timesteps.tolist() == full.tolist()
