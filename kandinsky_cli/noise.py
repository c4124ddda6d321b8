"""The noise contract: device-independent seeds.

``--seed N`` means ``rng = numpy.random.default_rng(N)``; every standard-normal draw is
``rng.standard_normal(shape).astype(float32)`` on the host, in call order. The same seed gives the same
result on CPU, GPU and Ascend.
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


def random_seed() -> int:
    return secrets.randbelow(MAX_SEED + 1)


def as_noise(seed_or_noise) -> Noise:
    if isinstance(seed_or_noise, Noise):
        return seed_or_noise
    return Noise(random_seed() if seed_or_noise is None else seed_or_noise)
