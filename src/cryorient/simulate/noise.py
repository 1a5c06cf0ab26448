"""White Gaussian noise at a stated SNR (see :mod:`cryorient.conventions` for the definition)."""

from __future__ import annotations

import math

import torch


def snr_to_db(snr: float) -> float:
    """``10 log10(SNR)``; ``inf`` for noiseless."""
    return math.inf if math.isinf(snr) else 10.0 * math.log10(snr)


def noise_variance_for_snr(clean: torch.Tensor, snr: float) -> float:
    """Noise variance giving ``SNR = mean_i var(clean_i) / sigma^2`` for images ``(N, D, D)``."""
    if math.isinf(snr):
        return 0.0
    signal = clean.double().flatten(1).var(dim=1, unbiased=False).mean()
    return float(signal) / snr


def add_noise(images: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of the given variance to every pixel."""
    if variance == 0:
        return images
    noise = torch.randn(images.shape, generator=generator, dtype=images.dtype)
    return images + math.sqrt(variance) * noise.to(images.device)


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """SNR of a stack, measured: ``mean var(clean) / mean var(noisy - clean)``."""
    signal = clean.double().flatten(1).var(dim=1, unbiased=False).mean()
    noise = (noisy.double() - clean.double()).flatten(1).var(dim=1, unbiased=False).mean()
    return math.inf if noise == 0 else float(signal / noise)
