"""Direct Fourier inversion: the standard reconstruction of RELION and cryoSPARC.

Each image's transform is shifted back to the centre by its recorded origin, multiplied by
its CTF, and inserted as a central slice into a 2x-padded 3D Fourier grid with trilinear
weights. The accumulated ``sum CTF * F`` is divided by ``sum CTF^2 + lambda`` (Wiener-style;
without CTF the denominator is the sum of the interpolation weights), transformed back,
corrected for the trilinear gridding kernel (``sinc^2``) and cropped. Only the ``kx >= 0``
half of each slice is inserted; Friedel symmetry ``V(-k) = conj V(k)`` completes the grid.

Unlike RELION, the images are not zero-padded before insertion: their ``D``-grid samples
go into the ``2D`` grid. Measured on 2,000 projections at box 64 this is 4.5x faster and
as accurate (FSC >= 0.9998 at all frequencies in both cases, relative error 2.2% against 2.0%).

Accumulation streams over batches of images (bounded memory), so the stack may be a memory-
mapped MRCS of any length; accumulators of two half sets add up to the full reconstruction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

from ..ctf import CTFParams, ctf_rfft
from ..fourier import phase_shift_spectra, rfft2_centered
from .batches import Batch

# lambda / mean(sum CTF^2): 0.002 restores noiseless amplitudes to 0.1%; larger values damp
# noise where few slices (or CTF zeros) contribute.
DEFAULT_WIENER = 0.005


def _slice_grid(box: int, dtype, device=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """In-plane frequencies of the image rfft grid inside Nyquist (in units of the 2x-padded
    grid), the mask selecting them, and the Friedel weight (0.5 on the kx = 0 column)."""
    ky = torch.fft.fftfreq(box, d=1.0 / box, dtype=dtype, device=device)
    kx = torch.fft.rfftfreq(box, d=1.0 / box, dtype=dtype, device=device)
    kyy, kxx = torch.meshgrid(ky, kx, indexing="ij")
    mask = kxx**2 + kyy**2 < (box / 2) ** 2
    half = torch.where(kxx[mask] == 0, 0.5, 1.0).to(dtype)
    return 2 * torch.stack([kxx[mask], kyy[mask]], dim=0), mask, half


@dataclass
class FourierAccumulator:
    """Running sums of a direct Fourier inversion on a ``(P+1)^3`` centred grid (P = 2D):
    ``(re, im, weight)`` per voxel, weight being ``sum w CTF^2`` (``sum w`` without CTF)."""

    box: int
    data: torch.Tensor  # ((P+1)^3, 3) float32
    n_images: int = 0

    @classmethod
    def empty(cls, box: int, dtype=torch.float32, device=None) -> FourierAccumulator:
        return cls(box, torch.zeros((2 * box + 1) ** 3, 3, dtype=dtype, device=device))

    def __add__(self, other: FourierAccumulator) -> FourierAccumulator:
        return FourierAccumulator(self.box, self.data + other.data, self.n_images + other.n_images)

    def insert(self, images: torch.Tensor, rotmats: torch.Tensor, origins_px: torch.Tensor | None = None,
               ctf: CTFParams | None = None, pixel_size: float = 1.0, weights: torch.Tensor | None = None) -> None:
        """Add a batch of images ``(B, D, D)`` with orientations ``(B, 3, 3)`` (in place).

        ``origins_px (B, 2)`` are RELION origins in pixels (``rlnOriginX/YAngst / pixel size``):
        the images are translated by them to bring each particle to the centre first.
        ``weights (B,)`` scale each image's contribution to the sums (an image inserted along
        several poses with their posterior probabilities, as in expectation-maximisation).
        """
        box = self.box
        q = 2 * box + 1
        dtype, device = self.data.dtype, self.data.device
        spectra = rfft2_centered(images.to(device, dtype))  # (B, D, D//2+1)
        if origins_px is not None and bool(origins_px.abs().max() > 0):
            spectra = phase_shift_spectra(spectra, origins_px.to(device, dtype), box)
        pts, mask, half = _slice_grid(box, dtype, device)
        values = spectra[:, mask]  # (B, n) complex
        if ctf is not None:
            c = ctf_rfft(ctf, box, pixel_size, device=device)[:, mask].to(dtype)
            values = values * c
            weight = c * c * half
        else:
            weight = half.expand_as(values.real)
        coords = rotmats.to(device, dtype)[:, :, :2] @ pts + box  # (B, 3, n) xyz in padded-grid units
        c0 = coords.floor()
        frac = coords - c0
        i0 = c0.to(torch.int64)
        base = (i0[:, 2] * q + i0[:, 1]) * q + i0[:, 0]
        row = torch.stack([values.real * half, values.imag * half, weight], dim=-1)  # (B, n, 3)
        if weights is not None:
            row = row * weights.to(device, dtype)[:, None, None]
        fx, fy, fz = frac[:, 0, :, None], frac[:, 1, :, None], frac[:, 2, :, None]
        for dz, wz in ((0, 1 - fz), (1, fz)):
            for dy, wy in ((0, 1 - fy), (1, fy)):
                row_zy = row * (wz * wy)
                for dx, wx in ((0, 1 - fx), (1, fx)):
                    idx = (base + (dz * q + dy) * q + dx).reshape(-1)
                    self.data.index_add_(0, idx, (row_zy * wx).reshape(-1, 3))
        self.n_images += images.shape[0]

    def rotation_averaged(self, rotations: torch.Tensor) -> FourierAccumulator:
        """A new accumulator holding the mean of these sums rotated by each of ``rotations
        (J, 3, 3)`` (trilinear resampling): the reconstruction in which every image was inserted
        along ``D R`` for each ``D``, with weight ``1 / J``. For a set of small rotations whose
        distribution is isotropic (``R D R^T`` distributed as ``D``) this equals inserting
        along ``R D``: each pose spread over its neighbourhood, at the cost of ``J``
        resamplings of the grid instead of ``J`` insertions of every image."""
        box = self.box
        q = 2 * box + 1
        grid = self.data.view(q, q, q, 3).permute(3, 0, 1, 2)[None]  # (1, 3, z, y, x)
        c = torch.arange(q, dtype=self.data.dtype, device=self.data.device) - box
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        # only the voxels that can receive data: images fill |k| < box (padded units), trilinear
        # insertion spreads that by sqrt(3) and the resampling by sqrt(3) again; the cube's
        # corners beyond stay zero (61% of the cube at box 64 is inside)
        inside = (xx**2 + yy**2 + zz**2 <= (box + 4) ** 2).view(-1)
        k = torch.stack([xx.reshape(-1)[inside], yy.reshape(-1)[inside], zz.reshape(-1)[inside]], dim=-1)
        out = torch.zeros_like(self.data)
        rows = torch.nonzero(inside).flatten()
        rotations = rotations.to(self.data)
        chunk = 1 << 18  # points at a time: bounds the memory
        for lo in range(0, k.shape[0], chunk):
            pts = k[lo:lo + chunk]
            total = torch.zeros(3, pts.shape[0], dtype=self.data.dtype, device=self.data.device)
            for rot in rotations:
                # the value at k comes from rot^T k; grid_sample's coordinates run over [-1, 1]
                total += torch.nn.functional.grid_sample(grid, (pts @ rot / box)[None, None, None], mode="bilinear",
                                                         padding_mode="zeros", align_corners=True)[0, :, 0, 0]
            out[rows[lo:lo + chunk]] = (total / len(rotations)).T
        return FourierAccumulator(box, out, self.n_images)

    def finalize(self, wiener: float = DEFAULT_WIENER) -> torch.Tensor:
        """The reconstructed volume ``(D, D, D)`` from the accumulated sums.

        ``V(k) = sum CTF F / (sum CTF^2 + lambda)`` with ``lambda = wiener x`` the mean of the
        denominator over the sampled voxels; then the inverse transform, the ``sinc^2``
        gridding correction of trilinear insertion, and cropping.
        """
        box = self.box
        padded = 2 * box
        q = padded + 1
        data = self.data.view(q, q, q, 3)
        # Friedel completion: the grid point at index i mirrors index P - i on every axis.
        num = torch.complex(data[..., 0], data[..., 1])
        num = num + torch.flip(num, dims=(0, 1, 2)).conj()
        den = data[..., 2] + torch.flip(data[..., 2], dims=(0, 1, 2))
        sampled = den > 0
        lam = wiener * (den[sampled].mean() if bool(sampled.any()) else torch.tensor(1.0))
        vol_ft = (num / (den + lam))[:padded, :padded, :padded]
        vol = torch.fft.fftshift(torch.fft.ifftn(torch.fft.ifftshift(vol_ft))).real
        c = torch.arange(padded, dtype=vol.dtype, device=vol.device) - padded // 2
        s = torch.sinc(c / padded) ** 2
        vol = vol / (s[:, None, None] * s[None, :, None] * s[None, None, :])
        p = padded // 2 - box // 2
        # Units: the image DFT equals the padded volume's DFT on the slice (both unnormalised,
        # the grid being 2x finer), so the inverse transform returns the volume's own units.
        return vol[p:p + box, p:p + box, p:p + box].contiguous()


def backproject(batches: Iterable[Batch], rotations: torch.Tensor, origins_px: torch.Tensor | None,
                pixel_size: float, box: int, progress: Callable[[int], None] | None = None,
                device=None, operators: torch.Tensor | None = None) -> FourierAccumulator:
    """A new accumulator holding every batch, each image along ``rotations[batch.indices]``
    shifted by ``origins_px[batch.indices]`` (RELION origins in pixels of these images). With
    a point group's ``operators (G, 3, 3)``, each image is inserted along every ``S R`` (the
    symmetrised reconstruction, as RELION's)."""
    acc = FourierAccumulator.empty(box, device=device)
    for b in batches:
        t = torch.as_tensor(b.indices)
        origins = None if origins_px is None else origins_px[t]
        rot = rotations[t]
        ops = operators.to(rot) if operators is not None else None
        for op in (ops if ops is not None else [None]):
            acc.insert(b.images, rot if op is None else op @ rot, origins, b.ctf, pixel_size)
        if ops is not None:
            acc.n_images -= (len(ops) - 1) * len(b.indices)
        if progress is not None:
            progress(len(b.indices))
    return acc


def half_accumulators(make_batches: Callable[[np.ndarray], Iterable[Batch]],
                      halves: tuple[np.ndarray, np.ndarray], rotations: torch.Tensor,
                      origins_px: torch.Tensor | None, pixel_size: float, box: int,
                      progress: Callable[[int], None] | None = None, device=None,
                      operators: torch.Tensor | None = None
                      ) -> tuple[FourierAccumulator, FourierAccumulator]:
    """One accumulator per half set: ``make_batches(indices)`` reads the particles of each."""
    return tuple(backproject(make_batches(h), rotations, origins_px, pixel_size, box, progress, device,
                             operators) for h in halves)
