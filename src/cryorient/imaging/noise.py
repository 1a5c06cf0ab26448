"""White Gaussian noise at a stated SNR (see :mod:`cryorient.conventions` for the definition)."""

from __future__ import annotations

import math

import torch


def snr_to_db(snr: float) -> float:
    """``10 log10(SNR)``; ``inf`` for noiseless."""
    return math.inf if math.isinf(snr) else 10.0 * math.log10(snr)


def image_variances(images: torch.Tensor) -> torch.Tensor:
    """Per-image variance over the whole box, ``(..., D, D) -> (...)`` (two-pass, fast)."""
    mean = images.mean(dim=(-2, -1), keepdim=True)
    return (images - mean).square().mean(dim=(-2, -1))


def noise_variance_for_snr(clean: torch.Tensor, snr: float) -> float:
    """Noise variance giving ``SNR = mean_i var(clean_i) / sigma^2`` for images ``(N, D, D)``."""
    if math.isinf(snr):
        return 0.0
    return float(image_variances(clean).double().mean()) / snr


def sample_noise(shape, variance: float, generator: torch.Generator, dtype=torch.float32,
                 device=None) -> torch.Tensor:
    """I.i.d. Gaussian noise of the given variance (zeros when the variance is 0)."""
    if variance == 0:
        return torch.zeros(shape, dtype=dtype, device=device)
    noise = torch.randn(shape, generator=generator, dtype=dtype)
    return (math.sqrt(variance) * noise).to(device)


def add_noise(images: torch.Tensor, variance: float, generator: torch.Generator) -> torch.Tensor:
    """Add i.i.d. Gaussian noise of the given variance to every pixel."""
    if variance == 0:
        return images
    return images + sample_noise(images.shape, variance, generator, images.dtype, images.device)


def measured_snr(clean: torch.Tensor, noisy: torch.Tensor) -> float:
    """SNR of a stack, measured: ``mean var(clean) / mean var(noisy - clean)``."""
    signal = image_variances(clean.double()).mean()
    noise = image_variances(noisy.double() - clean.double()).mean()
    return math.inf if noise == 0 else float(signal / noise)


def estimate_snr(images: torch.Tensor, background_radius: float = 0.42) -> tuple[float, float]:
    """SNR of a stack estimated from its images alone: ``(snr, noise_variance)``.

    The noise variance is the variance of the background (pixels beyond
    ``background_radius x box`` from the centre, where a centred particle has no density),
    the signal variance the whole-box variance minus it; both averaged over the images.
    (A CTF's delocalised signal reaching the background makes this a slight underestimate.)
    """
    box = images.shape[-1]
    c = torch.arange(box, dtype=torch.float32) - box // 2
    ring = (c[:, None] ** 2 + c[None, :] ** 2) > (background_radius * box) ** 2
    x = images.double()
    noise = x[:, ring].var(dim=1).mean()
    total = image_variances(x).mean()
    signal = (total - noise).clamp_min(0.0)
    snr = float(signal / noise) if noise > 0 else math.inf
    return snr, float(noise)
