"""The composed simulator: orientations, shifts, CTF and noise -> a particle stack.

Randomness comes from one ``torch.Generator`` in a fixed order (orientations, shifts, CTF,
then noise batch by batch), so the same seed and configuration give the same stack.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from .. import so3
from ..config import SimulationConfig
from ..ctf import CTFParams, sample_ctf, subset
from ..imaging.noise import image_variances, noise_variance_for_snr, sample_noise
from ..imaging.projector import prepare_volume
from ..imaging.render import render, sample_shifts
from ..particles import ANGLE_COLUMNS, DEFOCUS_COLUMNS, ImageStack, ParticleStack, make_optics

PILOT_SIZE = 1024  # particles used to measure the clean-image variance for the noise level


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
    shifts = sample_shifts(n, cfg.max_shift_px, generator, cfg.shift_distribution)
    ctf = sample_ctf(n, cfg.ctf_sampling, generator) if cfg.ctf else None
    return SimulatedParticles(rot, shifts, ctf)


def simulate(volume: torch.Tensor, pixel_size: float, cfg: SimulationConfig,
             generator: torch.Generator,
             sink: Callable[[torch.Tensor, torch.Tensor], None],
             progress: Callable[[int], None] | None = None) -> SimulatedParticles:
    """Simulate a stack batch by batch; ``sink(noisy, clean)`` receives each batch.

    The noise variance is ``mean var(clean) / snr`` over a pilot of the first
    ``min(N, 1024)`` particles (or ``cfg.noise_variance`` when given); the returned record
    holds it and the SNR measured over the whole stack.
    """
    truth = draw_particles(cfg, generator)
    prepared = prepare_volume(volume)
    n, bs = cfg.n_particles, cfg.batch_size

    def batch(lo: int, hi: int) -> torch.Tensor:
        return render(prepared, truth.rotations[lo:hi], truth.shifts_px[lo:hi],
                      subset(truth.ctf, slice(lo, hi)), pixel_size, cfg.phase_flip)

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
