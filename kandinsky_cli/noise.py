"""The noise contract: device-independent seeds.

``--seed N`` means ``rng = numpy.random.default_rng(N)``; every standard-normal draw is
``rng.standard_normal(shape).astype(float32)`` on the host, in call order. The same seed gives the same
result on CPU, GPU and Ascend.

Seed variations (``--variation-seed V --variation-strength W``, A1111's subseeds): the *first* draw (the initial
latents) is, image by image, the spherical interpolation :func:`slerp` from the seed's draw to a draw of the same
shape from ``default_rng(V + k)`` for the k-th image of the batch; every later draw (the per-step noise of ddpm and
dpmpp-2m-sde) comes from the seed alone. W = 0 is exactly the seed's noise.
"""
from __future__ import annotations

import secrets

import numpy as np

MAX_SEED = 2**32 - 1


class Noise:
    def __init__(self, seed: int):
        self.seed = int(seed)
        self.rng = np.random.default_rng(self.seed)

    def randn(self, shape) -> np.ndarray:
        return self.rng.standard_normal(tuple(shape)).astype(np.float32)


def slerp(t: float, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spherical interpolation from ``a`` (t = 0) to ``b`` (t = 1), both flattened: the direction moves along the great
    circle between theirs (angle t * omega), the norm linearly from |a| to |b| (so two draws of equal norm keep it).
    The endpoints are ``a`` and ``b`` exactly; nearly parallel vectors fall back to linear interpolation."""
    t = float(t)
    if t <= 0.0:
        return a
    if t >= 1.0:
        return b
    a64, b64 = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
    if na == 0.0 or nb == 0.0:
        return ((1.0 - t) * a64 + t * b64).reshape(np.shape(a)).astype(np.asarray(a).dtype)
    ua, ub = a64 / na, b64 / nb
    omega = np.arccos(np.clip(np.dot(ua, ub), -1.0, 1.0))
    if np.sin(omega) < 1e-6:
        direction = (1.0 - t) * ua + t * ub
        direction /= np.linalg.norm(direction)
    else:
        direction = (np.sin((1.0 - t) * omega) * ua + np.sin(t * omega) * ub) / np.sin(omega)
    out = ((1.0 - t) * na + t * nb) * direction
    return out.reshape(np.shape(a)).astype(np.asarray(a).dtype)


class VariationNoise(Noise):
    """The seed's noise with the first draw slerped towards ``variation_seed`` (+ k for the k-th image, the first
    axis of the draw) by ``strength``; see the module docstring."""

    def __init__(self, seed: int, variation_seed: int, strength: float):
        super().__init__(seed)
        self.variation_seed = int(variation_seed)
        self.strength = float(strength)
        self.draws = 0

    def randn(self, shape) -> np.ndarray:
        base = super().randn(shape)
        self.draws += 1
        if self.draws > 1 or self.strength <= 0.0:
            return base
        rows = [slerp(self.strength, base[k], variation_row(self.variation_seed + k, base.shape[1:]))
                for k in range(base.shape[0])]
        return np.stack(rows).astype(np.float32)


def variation_row(seed: int, shape) -> np.ndarray:
    """One image's variation noise: ``default_rng(seed mod 2**32).standard_normal(shape)`` in float32."""
    return Noise(int(seed) % (MAX_SEED + 1)).randn(shape)


def make_noise(seed: int, variation_seed=None, variation_strength: float = 0.0) -> Noise:
    """The noise of a run: the seed's, or with a variation seed and strength > 0 a :class:`VariationNoise`."""
    if variation_seed is None or not variation_strength:
        return Noise(seed)
    return VariationNoise(seed, variation_seed, variation_strength)


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def as_noise(seed_or_noise) -> Noise:
    if isinstance(seed_or_noise, Noise):
        return seed_or_noise
    return Noise(random_seed() if seed_or_noise is None else seed_or_noise)
