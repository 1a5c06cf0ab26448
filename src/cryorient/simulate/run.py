"""``cryorient simulate`` as a library function: a structure -> files in a run directory."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import plots
from ..config import DensityConfig, SimulationConfig
from ..density import load_volume
from ..imaging.noise import snr_to_db
from ..io import StackWriter, open_mrc_stack, write_mrc
from ..particles import ImageStack, ParticleStack, write_particles
from .simulator import SimulatedParticles, particle_table, simulate, simulation_optics

log = logging.getLogger(__name__)
MONTAGE_SIZE = 8


@dataclass(frozen=True)
class SimulationResult:
    star: Path
    stack: Path
    volume: Path
    truth: SimulatedParticles
    metrics: dict


def run_simulation(structure: str, density: DensityConfig, cfg: SimulationConfig,
                   outdir: Path, generator: torch.Generator,
                   progress: Callable[[int], None] | None = None) -> SimulationResult:
    """Simulate a particle stack of ``structure`` into ``outdir``.

    Writes ``volume.mrc`` (the ground truth), ``particles.mrcs`` (streamed batch by batch),
    ``particles.star`` (RELION 3.1), ``metrics.json``-ready numbers and two figures.
    """
    t0 = time.perf_counter()
    volume = load_volume(structure, density)
    px, box = density.pixel_size, density.box
    write_mrc(outdir / "volume.mrc", volume, px)
    first: dict[str, list[torch.Tensor]] = {"clean": [], "noisy": []}

    stack_path = outdir / "particles.mrcs"
    with StackWriter(stack_path, cfg.n_particles, box, px) as writer:
        def sink(noisy: torch.Tensor, clean: torch.Tensor) -> None:
            if not first["clean"]:
                first["clean"].append(clean[:MONTAGE_SIZE])
                first["noisy"].append(noisy[:MONTAGE_SIZE])
            writer.write(noisy)

        truth = simulate(volume, px, cfg, generator, sink, progress)
    n = cfg.n_particles
    data, _ = open_mrc_stack(stack_path)  # memory-mapped: nothing is read here
    images = ImageStack.from_array(data, stack_path.resolve())
    stack = ParticleStack(images, px, particle_table(truth, px), simulation_optics(cfg, px, box))
    star = outdir / "particles.star"
    write_particles(stack, star)
    elapsed = time.perf_counter() - t0

    figs = outdir / "figures"
    plots.montage([("clean", first["clean"][0]), ("corrupted", first["noisy"][0])],
                  figs / "montage.png",
                  title=f"{structure}: clean vs corrupted (SNR {_snr_text(truth.measured_snr)})")
    plots.viewing_directions([("sampled", truth.rotations)], figs / "viewing_directions.png",
                             title="Sampled viewing directions")
    metrics = {
        "n_particles": n,
        "box": box,
        "pixel_size": px,
        "resolution_angstrom": density.resolved_resolution(),
        "requested_snr": None if cfg.noise_variance is not None else cfg.snr,
        "noise_variance": truth.noise_variance,
        "measured_snr": truth.measured_snr,
        "measured_snr_db": snr_to_db(truth.measured_snr),
        "max_shift_px": cfg.max_shift_px,
        "ctf": cfg.ctf,
        "wall_time_s": round(elapsed, 3),
        "images_per_s": round(n / elapsed, 1),
    }
    log.info("simulated %d particles in %.1f s", n, elapsed)
    return SimulationResult(star, stack_path, outdir / "volume.mrc", truth, metrics)


def _snr_text(snr: float) -> str:
    return "inf (no noise)" if math.isinf(snr) else f"{snr:.4g} = {snr_to_db(snr):.1f} dB"
