"""Orientations refined against reprojections of half maps (local, by gradient ascent).

Each round reconstructs two half maps from the current orientations and origins, low-passes
them (a wide basin first, finer later), then moves every particle's orientation by the small
rotation ``exp(w_i)`` that maximises the normalised cross-correlation between its image and
the CTF-modulated, shifted reprojection of the *other* half's map (half sets keep an image
out of the map it is compared with), by Adam on ``w`` through the differentiable Fourier-slice
projector; then re-estimates origins by cross-correlation. Images are downsampled to ``size``
px (the information at these SNRs is at low resolution), streamed in chunks (memory bounded),
and CTF-corrected as in reconstruction.

:func:`rotation_step` is the common core: it also polishes one rotation shared by all
particles (``shared=True``), which is how the orientation stage polishes the common right
factor left by its common-lines search.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import roma
import torch

from ..config import LocalRefineConfig
from ..ctf import CTFParams, ctf_rfft, subset
from ..fourier import lowpass_images, lowpass_volume, phase_ramps, raised_cosine, rfft2_centered, rfft_freqs_2d
from ..particles import ParticleStack
from .accumulator import half_accumulators
from .batches import Batch, stack_batches
from .projector import PreparedVolume, prepare_volume, slice_values
from .render import render
from .translation import translation


def ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Normalised cross-correlation of image pairs ``(B, S, S)``."""
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    return (a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1))).clamp_min(1e-12)


def half_maps(make_batches: Callable[[np.ndarray], object], halves: tuple[np.ndarray, np.ndarray],
              rotations: torch.Tensor, origins_px: torch.Tensor, pixel_size: float, box: int,
              cutoff: float | None = None, wiener: float = 0.05) -> list[PreparedVolume]:
    """The two half maps (low-passed at ``cutoff`` cycles/px when given), prepared for projection."""
    maps = []
    for acc in half_accumulators(make_batches, halves, rotations, origins_px, pixel_size, box,
                                 device=rotations.device):
        vol = acc.finalize(wiener)
        maps.append(prepare_volume(lowpass_volume(vol, cutoff) if cutoff is not None else vol))
    return maps


class BandComparison:
    """Images ``(B, S, S)`` ready to be compared with reprojections by :func:`ncc`, by Parseval
    in Fourier space: the reprojection along each image's rotation, times its CTF, shifted by
    ``-origins_px`` and low-passed at ``cutoff`` (as :func:`~cryorient.fourier.lowpass_images`;
    the images arrive low-passed). Only the band the low-pass leaves counts, ``0 < |k| <=
    cutoff`` (all but the mean without one; the mean is excluded as :func:`ncc` subtracts it),
    each rfft coefficient with its Friedel weight (1 on the kx = 0 and Nyquist columns, 2
    elsewhere: it stands for itself and its conjugate). The images' spectra, CTFs and phase
    ramps are made once; a comparison samples the band of the central slices, with no inverse
    transform."""

    def __init__(self, images: torch.Tensor, ctf: CTFParams | None, origins_px: torch.Tensor, pixel_size: float,
                 cutoff: float | None = None):
        box = images.shape[-1]
        ky, kx = rfft_freqs_2d(box, device=images.device)
        k = torch.sqrt(kx**2 + ky**2)
        self.mask = (k > 0) if cutoff is None else (k > 0) & (k <= cutoff)
        own = (kx[self.mask] == 0) | ((box % 2 == 0) & (kx[self.mask] == 0.5))
        self.weights = torch.where(own, 1.0, 2.0)
        self.x = rfft2_centered(images.float())[:, self.mask]  # (B, K)
        self.x_power = (self.weights * self.x.abs() ** 2).sum(-1)  # (B,)
        # the reprojection's factors other than the slice: the shift to -origin, the low-pass, the CTF
        self.factor = phase_ramps(-origins_px, box, self.mask)
        if cutoff is not None:
            self.factor = self.factor * raised_cosine(k[self.mask], cutoff, 0.15 * cutoff)
        if ctf is not None:
            self.factor = self.factor * ctf_rfft(ctf, box, pixel_size, device=images.device)[:, self.mask]
        self.eps = 1e-12 * box**2  # ncc's floor on the product of the norms, in these units

    def ncc(self, prepared: PreparedVolume, rotations: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """:func:`ncc` of images ``rows`` with their reprojections along ``rotations`` (one per row)."""
        y = slice_values(prepared, rotations, self.mask) * self.factor[rows]
        num = (self.weights * (self.x[rows].conj() * y).real).sum(-1)
        y_power = (self.weights * (y.real**2 + y.imag**2)).sum(-1)
        return num / (self.x_power[rows] * y_power).sqrt().clamp_min(self.eps)


def rotation_step(images: torch.Tensor, ctf: CTFParams | None, maps: list[PreparedVolume],
                  which: np.ndarray, rotations: torch.Tensor, origins_px: torch.Tensor, pixel_size: float,
                  steps: int, lr_deg: float, cutoff: float | None = None, shared: bool = False
                  ) -> torch.Tensor:
    """The small rotations ``exp(w)`` (``(B, 3, 3)``, or one ``(3, 3)`` with ``shared``) that
    maximise the NCC of ``images`` with reprojections of ``maps[which[k]]`` along
    ``rotations @ exp(w)``, shifted by ``-origins_px`` and low-passed at ``cutoff`` (the
    images arrive low-passed), by Adam on ``w`` (:class:`BandComparison`)."""
    n = images.shape[0]
    compare = BandComparison(images, ctf, origins_px, pixel_size, cutoff)
    groups = [(torch.as_tensor(sel, device=images.device), m)
              for m in range(len(maps)) if len(sel := np.nonzero(which == m)[0])]
    w = torch.zeros(1 if shared else n, 3, requires_grad=True, device=images.device)
    opt = torch.optim.Adam([w], lr=math.radians(lr_deg))
    for _ in range(steps):
        r_new = rotations @ roma.rotvec_to_rotmat(w.expand(n, 3) if shared else w)
        score = sum(compare.ncc(maps[m], r_new[t], t).sum() for t, m in groups)
        opt.zero_grad()
        (-score / n).backward()
        opt.step()
    step = roma.rotvec_to_rotmat(w.detach())
    return step[0] if shared else step


def local_refine(stack: ParticleStack, rotations: torch.Tensor, origins_angstrom: torch.Tensor,
                 halves: tuple[np.ndarray, np.ndarray], cfg: LocalRefineConfig,
                 progress: Callable[[int], None] | None = None, device=None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined ``(rotations (N, 3, 3), origins_angstrom (N, 2))`` (see the module docstring);
    each particle is compared with the map of the half set it is not in."""
    n, box = stack.n, stack.box
    s = min(cfg.size, box - box % 2)
    px = stack.pixel_size * box / s
    rot = rotations.float().clone().to(device)
    origins = (origins_angstrom / px).float().clone().to(device)  # in downsampled pixels
    other = np.zeros(n, dtype=np.int64)
    other[halves[0]] = 1  # particles of half 0 are compared with map 1, and vice versa

    def read(idx: np.ndarray):
        return stack_batches(stack, cfg.chunk, idx, size=s, device=device)

    for r in range(cfg.rounds):
        t = r / max(cfg.rounds - 1, 1)
        cutoff = cfg.lowpass_start + t * (cfg.lowpass_end - cfg.lowpass_start)
        maps = half_maps(read, halves, rot, origins, px, s, cutoff)
        for b in read(np.arange(n)):
            idx = torch.as_tensor(b.indices, device=rot.device)
            imgs = lowpass_images(b.images, cutoff)
            step = rotation_step(imgs, b.ctf, maps, other[b.indices], rot[idx], origins[idx], px,
                                 cfg.steps, cfg.lr_deg, cutoff)
            with torch.no_grad():
                rot[idx] = rot[idx] @ step
                origins[idx] = -_translations(imgs, b, maps, other, rot[idx], px, s)
            if progress is not None:
                progress(len(b.indices))
    return rot.cpu(), (origins * px).cpu()


def _translations(images: torch.Tensor, batch: Batch, maps: list[PreparedVolume], which: np.ndarray,
                  rotations: torch.Tensor, pixel_size: float, size: int) -> torch.Tensor:
    """Displacement of each image against the centred reprojection of its comparison map."""
    out = torch.zeros(images.shape[0], 2, device=images.device)
    for m in range(len(maps)):
        sel = np.nonzero(which[batch.indices] == m)[0]
        if len(sel) == 0:
            continue
        t = torch.as_tensor(sel, device=images.device)
        ref = render(maps[m], rotations[t], None, subset(batch.ctf, sel), pixel_size)
        out[t] = translation(images[t], ref, size / 6)
    return out


def refine_poses(images: torch.Tensor, ctf: CTFParams | None, pixel_size: float, prepared: PreparedVolume,
                 rotations: torch.Tensor, origins_px: torch.Tensor, cutoff: float, steps: int = 15,
                 lr_deg: float = 1.0, chunk: int = 1024, shift_limit_px: float | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Local refinement of every image's pose against one map: the rotation by gradient ascent
    of the NCC (:func:`rotation_step`), then the translation by cross-correlation (within
    ``shift_limit_px``, default a sixth of the box), both with images and projections
    low-passed at ``cutoff`` cycles/px. ``origins_px (N, 2)`` are RELION origins in pixels of
    these images. Returns the new ``(rotations, origins_px)``."""
    n, box = images.shape[0], images.shape[-1]
    limit = shift_limit_px if shift_limit_px is not None else box / 6
    rot, origins = rotations.clone(), origins_px.clone()
    which = np.zeros(n, dtype=np.int64)
    for lo in range(0, n, chunk):
        sl = slice(lo, min(lo + chunk, n))
        imgs = lowpass_images(images[sl], cutoff)
        c = subset(ctf, sl)
        step = rotation_step(imgs, c, [prepared], which[sl], rot[sl], origins[sl], pixel_size, steps, lr_deg,
                             cutoff)
        with torch.no_grad():
            rot[sl] = rot[sl] @ step
            ref = lowpass_images(render(prepared, rot[sl], None, c, pixel_size), cutoff)
            origins[sl] = -translation(imgs, ref, limit, lowpass_fraction=1.0)
    return rot, origins
