"""The two samplers, in numpy on the host: diffusers' UnCLIPScheduler (prior) and DDIMScheduler (decoder).

Arithmetic follows diffusers' float32 tensors; betas of the cosine schedule are computed in float64 first,
as diffusers does in Python floats. Noise comes from the caller (the noise contract), never from here.
"""
from __future__ import annotations

import math

import numpy as np

f32 = np.float32


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> np.ndarray:
    """``squaredcos_cap_v2``: beta_i = min(1 - abar(t_{i+1}) / abar(t_i), max_beta), abar(t) = cos^2((t+0.008)/1.008 pi/2)."""
    def abar(t):
        return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2

    n = num_train_timesteps
    return np.array([min(1 - abar((i + 1) / n) / abar(i / n), max_beta) for i in range(n)], dtype=f32)


def torch_linspace_f32(start: float, end: float, steps: int) -> np.ndarray:
    """``torch.linspace(start, end, steps, dtype=float32)`` value for value (it fills from both ends)."""
    start, end = f32(start), f32(end)
    step = f32((end - start) / f32(steps - 1))
    idx = np.arange(steps)
    half = steps // 2
    out = np.empty(steps, dtype=f32)
    out[:half] = start + step * idx[:half].astype(f32)
    out[half:] = end - step * (steps - 1 - idx[half:]).astype(f32)
    return out


def make_betas(config: dict) -> np.ndarray:
    schedule = config.get("beta_schedule", "linear")
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=f32)
    if schedule == "linear":
        return torch_linspace_f32(config.get("beta_start", 0.0001), config.get("beta_end", 0.02), n)
    if schedule == "scaled_linear":
        return torch_linspace_f32(config.get("beta_start", 0.0001) ** 0.5, config.get("beta_end", 0.02) ** 0.5, n) ** 2
    if schedule == "squaredcos_cap_v2":
        return cosine_betas(n)
    raise ValueError(f"unsupported beta_schedule {schedule!r}")


class UnCLIPScheduler:
    """diffusers' UnCLIPScheduler with ``variance_type`` fixed_small_log and sample (or epsilon) prediction."""

    def __init__(self, config: dict):
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.variance_type = config.get("variance_type", "fixed_small_log")
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        if config.get("beta_schedule", "squaredcos_cap_v2") != "squaredcos_cap_v2":
            raise ValueError("UnCLIPScheduler only supports beta_schedule 'squaredcos_cap_v2'")
        if self.variance_type != "fixed_small_log":
            raise ValueError(f"unsupported UnCLIP variance_type {self.variance_type!r} (only fixed_small_log)")
        if self.prediction_type not in ("sample", "epsilon"):
            raise ValueError(f"unsupported UnCLIP prediction_type {self.prediction_type!r}")
        self.betas = cosine_betas(self.num_train_timesteps)
        self.alphas = (f32(1.0) - self.betas).astype(f32)
        self.alphas_cumprod = np.cumprod(self.alphas, dtype=f32)
        self.init_noise_sigma = 1.0

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        if num_inference_steps < 2:
            raise ValueError("the UnCLIP prior needs at least 2 inference steps")
        ratio = (self.num_train_timesteps - 1) / (num_inference_steps - 1)
        return (np.arange(num_inference_steps) * ratio).round()[::-1].copy().astype(np.int64)

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, prev_timestep=None, noise=None):
        """One reverse step; ``noise`` (same shape as the sample) is required when t > 0."""
        t = int(t)
        prev_t = t - 1 if prev_timestep is None else int(prev_timestep)
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else f32(1.0)
        beta_prod_t = f32(1.0) - abar_t
        beta_prod_prev = f32(1.0) - abar_prev
        if prev_t == t - 1:
            beta, alpha = self.betas[t], self.alphas[t]
        else:
            beta = f32(1.0) - abar_t / abar_prev
            alpha = f32(1.0) - beta
        if self.prediction_type == "sample":
            x0 = model_output
        else:
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(abar_t)
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        coef_x0 = np.sqrt(abar_prev) * beta / beta_prod_t
        coef_x = np.sqrt(alpha) * beta_prod_prev / beta_prod_t
        prev = coef_x0 * x0 + coef_x * sample
        if t > 0:
            if noise is None:
                raise ValueError("UnCLIP step with t > 0 needs noise")
            variance = beta_prod_prev / beta_prod_t * beta
            sigma = np.exp(f32(0.5) * np.log(np.maximum(variance, f32(1e-20))))
            prev = prev + sigma * noise
        return prev.astype(f32)


class DDIMScheduler:
    """diffusers' DDIMScheduler, eta = 0 (deterministic), epsilon / sample / v prediction."""

    def __init__(self, config: dict):
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.prediction_type = config.get("prediction_type", "epsilon")
        self.timestep_spacing = config.get("timestep_spacing", "leading")
        self.steps_offset = int(config.get("steps_offset", 0))
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        if config.get("thresholding", False):
            raise ValueError("DDIM thresholding is not supported")
        if config.get("rescale_betas_zero_snr", False):
            raise ValueError("DDIM rescale_betas_zero_snr is not supported")
        if self.prediction_type not in ("epsilon", "sample", "v_prediction"):
            raise ValueError(f"unsupported DDIM prediction_type {self.prediction_type!r}")
        self.betas = make_betas(config)
        self.alphas_cumprod = np.cumprod((f32(1.0) - self.betas).astype(f32), dtype=f32)
        self.final_alpha_cumprod = f32(1.0) if config.get("set_alpha_to_one", True) else self.alphas_cumprod[0]
        self.init_noise_sigma = 1.0
        self.num_inference_steps = None

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        n, T = int(num_inference_steps), self.num_train_timesteps
        if not 1 <= n <= T:
            raise ValueError(f"DDIM steps must be between 1 and {T}")
        self.num_inference_steps = n
        if self.timestep_spacing == "leading":
            ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
        elif self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
        else:
            raise ValueError(f"unsupported timestep_spacing {self.timestep_spacing!r}")
        return ts.copy()

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray) -> np.ndarray:
        t = int(t)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = f32(1.0) - abar_t
        if self.prediction_type == "epsilon":
            x0 = (sample - np.sqrt(beta_prod_t) * model_output) / np.sqrt(abar_t)
            eps = model_output
        elif self.prediction_type == "sample":
            x0 = model_output
            eps = (sample - np.sqrt(abar_t) * x0) / np.sqrt(beta_prod_t)
        else:
            x0 = np.sqrt(abar_t) * sample - np.sqrt(beta_prod_t) * model_output
            eps = np.sqrt(abar_t) * model_output + np.sqrt(beta_prod_t) * sample
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        prev = np.sqrt(abar_prev) * x0 + np.sqrt(f32(1.0) - abar_prev) * eps
        return prev.astype(f32)
