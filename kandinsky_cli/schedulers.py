"""The samplers, in numpy on the host: diffusers' UnCLIPScheduler (prior) and the decoder's DDIMScheduler,
DDPMScheduler and DPMSolverMultistepScheduler (DPM-Solver++ 2M, its Karras-sigma and SDE variants).

Arithmetic follows diffusers' float32 tensors; betas of the cosine schedule are computed in float64 first,
as diffusers does in Python floats. Scalars are kept as numpy float32 with float32 constants (numpy < 2
would promote ``np.float32 * 0.5`` to float64, torch keeps float32). Noise comes from the caller (the noise
contract), never from here.

Decoder schedulers share one interface, used by the inpaint pipeline's loop:

* ``init_noise_sigma``: scale of the initial latents;
* ``uses_variance``: ``step`` takes the UNet's variance channels after the eps channels;
* ``timesteps(n)``: the n timesteps, in order (also resets a multistep scheduler's history);
* ``needs_noise(t)``: whether the step at ``t`` takes a standard-normal draw of the latents' shape;
* ``step(model_output, t, sample, noise=None)``: the next latents.
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


def torch_cumprod_alphas(betas: np.ndarray) -> np.ndarray:
    """``torch.cumprod(1 - betas)`` value for value: torch accumulates float32 products in float64 on the CPU."""
    return np.cumprod((f32(1.0) - betas).astype(np.float64)).astype(f32)


def spaced_timesteps(spacing: str, num_inference_steps: int, num_train_timesteps: int,
                     steps_offset: int = 0) -> np.ndarray:
    """DDIM/DDPM ``set_timesteps``: n timesteps out of T, descending, by diffusers' ``timestep_spacing`` rule."""
    n, T = int(num_inference_steps), int(num_train_timesteps)
    if not 1 <= n <= T:
        raise ValueError(f"the number of steps must be between 1 and {T}")
    if spacing == "leading":
        ts = (np.arange(n) * (T // n)).round()[::-1].astype(np.int64) + steps_offset
    elif spacing == "trailing":
        ts = np.round(np.arange(T, 0, -T / n)).astype(np.int64) - 1
    elif spacing == "linspace":
        ts = np.linspace(0, T - 1, n).round()[::-1].astype(np.int64)
    else:
        raise ValueError(f"unsupported timestep_spacing {spacing!r}")
    if ts[0] >= T:  # 'leading' with steps_offset 1 and n = T: diffusers fails indexing the schedule
        raise ValueError(f"the schedule would start at timestep {ts[0]}, past the last training timestep {T - 1}: "
                         "use fewer steps")
    return ts.copy()


def x0_from_eps(sample: np.ndarray, eps: np.ndarray, abar_t) -> np.ndarray:
    """The predicted clean sample of an epsilon prediction: (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)."""
    return (sample - np.sqrt(f32(1.0) - abar_t) * eps) / np.sqrt(abar_t)


def posterior_mean(x0: np.ndarray, sample: np.ndarray, abar_t, abar_prev, alpha, beta) -> np.ndarray:
    """Mean of q(x_prev | x_t, x0) (formula (7) of the DDPM paper); alpha, beta of the step t -> prev."""
    beta_prod_t = f32(1.0) - abar_t
    coef_x0 = np.sqrt(abar_prev) * beta / beta_prod_t
    coef_x = np.sqrt(alpha) * (f32(1.0) - abar_prev) / beta_prod_t
    return coef_x0 * x0 + coef_x * sample


def dynamic_threshold(x0: np.ndarray, ratio: float, max_value: float) -> np.ndarray:
    """Imagen's dynamic thresholding, per sample: s = the ``ratio`` quantile of |x0| clipped to [1, max_value];
    x0 is clipped to [-s, s] and divided by s (diffusers' ``_threshold_sample``)."""
    flat = x0.reshape(x0.shape[0], -1)
    s = np.clip(np.quantile(np.abs(flat), ratio, axis=1), 1.0, max_value).astype(f32)[:, None]
    return (np.clip(flat, -s, s) / s).reshape(x0.shape)


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
        if prev_t == t - 1:
            beta, alpha = self.betas[t], self.alphas[t]
        else:
            beta = f32(1.0) - abar_t / abar_prev
            alpha = f32(1.0) - beta
        x0 = model_output if self.prediction_type == "sample" else x0_from_eps(sample, model_output, abar_t)
        if self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        prev = posterior_mean(x0, sample, abar_t, abar_prev, alpha, beta)
        if t > 0:
            if noise is None:
                raise ValueError("UnCLIP step with t > 0 needs noise")
            variance = (f32(1.0) - abar_prev) / (f32(1.0) - abar_t) * beta
            sigma = np.exp(f32(0.5) * np.log(np.maximum(variance, f32(1e-20))))
            prev = prev + sigma * noise
        return prev.astype(f32)


class DDIMScheduler:
    """diffusers' DDIMScheduler, eta = 0 (deterministic), epsilon / sample / v prediction."""

    uses_variance = False

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
        ts = spaced_timesteps(self.timestep_spacing, num_inference_steps, self.num_train_timesteps, self.steps_offset)
        self.num_inference_steps = len(ts)
        return ts

    def needs_noise(self, t: int) -> bool:
        return False

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, noise=None) -> np.ndarray:
        t = int(t)
        prev_t = t - self.num_train_timesteps // self.num_inference_steps
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else self.final_alpha_cumprod
        beta_prod_t = f32(1.0) - abar_t
        if self.prediction_type == "epsilon":
            x0 = x0_from_eps(sample, model_output, abar_t)
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


# kandinsky-community/kandinsky-2-1 ``ddpm_scheduler/scheduler_config.json``: the decoder folder ships DDIM's only.
KANDINSKY21_DDPM_CONFIG = {
    "beta_end": 0.012, "beta_schedule": "linear", "beta_start": 0.00085, "clip_sample": False,
    "clip_sample_range": 2.0, "dynamic_thresholding_ratio": 0.995, "num_train_timesteps": 1000,
    "prediction_type": "epsilon", "sample_max_value": 2.0, "thresholding": True, "trained_betas": None,
    "variance_type": "learned_range",
}


class DDPMScheduler:
    """diffusers' DDPMScheduler with the learned-range variance of Kandinsky's UNet (its variance channels follow
    the eps channels), epsilon prediction and dynamic thresholding (or clipping) of x0. One noise draw per step
    with t > 0."""

    uses_variance = True

    def __init__(self, config: dict):
        self.num_train_timesteps = int(config.get("num_train_timesteps", 1000))
        self.timestep_spacing = config.get("timestep_spacing", "leading")
        self.steps_offset = int(config.get("steps_offset", 0))
        self.clip_sample = bool(config.get("clip_sample", True))
        self.clip_sample_range = float(config.get("clip_sample_range", 1.0))
        self.thresholding = bool(config.get("thresholding", False))
        self.dynamic_thresholding_ratio = float(config.get("dynamic_thresholding_ratio", 0.995))
        self.sample_max_value = float(config.get("sample_max_value", 1.0))
        if config.get("variance_type", "fixed_small") != "learned_range":
            raise ValueError(f"unsupported DDPM variance_type {config.get('variance_type')!r} (only learned_range)")
        if config.get("prediction_type", "epsilon") != "epsilon":
            raise ValueError(f"unsupported DDPM prediction_type {config['prediction_type']!r} (only epsilon)")
        if config.get("rescale_betas_zero_snr", False):
            raise ValueError("DDPM rescale_betas_zero_snr is not supported")
        self.alphas_cumprod = torch_cumprod_alphas(make_betas(config))
        self.init_noise_sigma = 1.0
        self._timesteps = None

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        self._timesteps = spaced_timesteps(self.timestep_spacing, num_inference_steps, self.num_train_timesteps,
                                           self.steps_offset)
        return self._timesteps.copy()

    def needs_noise(self, t: int) -> bool:
        return int(t) > 0

    def _previous_timestep(self, t: int) -> int:
        i = int(np.flatnonzero(self._timesteps == t)[0])
        return int(self._timesteps[i + 1]) if i + 1 < len(self._timesteps) else -1

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, noise=None) -> np.ndarray:
        """``model_output``: eps channels then variance channels (2 x the sample's); ``noise`` needed when t > 0."""
        t, c = int(t), sample.shape[1]
        if model_output.shape[1] != 2 * c:
            raise ValueError(f"DDPM with learned_range variance needs {2 * c} model channels "
                             f"(eps + variance), got {model_output.shape[1]}")
        eps, predicted_variance = model_output[:, :c], model_output[:, c:]
        prev_t = self._previous_timestep(t)
        abar_t = self.alphas_cumprod[t]
        abar_prev = self.alphas_cumprod[prev_t] if prev_t >= 0 else f32(1.0)
        alpha = abar_t / abar_prev
        beta = f32(1.0) - alpha
        x0 = x0_from_eps(sample, eps, abar_t)
        if self.thresholding:
            x0 = dynamic_threshold(x0, self.dynamic_thresholding_ratio, self.sample_max_value)
        elif self.clip_sample:
            x0 = np.clip(x0, -self.clip_sample_range, self.clip_sample_range)
        prev = posterior_mean(x0, sample, abar_t, abar_prev, alpha, beta)
        if t > 0:
            if noise is None:
                raise ValueError("DDPM step with t > 0 needs noise")
            log_variance = self._learned_range_log_variance(abar_t, abar_prev, beta, predicted_variance)
            prev = prev + np.exp(f32(0.5) * log_variance) * noise
        return prev.astype(f32)

    @staticmethod
    def _learned_range_log_variance(abar_t, abar_prev, beta, predicted_variance: np.ndarray) -> np.ndarray:
        """log variance between the posterior's (frac 0) and beta_t (frac 1), frac = (model output + 1) / 2."""
        posterior = np.maximum((f32(1.0) - abar_prev) / (f32(1.0) - abar_t) * beta, f32(1e-20))
        min_log, max_log = np.log(posterior), np.log(beta)
        frac = (predicted_variance + f32(1.0)) / f32(2.0)
        return frac * max_log + (f32(1.0) - frac) * min_log


def karras_sigmas(sigma_min: float, sigma_max: float, num_inference_steps: int, rho: float = 7.0) -> np.ndarray:
    """Karras et al. (2022) noise levels: linear in sigma^(1/rho) from sigma_max down to sigma_min (float64)."""
    ramp = np.linspace(0, 1, num_inference_steps)
    min_inv_rho, max_inv_rho = float(sigma_min) ** (1 / rho), float(sigma_max) ** (1 / rho)
    return (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho


def sigma_to_t(sigmas: np.ndarray, log_sigmas: np.ndarray) -> np.ndarray:
    """Fractional training timesteps of ``sigmas``, interpolating linearly in log sigma between the two
    neighbouring entries of the (ascending) float32 ``log_sigmas`` (diffusers' ``_sigma_to_t``, float64 as
    numpy 2 computes it there)."""
    log_sigma = np.log(np.maximum(np.asarray(sigmas, dtype=np.float64), 1e-10))
    dists = log_sigma[None, :] - log_sigmas[:, None].astype(np.float64)
    low_idx = np.cumsum(dists >= 0, axis=0).argmax(axis=0).clip(max=log_sigmas.shape[0] - 2)
    high_idx = low_idx + 1
    low, high = log_sigmas[low_idx], log_sigmas[high_idx]
    w = np.clip((low.astype(np.float64) - log_sigma) / (low - high).astype(np.float64), 0, 1)
    return (1 - w) * low_idx + w * high_idx


class DPMSolverMultistepScheduler:
    """diffusers' DPMSolverMultistepScheduler: DPM-Solver++ (``dpmsolver++``) or its stochastic form
    (``sde-dpmsolver++``, one noise draw per step), midpoint solver of order 1 or 2, epsilon prediction,
    optionally Karras sigmas. Multistep: a step uses the previous step's x0 prediction, so ``timesteps(n)``
    starts a new run and the steps must then be taken in order."""

    uses_variance = False
    # diffusers' defaults for every key read here; any other key of the config (e.g. DDIM's) is ignored
    DEFAULTS = dict(num_train_timesteps=1000, beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                    trained_betas=None, solver_order=2, prediction_type="epsilon", thresholding=False,
                    algorithm_type="dpmsolver++", solver_type="midpoint", lower_order_final=True,
                    euler_at_final=False, use_karras_sigmas=False, use_exponential_sigmas=False,
                    use_beta_sigmas=False, use_lu_lambdas=False, use_flow_sigmas=False, final_sigmas_type="zero",
                    lambda_min_clipped=-math.inf, variance_type=None, timestep_spacing="linspace", steps_offset=0,
                    rescale_betas_zero_snr=False, use_dynamic_shifting=False)
    # the values implemented here; others are rejected rather than computed differently from diffusers
    SUPPORTED = dict(solver_order=(1, 2), prediction_type=("epsilon",), thresholding=(False,),
                     algorithm_type=("dpmsolver++", "sde-dpmsolver++"), solver_type=("midpoint",),
                     use_exponential_sigmas=(False,), use_beta_sigmas=(False,), use_lu_lambdas=(False,),
                     use_flow_sigmas=(False,), final_sigmas_type=("zero", "sigma_min"),
                     lambda_min_clipped=(-math.inf,), variance_type=(None,),
                     timestep_spacing=("linspace", "leading", "trailing"), rescale_betas_zero_snr=(False,),
                     use_dynamic_shifting=(False,))

    def __init__(self, config: dict):
        cfg = {key: config.get(key, default) for key, default in self.DEFAULTS.items()}
        for key, allowed in self.SUPPORTED.items():
            if cfg[key] not in allowed:
                raise ValueError(f"unsupported DPM-Solver {key} {cfg[key]!r} (supported: "
                                 f"{', '.join(map(repr, allowed))})")
        self.config = cfg
        self.num_train_timesteps = int(cfg["num_train_timesteps"])
        self.sde = cfg["algorithm_type"] == "sde-dpmsolver++"
        alphas_cumprod = torch_cumprod_alphas(make_betas(cfg))
        # noise level of every training timestep in the x / alpha parametrisation: sqrt((1 - abar) / abar)
        self.train_sigmas = np.sqrt((f32(1.0) - alphas_cumprod) / alphas_cumprod)
        self.init_noise_sigma = 1.0
        self.sigmas = None

    @classmethod
    def from_config(cls, config: dict, **overrides) -> "DPMSolverMultistepScheduler":
        """diffusers' ``from_config``: the keys this scheduler knows from ``config`` (another scheduler's, such as
        the decoder folder's DDIM config), its defaults for the rest, ``overrides`` on top."""
        return cls({**config, **overrides})

    def timesteps(self, num_inference_steps: int) -> np.ndarray:
        """Timesteps for n steps; also sets ``sigmas`` (n + 1 noise levels, the last one final_sigmas_type's)."""
        n, cfg = int(num_inference_steps), self.config
        if n < 1:
            raise ValueError("the number of steps must be at least 1")
        if cfg["use_karras_sigmas"]:
            sigmas = karras_sigmas(self.train_sigmas[0], self.train_sigmas[-1], n)
            ts = sigma_to_t(sigmas, np.log(self.train_sigmas))
            if cfg["beta_schedule"] != "squaredcos_cap_v2":
                ts = ts.round()
            ts = ts.astype(np.int64)
        else:
            ts = self._spaced_timesteps(n)
            sigmas = np.interp(ts, np.arange(self.num_train_timesteps), self.train_sigmas)
        if n > 1 and ts[1] == ts[0]:
            # diffusers would start such a schedule at its second entry and run past its end
            raise ValueError(f"{n} steps repeat the first timestep {ts[0]}; use fewer steps")
        last = f32(0.0) if cfg["final_sigmas_type"] == "zero" else self.train_sigmas[0]
        self.sigmas = np.concatenate([sigmas, [last]]).astype(f32)
        self._timesteps = ts
        self._step_index = 0
        self._previous_x0 = None
        return ts.copy()

    def _spaced_timesteps(self, n: int) -> np.ndarray:
        """'leading' and 'linspace' space n + 1 points and drop the last (t = 0 side); 'trailing' is DDIM's rule."""
        spacing, T = self.config["timestep_spacing"], self.num_train_timesteps
        if spacing == "trailing":
            return spaced_timesteps(spacing, n, T)
        if n >= T:
            raise ValueError(f"DPM-Solver with timestep_spacing {spacing!r} takes at most {T - 1} steps")
        return spaced_timesteps(spacing, n + 1, T, int(self.config["steps_offset"]))[:-1]

    def needs_noise(self, t: int) -> bool:
        return self.sde

    def _alpha_sigma_lambda(self, index: int):
        """alpha_t, sigma_t and the log-SNR lambda_t = log(alpha_t) - log(sigma_t) of ``sigmas[index]``."""
        sigma = self.sigmas[index]
        alpha_t = f32(1.0) / np.sqrt(sigma * sigma + f32(1.0))
        sigma_t = sigma * alpha_t
        return alpha_t, sigma_t, np.log(alpha_t) - np.log(sigma_t)

    def step(self, model_output: np.ndarray, t: int, sample: np.ndarray, noise=None) -> np.ndarray:
        """One step from ``sigmas[i]`` to ``sigmas[i + 1]`` (i counts the steps taken since ``timesteps``)."""
        if self.sigmas is None:
            raise ValueError("call timesteps() before step()")
        if self.sde and noise is None:
            raise ValueError("sde-dpmsolver++ steps need noise")
        i, cfg, n = self._step_index, self.config, len(self._timesteps)
        alpha_s, sigma_s, _ = self._alpha_sigma_lambda(i)
        x0 = (sample - sigma_s * model_output) / alpha_s
        first_order_last = i == n - 1 and (cfg["euler_at_final"] or (cfg["lower_order_final"] and n < 15)
                                           or cfg["final_sigmas_type"] == "zero")
        second_order = cfg["solver_order"] == 2 and self._previous_x0 is not None and not first_order_last
        # as in torch: a final sigma of 0 has lambda = +inf (e^-h = 0); a repeated sigma gives h = 0, r0 = inf
        with np.errstate(divide="ignore"):
            prev = self._update(i, sample, x0, self._previous_x0 if second_order else None, noise)
        self._previous_x0 = x0
        self._step_index += 1
        return prev.astype(f32)

    def _update(self, i: int, sample: np.ndarray, x0: np.ndarray, previous_x0, noise) -> np.ndarray:
        """x at sigma_{i+1}: first order (DDIM-like) without ``previous_x0``, else the midpoint 2M update.

        DPM-Solver++ adds b x0 with b = alpha_t (1 - e^-h); the SDE form decays the sample by an extra e^-h,
        uses b = alpha_t (1 - e^-2h) and adds sigma_t sqrt(1 - e^-2h) noise. h = lambda_t - lambda_s.
        """
        alpha_t, sigma_t, lambda_t = self._alpha_sigma_lambda(i + 1)
        _, sigma_s, lambda_s = self._alpha_sigma_lambda(i)
        h = lambda_t - lambda_s
        if self.sde:
            a, b = sigma_t / sigma_s * np.exp(-h), alpha_t * (f32(1.0) - np.exp(f32(-2.0) * h))
        else:
            a, b = sigma_t / sigma_s, alpha_t * (f32(1.0) - np.exp(-h))
        x = a * sample + b * x0
        if previous_x0 is not None:
            _, _, lambda_prev = self._alpha_sigma_lambda(i - 1)
            r0 = (lambda_s - lambda_prev) / h
            x = x + f32(0.5) * b * ((f32(1.0) / r0) * (x0 - previous_x0))
        if self.sde:
            x = x + sigma_t * np.sqrt(f32(1.0) - np.exp(f32(-2.0) * h)) * noise
        return x


# decoder sampler names (the CLI's --scheduler values)
#: The names of --scheduler, the default first among equals in options.py.
DECODER_SCHEDULERS = ("ddim", "ddpm", "dpmpp-2m", "dpmpp-2m-karras", "dpmpp-2m-sde")
# DPM-Solver++ samplers: overrides on ``from_config(decoder folder's DDIM config)``, as a diffusers user swaps one in
_DPM_OVERRIDES = {"dpmpp-2m": {}, "dpmpp-2m-karras": {"use_karras_sigmas": True},
                  "dpmpp-2m-sde": {"algorithm_type": "sde-dpmsolver++"}}


def make_decoder_scheduler(name: str, folder_config: dict):
    """A fresh decoder scheduler by name; ``folder_config`` is the decoder folder's scheduler_config.json (DDIM).
    DDPM uses the published Kandinsky 2.1 DDPM config instead."""
    if name == "ddim":
        return DDIMScheduler(folder_config)
    if name == "ddpm":
        return DDPMScheduler(KANDINSKY21_DDPM_CONFIG)
    if name in _DPM_OVERRIDES:
        return DPMSolverMultistepScheduler.from_config(folder_config, **_DPM_OVERRIDES[name])
    raise ValueError(f"unknown scheduler {name!r}; choose one of: {', '.join(DECODER_SCHEDULERS)}")
