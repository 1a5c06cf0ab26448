"""Translational alignment: the cross-correlation peak of each image with a reference image
(sub-pixel by a parabola fit), and particle origins from a reconstruction (alignment against
reprojections at known orientations, alternated with reconstruction)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..fourier import irfft2_centered, lowpass_images, rfft2_centered
from ..particles import ParticleStack
from .accumulator import backproject
from .batches import stack_batches
from .projector import prepare_volume
from .render import render


def _peak_subpixel(cc: torch.Tensor) -> torch.Tensor:
    """Sub-pixel (x, y) of the maximum of centred maps ``(B, D, D)``, relative to the centre."""
    b, box, _ = cc.shape
    flat = cc.reshape(b, -1).argmax(dim=1)
    y, x = flat // box, flat % box

    def refine(m, c, p):  # parabola through three samples (none at the edge of a search window)
        ok = torch.isfinite(m) & torch.isfinite(p)
        m, p = torch.where(ok, m, c), torch.where(ok, p, c)
        den = m - 2 * c + p
        ok = ok & (den.abs() > 1e-12)
        return torch.where(ok, 0.5 * (m - p) / den, torch.zeros_like(den)).clamp(-0.5, 0.5)

    ar = torch.arange(b, device=cc.device)
    c = cc[ar, y, x]
    dx = refine(cc[ar, y, (x - 1) % box], c, cc[ar, y, (x + 1) % box])
    dy = refine(cc[ar, (y - 1) % box, x], c, cc[ar, (y + 1) % box, x])
    return torch.stack([x - box // 2 + dx, y - box // 2 + dy], dim=1).float()


def translation(images: torch.Tensor, references: torch.Tensor, limit_px: float,
                lowpass_fraction: float = 0.25) -> torch.Tensor:
    """Displacement ``(B, 2)`` (x, y) of each image relative to its reference, from the peak of
    their cross-correlation (both low-passed) within ``limit_px``, sub-pixel."""
    box = images.shape[-1]
    c = torch.arange(box, dtype=torch.float32, device=images.device) - box // 2
    window = (c[:, None] ** 2 + c[None, :] ** 2) <= limit_px**2
    img = lowpass_images(images, lowpass_fraction * 0.5)
    ref = lowpass_images(references.to(images.device), lowpass_fraction * 0.5)
    cc = irfft2_centered(rfft2_centered(img) * rfft2_centered(ref).conj(), box)
    return _peak_subpixel(torch.where(window, cc, torch.full_like(cc, -torch.inf)))


def estimate_shifts(stack: ParticleStack, rotations: torch.Tensor, iterations: int = 3,
                    max_shift_px: float | None = None, lowpass_fraction: float = 0.25,
                    batch_size: int = 256, progress: Callable[[int], None] | None = None,
                    device=None) -> torch.Tensor:
    """RELION origins ``(N, 2)`` in Å for ``stack`` seen along ``rotations`` (ground-truth free).

    Each round reconstructs with the current origins, low-passes the map and every image to
    ``lowpass_fraction`` of Nyquist, and moves each origin to the cross-correlation peak with
    the reprojection (CTF applied), within ``max_shift_px`` (default box / 6)."""
    box, px = stack.box, stack.pixel_size
    limit = max_shift_px if max_shift_px is not None else box / 6
    rotations = rotations.to(device)
    origins_px = torch.zeros(stack.n, 2, device=device)
    for _ in range(iterations):
        acc = backproject(stack_batches(stack, batch_size, device=device), rotations, origins_px, px, box,
                          device=device)
        prepared = prepare_volume(acc.finalize())
        for b in stack_batches(stack, batch_size, device=device):
            t = torch.as_tensor(b.indices, device=rotations.device)
            ref = render(prepared, rotations[t], None, b.ctf, px)
            # the image content sits at +s relative to the centred reprojection: origin = -s
            origins_px[t] = -translation(b.images, ref, limit, lowpass_fraction)
            if progress is not None:
                progress(len(b.indices))
    return (origins_px * px).cpu()
