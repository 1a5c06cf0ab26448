"""Fourier shell correlation and resolution estimates (torch-fourier-shell-correlation)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch_fourier_shell_correlation import fourier_shell_correlation

from ..fourier import raised_cosine


def soft_sphere_mask(box: int, radius_px: float | None = None, edge_px: float = 4.0,
                     dtype=torch.float32) -> torch.Tensor:
    """A spherical mask centred at ``D // 2``: 1 inside ``radius``, cosine edge to 0."""
    r_max = radius_px if radius_px is not None else box / 2 - edge_px
    c = torch.arange(box, dtype=dtype) - box // 2
    r = torch.sqrt(c[:, None, None] ** 2 + c[None, :, None] ** 2 + c[None, None, :] ** 2)
    return raised_cosine(r, r_max + edge_px, edge_px)


def fsc(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> np.ndarray:
    """FSC per shell ``k = 0 .. D//2`` (shell k is at ``k / D`` cycles/px)."""
    if a.shape != b.shape:
        raise ValueError(f"FSC needs volumes of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")
    if mask is not None:
        a, b = a * mask, b * mask
    return fourier_shell_correlation(a.float(), b.float()).numpy().astype(np.float64)


def shell_frequencies(box: int, pixel_size: float) -> np.ndarray:
    """Spatial frequency (1/Å) of each FSC shell."""
    return np.arange(box // 2 + 1) / (box * pixel_size)


@dataclass(frozen=True)
class Resolution:
    """Where an FSC curve first falls below a threshold."""

    threshold: float
    angstrom: float  # interpolated; at Nyquist when the curve never crosses
    frequency: float  # 1/Å
    reached_nyquist: bool


def resolution_at(curve: np.ndarray, box: int, pixel_size: float, threshold: float) -> Resolution:
    """Resolution (Å) at the first crossing of ``threshold``, linearly interpolated between
    shells. Shell 0 (the mean) is skipped. When the curve never crosses, the resolution is
    Nyquist (``2 x pixel size``) and ``reached_nyquist`` is set."""
    freqs = shell_frequencies(box, pixel_size)
    for k in range(1, len(curve)):
        if curve[k] < threshold:
            if k == 1:
                f = freqs[1]
            else:
                t = (curve[k - 1] - threshold) / (curve[k - 1] - curve[k])
                f = freqs[k - 1] + t * (freqs[k] - freqs[k - 1])
            return Resolution(threshold, float(1.0 / f), float(f), False)
    return Resolution(threshold, 2.0 * pixel_size, float(freqs[-1]), True)


def lowpass_to_resolution(volume: torch.Tensor, pixel_size: float, resolution_angstrom: float
                          ) -> torch.Tensor:
    """Low-pass a volume at ``resolution`` Å (cosine edge) — e.g. at its FSC estimate."""
    from ..fourier import lowpass_volume

    cutoff = min(pixel_size / resolution_angstrom, 0.5)
    return lowpass_volume(volume, cutoff) if not math.isinf(resolution_angstrom) else volume
