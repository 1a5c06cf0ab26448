"""``cryorient reconstruct`` as library functions: half maps, FSC, figures and files."""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..config import ReconstructConfig
from ..errors import CryorientError
from ..imaging.accumulator import backproject, half_accumulators
from ..imaging.batches import stack_batches
from ..io import atomic_output, write_mrc
from ..particles import ParticleStack
from ..symmetry import point_group
from ..volumes import (
    Resolution,
    fsc,
    lowpass_to_resolution,
    resolution_at,
    shell_frequencies,
    soft_sphere_mask,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconstructionResult:
    volume: torch.Tensor
    half_maps: tuple[torch.Tensor, torch.Tensor] | None
    fsc_halves: np.ndarray | None
    resolution_halves: Resolution | None  # at 0.143
    fsc_reference: np.ndarray | None
    resolution_reference: Resolution | None  # at 0.5
    pixel_size: float

    def metrics(self) -> dict:
        out = {"box": int(self.volume.shape[-1]), "pixel_size": self.pixel_size}
        if self.resolution_halves is not None:
            out["resolution_halves_0143_angstrom"] = round(self.resolution_halves.angstrom, 3)
            out["halves_reach_nyquist"] = self.resolution_halves.reached_nyquist
        if self.resolution_reference is not None:
            out["resolution_vs_reference_05_angstrom"] = round(self.resolution_reference.angstrom, 3)
            out["reference_reaches_nyquist"] = self.resolution_reference.reached_nyquist
        return out


def reconstruct(stack: ParticleStack, rotations: torch.Tensor, opts: ReconstructConfig,
                reference: torch.Tensor | None = None, progress: Callable[[int], None] | None = None,
                generator: torch.Generator | None = None, device=None) -> ReconstructionResult:
    """Reconstruct ``stack`` with ``rotations (N, 3, 3)`` and the stack's origins (and CTF).

    With ``opts.halves`` the half sets are the stack's (``rlnRandomSubset``; drawn with
    ``generator`` when the STAR has none), each reconstructed; the full map is the sum of both
    accumulators (no extra insertion)."""
    n = stack.n
    if rotations.shape != (n, 3, 3):
        raise CryorientError(f"{rotations.shape[0]} orientations for {n} images; they must match")
    if not torch.isfinite(rotations).all():
        raise CryorientError("orientations contain NaN or infinite values")
    if opts.halves and n < 2:
        raise CryorientError(f"half maps need at least 2 particles, the stack has {n}")
    origins_px = stack.shifts_angstrom() / stack.pixel_size
    if not opts.use_ctf:
        stack = stack.without_ctf()

    def read(indices: np.ndarray):
        return stack_batches(stack, opts.batch_size, indices, device=device)

    mask = soft_sphere_mask(stack.box) if opts.mask == "sphere" else None
    group = point_group(opts.symmetry)
    ops = group.ops() if group.order > 1 else None
    px = stack.pixel_size
    if opts.halves:
        halves = stack.with_half_sets(generator or torch.Generator().manual_seed(0)).half_sets()
        acc1, acc2 = half_accumulators(read, halves, rotations, origins_px, px, stack.box, progress, device, ops)
        h1, h2 = acc1.finalize(opts.wiener).cpu(), acc2.finalize(opts.wiener).cpu()
        volume = (acc1 + acc2).finalize(opts.wiener).cpu()
        curve = fsc(h1, h2, mask)
        res = resolution_at(curve, stack.box, px, 0.143)
        half_maps = (h1, h2)
    else:
        volume = backproject(read(np.arange(n)), rotations, origins_px, px, stack.box, progress,
                             device, ops).finalize(opts.wiener).cpu()
        curve, res, half_maps = None, None, None
    if opts.lowpass and res is not None:
        volume = lowpass_to_resolution(volume, stack.pixel_size, res.angstrom)
    ref_curve = ref_res = None
    if reference is not None:
        ref_curve = fsc(volume, reference, mask)
        ref_res = resolution_at(ref_curve, stack.box, stack.pixel_size, 0.5)
    return ReconstructionResult(volume, half_maps, curve, res, ref_curve, ref_res, stack.pixel_size)


def write_reconstruction(result: ReconstructionResult, outdir: Path,
                         reference: torch.Tensor | None = None) -> None:
    """Maps, ``fsc.csv`` and figures (FSC curve, central slices, orthogonal projections)."""
    px = result.pixel_size
    box = int(result.volume.shape[-1])
    write_mrc(outdir / "reconstruction.mrc", result.volume, px)
    if result.half_maps is not None:
        write_mrc(outdir / "half1.mrc", result.half_maps[0], px)
        write_mrc(outdir / "half2.mrc", result.half_maps[1], px)
    freqs = shell_frequencies(box, px)
    with atomic_output(outdir / "fsc.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["shell", "frequency_per_angstrom", "resolution_angstrom", "fsc_halves",
                    "fsc_vs_reference"])
        for k, f in enumerate(freqs):
            w.writerow([k, f"{f:.6f}", f"{1 / f:.3f}" if f > 0 else "inf",
                        "" if result.fsc_halves is None else f"{result.fsc_halves[k]:.5f}",
                        "" if result.fsc_reference is None else f"{result.fsc_reference[k]:.5f}"])
    series, vlines = [], []
    if result.fsc_halves is not None:
        series.append(("half maps", freqs, result.fsc_halves))
        r = result.resolution_halves
        vlines.append((r.frequency, f"{r.angstrom:.1f} Å @0.143"))
    if result.fsc_reference is not None:
        series.append(("vs reference", freqs, result.fsc_reference))
        r = result.resolution_reference
        vlines.append((r.frequency, f"{r.angstrom:.1f} Å @0.5"))
    if series:
        plots.curves(series, outdir / "figures" / "fsc.png", "spatial frequency (1/Å)", "FSC",
                     title="Fourier shell correlation",
                     hlines=[(0.143, "0.143"), (0.5, "0.5")], vlines=vlines)
    vols = [("reconstruction", result.volume)]
    if reference is not None:
        vols.append(("reference", reference))
    plots.volume_slices(vols, outdir / "figures" / "central_slices.png", title="Central slices")
    plots.volume_slices(vols, outdir / "figures" / "projections.png", projections=True,
                        title="Orthogonal projections")
