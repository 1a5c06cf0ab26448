"""The forward model of one batch: projection x CTF x shift (in Fourier space), and the
random translations the simulator and the training data draw."""

from __future__ import annotations

import math

import torch

from ..ctf import CTFParams, ctf_rfft
from ..fourier import irfft2_centered, phase_shift_spectra
from .projector import PreparedVolume, project_spectra


def render(prepared: PreparedVolume, rotations: torch.Tensor, shifts_px: torch.Tensor | None,
           ctf: CTFParams | None, pixel_size: float, phase_flip: bool = False) -> torch.Tensor:
    """Clean images ``(B, D, D)``: the projections along ``rotations (B, 3, 3)``, multiplied
    by each image's CTF (``sign(CTF)`` with ``phase_flip``), then translated by
    ``shifts_px (B, 2)`` (x, y) pixels (None or zeros: centred). On the volume's device."""
    spectra = project_spectra(prepared, rotations)
    if ctf is not None:
        spectra = spectra * ctf_rfft(ctf, prepared.box, pixel_size, phase_flip, device=spectra.device)
    if shifts_px is not None and bool(shifts_px.abs().max() > 0):
        spectra = phase_shift_spectra(spectra, shifts_px.to(spectra.device), prepared.box)
    return irfft2_centered(spectra, prepared.box)


def sample_shifts(n: int, max_px: float, generator: torch.Generator, distribution: str = "uniform"
                  ) -> torch.Tensor:
    """``(n, 2)`` translations (x, y) in pixels: uniform in the disc of radius ``max_px``, or
    Gaussian with sigma ``max_px / 2`` clipped to the disc. Zeros when ``max_px`` is 0."""
    if max_px <= 0:
        return torch.zeros(n, 2)
    if distribution == "uniform":
        u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
        r = max_px * torch.sqrt(u[:, 0])
        t = 2 * math.pi * u[:, 1]
        shifts = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
    else:
        shifts = torch.randn(n, 2, generator=generator, dtype=torch.float64) * max_px / 2
        norm = shifts.norm(dim=1, keepdim=True)
        shifts = torch.where(norm > max_px, shifts * max_px / norm, shifts)
    return shifts.float()
