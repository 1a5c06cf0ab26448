"""The composed simulator: orientations, shifts, CTF and noise -> a particle stack.

Randomness comes from one ``torch.Generator`` in a fixed order (orientations, shifts, CTF,
then noise batch by batch), so the same seed and configuration give the same stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from .. import so3
from ..ctf import CTFParams, CTFSampling, ctf_rfft, sample_ctf
from ..errors import CryorientError, require_positive
from ..fourier import irfft2_centered, phase_shift_spectra
from ..particles import ANGLE_COLUMNS, DEFOCUS_COLUMNS, ImageStack, ParticleStack, make_optics
from .noise import image_variances, noise_variance_for_snr, sample_noise
from .projector import PreparedVolume, prepare_volume, project_spectra

PILOT_SIZE = 1024  # particles used to measure the clean-image variance for the noise level


@dataclass(frozen=True)
class SimulationConfig:
    """What to simulate. Angles in degrees (RELION's rot, tilt, psi ranges)."""

    n_particles: int = 5000
    snr: float = 1 / 16  # inf: no noise
    noise_variance: float | None = None  # absolute sigma^2 (the seed's levels); overrides snr
    max_shift_px: float = 4.0
    shift_distribution: str = "uniform"  # uniform in the disc, or gaussian (sigma = max / 2)
    ctf: bool = False
    ctf_sampling: CTFSampling = field(default_factory=CTFSampling)
    phase_flip: bool = False
    rot_range_deg: tuple[float, float] = (-180.0, 180.0)
    tilt_range_deg: tuple[float, float] = (0.0, 180.0)
    psi_range_deg: tuple[float, float] = (-180.0, 180.0)
    orientation_mode: str = "so3"
    batch_size: int = 256

    def validate(self) -> None:
        if int(self.n_particles) != self.n_particles or self.n_particles <= 0:
            raise CryorientError(f"number of particles must be a positive integer, got {self.n_particles}")
        if self.noise_variance is None:
            require_positive(self.snr, "SNR", allow_inf=True)
        elif not (self.noise_variance >= 0 and math.isfinite(self.noise_variance)):
            raise CryorientError(f"noise variance must be >= 0, got {self.noise_variance}")
        if not (self.max_shift_px >= 0 and math.isfinite(self.max_shift_px)):
            raise CryorientError(f"maximum shift must be >= 0 px, got {self.max_shift_px}")
        if self.shift_distribution not in ("uniform", "gaussian"):
            raise CryorientError(f"unknown shift distribution {self.shift_distribution!r}; "
                                 "use uniform or gaussian")
        if self.ctf:
            c = self.ctf_sampling
            if not (0 < c.defocus_min_angstrom <= c.defocus_max_angstrom):
                raise CryorientError("defocus range must satisfy 0 < min <= max (Å)")
            require_positive(c.voltage_kv, "voltage")
            if not (0 <= c.amplitude_contrast < 1):
                raise CryorientError("amplitude contrast must be in [0, 1)")


@dataclass(frozen=True)
class SimulatedParticles:
    """The per-particle truth of a simulation."""

    rotations: torch.Tensor  # (N, 3, 3)
    shifts_px: torch.Tensor  # (N, 2) displacement (x, y) applied to the image content
    ctf: CTFParams | None
    noise_variance: float = 0.0
    measured_snr: float = math.inf


def draw_particles(cfg: SimulationConfig, generator: torch.Generator) -> SimulatedParticles:
    """Draw orientations, shifts and CTF parameters (in this order) for ``cfg.n_particles``."""
    n = cfg.n_particles
    rot = so3.sample_rotations(n, generator, cfg.rot_range_deg, cfg.tilt_range_deg,
                               cfg.psi_range_deg, cfg.orientation_mode)
    if cfg.max_shift_px > 0:
        if cfg.shift_distribution == "uniform":
            u = torch.rand(n, 2, generator=generator, dtype=torch.float64)
            r = cfg.max_shift_px * torch.sqrt(u[:, 0])
            t = 2 * math.pi * u[:, 1]
            shifts = torch.stack([r * torch.cos(t), r * torch.sin(t)], dim=1)
        else:
            shifts = torch.randn(n, 2, generator=generator, dtype=torch.float64) * cfg.max_shift_px / 2
            norm = shifts.norm(dim=1, keepdim=True)
            shifts = torch.where(norm > cfg.max_shift_px, shifts * cfg.max_shift_px / norm, shifts)
        shifts = shifts.float()
    else:
        shifts = torch.zeros(n, 2)
    ctf = sample_ctf(n, cfg.ctf_sampling, generator) if cfg.ctf else None
    return SimulatedParticles(rot, shifts, ctf)


def render(prepared: PreparedVolume, rotations: torch.Tensor, shifts_px: torch.Tensor,
           ctf: CTFParams | None, pixel_size: float, phase_flip: bool = False) -> torch.Tensor:
    """Clean images of one batch: projection, CTF, then the shift (all in Fourier space)."""
    spectra = project_spectra(prepared, rotations)
    if ctf is not None:
        spectra = spectra * ctf_rfft(ctf, prepared.box, pixel_size, phase_flip)
    if bool(shifts_px.abs().max() > 0):
        spectra = phase_shift_spectra(spectra, shifts_px, prepared.box)
    return irfft2_centered(spectra, prepared.box)


def simulate(volume: torch.Tensor, pixel_size: float, cfg: SimulationConfig,
             generator: torch.Generator,
             sink: Callable[[torch.Tensor, torch.Tensor], None],
             progress: Callable[[int], None] | None = None) -> SimulatedParticles:
    """Simulate a stack batch by batch; ``sink(noisy, clean)`` receives each batch.

    The noise variance is ``mean var(clean) / snr`` over a pilot of the first
    ``min(N, 1024)`` particles (or ``cfg.noise_variance`` when given); the returned record
    holds it and the SNR measured over the whole stack.
    """
    cfg.validate()
    truth = draw_particles(cfg, generator)
    prepared = prepare_volume(volume)
    n, bs = cfg.n_particles, cfg.batch_size

    def batch(lo: int, hi: int) -> torch.Tensor:
        ctf = truth.ctf.subset(slice(lo, hi)) if truth.ctf is not None else None
        return render(prepared, truth.rotations[lo:hi], truth.shifts_px[lo:hi], ctf, pixel_size,
                      cfg.phase_flip)

    starts = range(0, n, bs)
    # The pilot's clean batches are kept and reused below (not recomputed).
    pilot = ([] if cfg.noise_variance is not None
             else [batch(lo, min(lo + bs, n)) for lo in starts if lo < min(PILOT_SIZE, n)])
    if cfg.noise_variance is not None:
        variance = float(cfg.noise_variance)
    else:
        variance = noise_variance_for_snr(torch.cat(pilot), cfg.snr)
    signal_sum, noise_sum = 0.0, 0.0
    for k, lo in enumerate(starts):
        hi = min(lo + bs, n)
        clean = pilot[k] if k < len(pilot) else batch(lo, hi)
        noise = sample_noise(clean.shape, variance, generator, clean.dtype, clean.device)
        signal_sum += float(image_variances(clean).double().sum())
        noise_sum += float(image_variances(noise).double().sum())
        sink(clean + noise, clean)
        if progress is not None:
            progress(hi - lo)
    snr = math.inf if noise_sum == 0 else signal_sum / noise_sum
    return SimulatedParticles(truth.rotations, truth.shifts_px, truth.ctf, variance, snr)


def particle_table(truth: SimulatedParticles, pixel_size: float) -> pd.DataFrame:
    """RELION ``data_particles`` columns for simulated particles (without image names).

    ``rlnOriginX/YAngst`` is the shift that brings the particle back to the centre, i.e. minus
    the displacement applied; defocus columns are written only when a CTF was applied.
    """
    ang = so3.rotmat_to_euler(truth.rotations.double()).numpy()
    table = pd.DataFrame({c: ang[:, k] for k, c in enumerate(ANGLE_COLUMNS)})
    origin = (-truth.shifts_px.double() * pixel_size).numpy()
    table["rlnOriginXAngst"] = origin[:, 0]
    table["rlnOriginYAngst"] = origin[:, 1]
    if truth.ctf is not None:
        for c, v in zip(DEFOCUS_COLUMNS, (truth.ctf.defocus_u_angstrom, truth.ctf.defocus_v_angstrom,
                                          truth.ctf.defocus_angle_deg)):
            table[c] = v.double().numpy()
    table["rlnOpticsGroup"] = 1
    table["rlnMicrographName"] = "simulated.mrc"
    return table


def simulation_optics(cfg: SimulationConfig, pixel_size: float, box: int) -> pd.DataFrame:
    c = cfg.ctf_sampling
    return make_optics(pixel_size, box, c.voltage_kv, c.cs_mm, c.amplitude_contrast)


def simulate_stack(volume: torch.Tensor, pixel_size: float, cfg: SimulationConfig,
                   generator: torch.Generator) -> tuple[ParticleStack, SimulatedParticles]:
    """Simulate a stack in memory (for tests, training and small runs)."""
    box = volume.shape[-1]
    out = np.empty((cfg.n_particles, box, box), dtype=np.float32)
    pos = [0]

    def sink(noisy: torch.Tensor, clean: torch.Tensor) -> None:
        out[pos[0]:pos[0] + len(noisy)] = noisy.numpy()
        pos[0] += len(noisy)

    truth = simulate(volume, pixel_size, cfg, generator, sink)
    stack = ParticleStack(ImageStack.from_array(out), pixel_size, particle_table(truth, pixel_size),
                          simulation_optics(cfg, pixel_size, box))
    return stack, truth
