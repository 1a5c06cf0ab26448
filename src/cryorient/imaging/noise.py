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


# above this share of the signal's variance in the background ring the correction is not trusted
MAX_RING_SHARE = 0.8


def estimate_snr(images: torch.Tensor, background_radius: float = 0.42, clean: torch.Tensor | None = None
                 ) -> tuple[float, float]:
    """SNR of a stack estimated from its images: ``(snr, noise_variance)``, where the SNR is
    the simulation's ``mean var(clean) / noise variance`` over the whole box.

    The background ring (pixels beyond ``background_radius x box`` from the centre) holds the
    noise and, with a CTF, the part of the signal it delocalises (and a particle's edge): its
    variance alone overestimates the noise (a 25 kDa protein at SNR 1/16, 1.5 Å/px, box 64:
    the SNR came out 0.033 for 0.0625). ``clean``, noise-free images made
    like the stack's (the reference projected at random orientations with the stack's CTFs),
    measures that share ``f`` of the signal's variance in the ring: with ``V`` the box's and
    ``V_ring`` the ring's mean variance, the signal is ``(V - V_ring) / (1 - f)`` and the noise
    ``V_ring - f x signal`` (0.0615 for that stack; docs/model.md). Without ``clean``, or when
    ``f`` exceeds ``MAX_RING_SHARE`` (the box too small to hold any background), ``f`` is 0."""
    box = images.shape[-1]
    c = torch.arange(box, dtype=torch.float32) - box // 2
    ring = (c[:, None] ** 2 + c[None, :] ** 2) > (background_radius * box) ** 2

    def variances(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.double()
        return image_variances(x).mean(), x[:, ring].var(dim=1).mean()

    total, background = variances(images)
    share = 0.0
    if clean is not None:
        clean_total, clean_background = variances(clean)
        if clean_total > 0:
            share = float(clean_background / clean_total)
        if share > MAX_RING_SHARE:
            share = 0.0
    signal = ((total - background) / (1.0 - share)).clamp_min(0.0)
    noise = background - share * signal
    if noise <= 0:  # the correction took all of the background: keep the plain estimate
        signal, noise = (total - background).clamp_min(0.0), background
    snr = float(signal / noise) if noise > 0 else math.inf
    return snr, float(noise)
