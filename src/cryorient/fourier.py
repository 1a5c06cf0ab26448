"""Fourier-space helpers shared by simulation, reconstruction and distance learning.

Images are centred at index ``D // 2``; their transforms here use torch's unshifted rfft
layout with the phase origin at the centre pixel (``ifftshift`` before the FFT).
"""

from __future__ import annotations

import math

import torch


def rfft2_centered(images: torch.Tensor) -> torch.Tensor:
    """rfft2 of images ``(..., D, D)`` whose origin is the centre pixel ``D // 2``."""
    return torch.fft.rfft2(torch.fft.ifftshift(images, dim=(-2, -1)))


def irfft2_centered(spectra: torch.Tensor, box: int) -> torch.Tensor:
    """Inverse of :func:`rfft2_centered`."""
    return torch.fft.fftshift(torch.fft.irfft2(spectra, s=(box, box)), dim=(-2, -1))


def rfft_freqs_2d(box: int, dtype=torch.float32, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Frequencies ``(ky, kx)`` in cycles/px on the ``(box, box // 2 + 1)`` rfft grid."""
    ky = torch.fft.fftfreq(box, dtype=dtype, device=device)
    kx = torch.fft.rfftfreq(box, dtype=dtype, device=device)
    return ky[:, None].expand(box, kx.numel()), kx[None, :].expand(box, kx.numel())


def phase_shift_spectra(spectra: torch.Tensor, shifts_px: torch.Tensor, box: int) -> torch.Tensor:
    """Translate images given as centred rffts by ``shifts_px (..., 2)`` (x, y) pixels.

    A positive x shift moves the content towards larger column indices. The phase ramp is
    separable, ``exp(-2 pi i kx sx) exp(-2 pi i ky sy)``, so only ``D + D//2 + 1`` phases per
    image are evaluated.
    """
    real = shifts_px.dtype if shifts_px.is_floating_point() else torch.float32
    ky = torch.fft.fftfreq(box, dtype=real, device=spectra.device)
    kx = torch.fft.rfftfreq(box, dtype=real, device=spectra.device)
    phase_x = -2.0 * math.pi * kx * shifts_px[..., 0, None]
    phase_y = -2.0 * math.pi * ky * shifts_px[..., 1, None]
    ramp_x = torch.polar(torch.ones_like(phase_x), phase_x)
    ramp_y = torch.polar(torch.ones_like(phase_y), phase_y)
    return spectra * (ramp_y[..., :, None] * ramp_x[..., None, :])


def phase_ramps(shifts_px: torch.Tensor, box: int, mask: torch.Tensor) -> torch.Tensor:
    """Phase ramps ``exp(-2 pi i k.t)`` of translations ``(T, 2)`` (x, y) pixels at the
    frequencies of the ``(D, D//2+1)`` rfft grid where ``mask`` holds: ``(T, K)``, the factors
    :func:`phase_shift_spectra` applies there."""
    ky, kx = rfft_freqs_2d(box, dtype=torch.float32, device=mask.device)
    kx, ky = kx[mask], ky[mask]
    shifts = shifts_px.to(device=mask.device, dtype=torch.float32)
    phase = -2 * math.pi * (shifts[:, :1] * kx + shifts[:, 1:] * ky)
    return torch.polar(torch.ones_like(phase), phase)


def shift_images(images: torch.Tensor, shifts_px: torch.Tensor) -> torch.Tensor:
    """Translate images ``(..., D, D)`` by sub-pixel shifts ``(..., 2)`` (x, y) in pixels."""
    box = images.shape[-1]
    return irfft2_centered(phase_shift_spectra(rfft2_centered(images), shifts_px, box), box)


def radial_frequency_3d(shape: int | tuple[int, int, int], dtype=torch.float32, device=None
                        ) -> torch.Tensor:
    """|k| in cycles/px on the unshifted rfftn grid of a volume of ``shape`` (or a cube)."""
    nz, ny, nx = (shape,) * 3 if isinstance(shape, int) else shape
    kz = torch.fft.fftfreq(nz, dtype=dtype, device=device)
    ky = torch.fft.fftfreq(ny, dtype=dtype, device=device)
    kx = torch.fft.rfftfreq(nx, dtype=dtype, device=device)
    return torch.sqrt(kz[:, None, None] ** 2 + ky[None, :, None] ** 2 + kx[None, None, :] ** 2)


def raised_cosine(freq: torch.Tensor, cutoff: float, width: float) -> torch.Tensor:
    """1 below ``cutoff - width``, 0 above ``cutoff``, a cosine edge in between."""
    if width <= 0:
        return (freq <= cutoff).to(freq.dtype)
    t = ((freq - (cutoff - width)) / width).clamp(0.0, 1.0)
    return 0.5 * (1.0 + torch.cos(math.pi * t))


def lowpass_volume(volume: torch.Tensor, cutoff_cycles_per_px: float, edge_fraction: float = 0.15
                   ) -> torch.Tensor:
    """Low-pass a volume (any shape) so that nothing above ``cutoff`` (cycles/px) remains."""
    shape = tuple(volume.shape[-3:])
    freq = radial_frequency_3d(shape, dtype=volume.dtype, device=volume.device)
    filt = raised_cosine(freq, cutoff_cycles_per_px, edge_fraction * cutoff_cycles_per_px)
    spectrum = torch.fft.rfftn(volume, dim=(-3, -2, -1)) * filt
    return torch.fft.irfftn(spectrum, s=shape, dim=(-3, -2, -1))


def lowpass_images(images: torch.Tensor, cutoff_cycles_per_px: float, edge_fraction: float = 0.15
                   ) -> torch.Tensor:
    """Low-pass images ``(..., D, D)`` at ``cutoff`` cycles/px with a cosine edge."""
    box = images.shape[-1]
    ky, kx = rfft_freqs_2d(box, dtype=images.dtype, device=images.device)
    filt = raised_cosine(torch.sqrt(kx**2 + ky**2), cutoff_cycles_per_px,
                         edge_fraction * cutoff_cycles_per_px)
    return torch.fft.irfft2(torch.fft.rfft2(images) * filt, s=(box, box))


def fourier_resize(images: torch.Tensor, new_box: int) -> torch.Tensor:
    """Resample images ``(..., D, D)`` to ``(..., d, d)`` by cropping (d < D) or zero-padding
    (d > D) their centred spectrum. The pixel size changes by ``D / d``; values are scaled so
    that the mean is preserved (a smooth image keeps its values)."""
    box = images.shape[-1]
    if new_box == box:
        return images
    if new_box % 2 or box % 2:
        raise ValueError(f"fourier_resize needs even sizes, got {box}->{new_box}")
    spec = torch.fft.fftshift(torch.fft.fft2(torch.fft.ifftshift(images, dim=(-2, -1))), dim=(-2, -1))
    if new_box < box:
        lo = box // 2 - new_box // 2
        spec = spec[..., lo:lo + new_box, lo:lo + new_box]
    else:
        p = new_box // 2 - box // 2
        spec = torch.nn.functional.pad(spec, [p, new_box - box - p, p, new_box - box - p])
    out = torch.fft.fftshift(torch.fft.ifft2(torch.fft.ifftshift(spec, dim=(-2, -1))), dim=(-2, -1))
    return out.real * (new_box / box) ** 2


def fourier_resize_volume(volume: torch.Tensor, new_box: int) -> torch.Tensor:
    """Resample a cubic volume ``(D, D, D)`` to ``(d, d, d)`` (both even) by cropping (d < D) or
    zero-padding (d > D) its centred spectrum; values are scaled so that the mean is preserved
    (the voxel size changes by ``D / d``, so a projection of the result is ``d / D`` times the
    projection's values)."""
    box = volume.shape[-1]
    if new_box == box:
        return volume
    if new_box % 2 or box % 2:
        raise ValueError(f"fourier_resize_volume needs even sizes, got {box}->{new_box}")
    spec = torch.fft.fftshift(torch.fft.fftn(torch.fft.ifftshift(volume)))
    if new_box < box:
        lo = box // 2 - new_box // 2
        spec = spec[lo:lo + new_box, lo:lo + new_box, lo:lo + new_box]
    else:
        p = new_box // 2 - box // 2
        spec = torch.nn.functional.pad(spec, [p, new_box - box - p] * 3)
    return torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(spec))).real * (new_box / box) ** 3
