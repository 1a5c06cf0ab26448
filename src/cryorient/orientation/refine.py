"""Local refinement by reprojection: orientations (and origins) that best match reprojections
of the other half set's reconstruction.

Each round reconstructs two half maps from the current orientations and origins, low-passes
them (a wide basin first, finer later), then moves every particle's orientation by the small
rotation ``exp(w_i)`` that maximises the normalised cross-correlation between its image and
the CTF-modulated, shifted reprojection of the *other* half's map (half sets keep an image
out of the map it is compared with), by Adam on ``w`` through the differentiable Fourier-slice
projector; then re-estimates origins by cross-correlation. With ``shared=True`` one rotation
is common to all particles: that is how the right factor left by the common-lines search is
polished. Images are downsampled to ``size`` px (the information at these SNRs is at low
resolution), streamed in chunks (memory bounded), and CTF-corrected as in reconstruction.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import roma
import torch

from ..fourier import fourier_crop, lowpass_images, lowpass_volume
from ..particles import ParticleStack
from ..reconstruct.backproject import FourierAccumulator, finalize, insert_images
from ..reconstruct.shifts import translation
from ..simulate.projector import prepare_volume
from ..simulate.simulator import render


@dataclass(frozen=True)
class RefineOptions:
    rounds: int = 3
    steps: int = 15
    size: int = 48  # px: images and maps are downsampled to this (demo stack: 32 px 4.7°, 48 px 3.7°)
    lr_deg: float = 1.0
    lowpass_start: float = 0.2  # cycles/px of the downsampled grid in the first round ...
    lowpass_end: float = 0.45  # ... and in the last
    chunk: int = 1024


def _ncc(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a - a.mean(dim=(-2, -1), keepdim=True)
    b = b - b.mean(dim=(-2, -1), keepdim=True)
    return (a * b).sum((-2, -1)) / (a.norm(dim=(-2, -1)) * b.norm(dim=(-2, -1))).clamp_min(1e-12)


def reprojection_refine(stack: ParticleStack, rotations: torch.Tensor, origins_angstrom: torch.Tensor,
                        generator: torch.Generator, opts: RefineOptions = RefineOptions(),
                        shared: bool = False, progress: Callable[[int], None] | None = None
                        ) -> tuple[torch.Tensor, torch.Tensor]:
    """Refined ``(rotations (N, 3, 3), origins_angstrom (N, 2))`` (see the module docstring).

    With ``shared``, returns the same rotation correction applied to every particle."""
    n, box = stack.n, stack.box
    s = min(opts.size, box - box % 2)
    px = stack.pixel_size * box / s
    ctf = stack.ctf()
    rot = rotations.float().clone()
    origins = (origins_angstrom / px).float().clone()  # in downsampled pixels
    perm = torch.randperm(n, generator=generator).numpy()
    halves = (np.sort(perm[: n // 2]), np.sort(perm[n // 2:]))
    other = np.zeros(n, dtype=np.int64)
    other[halves[0]] = 1  # particles of half 0 are compared with map 1, and vice versa

    def images_of(idx: np.ndarray) -> torch.Tensor:
        imgs = stack.images.read(idx)
        return fourier_crop(imgs, s) if s < box else imgs

    def ctf_of(idx: np.ndarray):
        return ctf.subset(torch.as_tensor(idx)) if ctf is not None else None

    shared_w = torch.zeros(3)
    for r in range(opts.rounds):
        t = r / max(opts.rounds - 1, 1)
        cutoff = opts.lowpass_start + t * (opts.lowpass_end - opts.lowpass_start)
        maps = []
        for h in halves:
            acc = FourierAccumulator.empty(s)
            for k in range(0, len(h), opts.chunk):
                idx = h[k:k + opts.chunk]
                insert_images(acc, images_of(idx), rot[idx], origins[idx], ctf_of(idx), px)
            maps.append(prepare_volume(lowpass_volume(finalize(acc, 0.05), cutoff)))
        chunks = [np.arange(n)] if shared else [np.arange(k, min(k + opts.chunk, n))
                                                 for k in range(0, n, opts.chunk)]
        for idx in chunks:
            imgs = lowpass_images(images_of(idx), cutoff)
            c = ctf_of(idx)
            groups = [(np.nonzero(other[idx] == m)[0], m) for m in (0, 1)]
            w = torch.zeros(1 if shared else len(idx), 3, requires_grad=True)
            opt = torch.optim.Adam([w], lr=math.radians(opts.lr_deg))
            for _ in range(opts.steps):
                r_new = rot[idx] @ roma.rotvec_to_rotmat(w.expand(len(idx), 3) if shared else w)
                score = 0.0
                for sel, m in groups:
                    if len(sel) == 0:
                        continue
                    cs = c.subset(torch.as_tensor(sel)) if c is not None else None
                    proj = render(maps[m], r_new[sel], -origins[idx][sel], cs, px)
                    score = score + _ncc(imgs[sel], lowpass_images(proj, cutoff)).sum()
                opt.zero_grad()
                (-score / len(idx)).backward()
                opt.step()
            with torch.no_grad():
                step = roma.rotvec_to_rotmat(w.expand(len(idx), 3) if shared else w)
                rot[idx] = rot[idx] @ step
                if shared:
                    shared_w = roma.rotmat_to_rotvec(roma.rotvec_to_rotmat(shared_w) @ step[0])
                for sel, m in groups:
                    if len(sel) == 0:
                        continue
                    cs = c.subset(torch.as_tensor(sel)) if c is not None else None
                    ref = render(maps[m], rot[idx][sel], torch.zeros(len(sel), 2), cs, px)
                    sub = idx[sel]
                    origins[sub] = -translation(imgs[sel], ref, s / 6)
            if progress is not None:
                progress(len(idx))
    return rot, origins * px
