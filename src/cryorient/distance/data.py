"""Training data: projections of a reference made the way the particles were made.

:class:`ImagingModel` captures what matters of a stack (box, pixel size, its CTF parameters,
its SNR estimated from the images, its shift range); :class:`ReferenceSampler` renders
batches of fresh projections of the reference on the fly (no overfitting to a fixed set),
with orientation pairs balanced over the distance range, and re-draws an augmented copy of
the reference every few batches so that a reference that differs from the particles
(a moved domain, a lower resolution, missing or extra density) still works.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import roma
import torch
import torch.nn.functional as F

from .. import so3
from ..ctf import CTFParams
from ..fourier import lowpass_volume
from ..particles import ParticleStack
from ..simulate.noise import estimate_snr, image_variances, sample_noise
from ..simulate.projector import prepare_volume
from ..simulate.simulator import render
from .preprocess import prepare_inputs


@dataclass(frozen=True)
class ImagingModel:
    box: int
    pixel_size: float
    snr: float
    max_shift_px: float
    ctf: CTFParams | None  # a pool of CTF parameters drawn with replacement

    def summary(self) -> dict:
        return {"box": self.box, "pixel_size": self.pixel_size, "snr": self.snr,
                "max_shift_px": self.max_shift_px, "ctf": self.ctf is not None}


def imaging_from_stack(stack: ParticleStack, sample: int = 2000, generator: torch.Generator | None = None
                       ) -> ImagingModel:
    """The stack's imaging parameters; the SNR is estimated from a sample of its images
    (:func:`cryorient.simulate.noise.estimate_snr`), the shift range is the largest recorded
    origin (or a tenth of the box when the STAR has none)."""
    g = generator or torch.Generator().manual_seed(0)
    idx = torch.randperm(stack.n, generator=g)[: min(sample, stack.n)].sort().values.numpy()
    snr, _ = estimate_snr(stack.images.read(idx))
    origins = stack.shifts_angstrom() / stack.pixel_size
    max_shift = float(origins.norm(dim=1).max()) if bool(origins.abs().max() > 0) else stack.box / 10
    return ImagingModel(stack.box, stack.pixel_size, snr, max_shift, stack.ctf())


@dataclass(frozen=True)
class Augmentation:
    """Random changes to the reference, re-drawn every ``refresh`` batches."""

    enabled: bool = True
    refresh: int = 8
    deform_angstrom: float = 2.0  # RMS of a smooth random displacement field
    lowpass_range_angstrom: tuple[float, float] = (0.0, 12.0)  # extra low-pass, 0 = none
    blobs: int = 3  # small densities removed or added (missing loops, extra density)
    blob_radius_angstrom: float = 5.0


def augment_volume(volume: torch.Tensor, pixel_size: float, aug: Augmentation,
                   generator: torch.Generator) -> torch.Tensor:
    """A randomly perturbed copy of ``volume`` (smooth deformation, low-pass, blobs)."""
    box = volume.shape[-1]
    vol = volume
    if aug.deform_angstrom > 0:
        field = torch.randn(3, box // 8, box // 8, box // 8, generator=generator)
        field = F.interpolate(field[None], size=(box, box, box), mode="trilinear", align_corners=True)[0]
        field = field / field.std().clamp_min(1e-6) * (aug.deform_angstrom / pixel_size)
        c = torch.linspace(-1, 1, box)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        grid = torch.stack([xx, yy, zz], dim=-1) + field.permute(1, 2, 3, 0) * (2 / (box - 1))
        vol = F.grid_sample(vol[None, None], grid[None], mode="bilinear", align_corners=True)[0, 0]
    lo, hi = aug.lowpass_range_angstrom
    u = float(torch.rand(1, generator=generator))
    res = lo + (hi - lo) * u
    if res > 2 * pixel_size:
        vol = lowpass_volume(vol, pixel_size / res)
    if aug.blobs:
        mass = vol.clamp_min(0)
        idx = torch.multinomial(mass.flatten() / mass.sum(), aug.blobs, generator=generator)
        centres = torch.stack([idx // (box * box), (idx // box) % box, idx % box], dim=1).float()
        c = torch.arange(box, dtype=torch.float32)
        zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
        sigma = aug.blob_radius_angstrom / pixel_size
        level = float(vol.max()) * 0.5
        for p in centres:
            blob = torch.exp(-((zz - p[0]) ** 2 + (yy - p[1]) ** 2 + (xx - p[2]) ** 2) / (2 * sigma**2))
            if float(torch.rand(1, generator=generator)) < 0.5:
                vol = vol + level * blob  # extra density the reference lacks
            else:
                vol = vol * (1 - blob)  # density the reference has and the particles lack
    return vol


def balanced_orientations(m: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` rotations: the first half uniform, the second half each at a distance drawn
    uniformly in [0, pi] from its partner in the first half (so pair distances cover the
    range evenly; uniform pairs alone are mostly near 2 rad). Returns rotations and the
    designed pair distances."""
    half = m // 2
    first = so3.sample_rotations(m - half, generator)
    d = torch.rand(half, generator=generator) * math.pi
    axis = torch.randn(half, 3, generator=generator)
    axis = axis / axis.norm(dim=1, keepdim=True)
    second = first[:half] @ roma.rotvec_to_rotmat(axis * d[:, None])
    return torch.cat([first, second]), d


class ReferenceSampler:
    """Batches of preprocessed training images of a reference with their true rotations."""

    def __init__(self, volume: torch.Tensor, imaging: ImagingModel, input_size: int,
                 input_pixel_size: float, phase_flip: bool, aug: Augmentation,
                 generator: torch.Generator):
        self.volume = volume
        self.imaging = imaging
        self.input_size, self.input_pixel_size, self.phase_flip = input_size, input_pixel_size, phase_flip
        self.aug = aug
        self.generator = generator
        self.calls = 0
        self.prepared = prepare_volume(volume)
        self.signal_variance = self._signal_variance()

    def _signal_variance(self) -> float:
        g = torch.Generator().manual_seed(12345)
        rot = so3.sample_rotations(256, g)
        ctf = self._ctf(256, g)
        clean = render(self.prepared, rot, torch.zeros(256, 2), ctf, self.imaging.pixel_size)
        return float(image_variances(clean).mean())

    def _ctf(self, m: int, g: torch.Generator) -> CTFParams | None:
        pool = self.imaging.ctf
        if pool is None:
            return None
        return pool.subset(torch.randint(0, len(pool), (m,), generator=g))

    def state(self) -> dict:
        return {"generator": self.generator.get_state(), "calls": self.calls}

    def load_state(self, state: dict) -> None:
        self.generator.set_state(state["generator"])
        self.calls = int(state["calls"])

    def batch(self, m: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(inputs (m, S, S), rotations (m, 3, 3), designed distances (m // 2,))``."""
        g = self.generator
        if self.aug.enabled and self.calls % self.aug.refresh == 0:
            self.prepared = prepare_volume(augment_volume(self.volume, self.imaging.pixel_size, self.aug, g))
        self.calls += 1
        rot, d = balanced_orientations(m, g)
        r = self.imaging.max_shift_px * torch.sqrt(torch.rand(m, generator=g))
        t = 2 * math.pi * torch.rand(m, generator=g)
        shifts = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
        ctf = self._ctf(m, g)
        clean = render(self.prepared, rot, shifts, ctf, self.imaging.pixel_size)
        if math.isfinite(self.imaging.snr):
            variance = self.signal_variance / max(self.imaging.snr, 1e-6)
            clean = clean + sample_noise(clean.shape, variance, g)
        inputs = prepare_inputs(clean, self.imaging.pixel_size, ctf, self.input_size,
                                self.input_pixel_size, self.phase_flip)
        return inputs, rot, d
