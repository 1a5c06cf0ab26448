"""``cryorient simulate``: a structure -> a RELION particle stack with known orientations."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from ..config import DEFAULT_STRUCTURE, CTFSampling, DensityConfig, SimulationConfig
from .common import (
    HelpFormatter,
    add_run_options,
    parse_chains,
    parse_positive,
    parse_range,
    parse_snr,
    progress,
    setup,
)

EXAMPLES = """examples:
  cryorient simulate --outdir runs/sim
  cryorient simulate --structure 1ake_adk_closed --n-particles 5000 --box-size 64 \\
      --pixel-size 2.0 --snr 1/16 --max-shift-px 4 --ctf --outdir runs/sim_ctf
  cryorient simulate --structure 3kpr --chains A,B,C,D,E --pixel-size 2.5 --outdir runs/one_copy
  cryorient simulate --structure my_model.cif --snr inf --max-shift-px 0 --outdir runs/clean
  cryorient simulate --structure map.mrc --tilt-max-deg 72 --orientation-sampling euler \\
      --noise-variance 16 --outdir runs/seed_like
"""
_D, _S, _C = DensityConfig(), SimulationConfig(), CTFSampling()


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="simulate projections of a structure (MRCS + RELION STAR)",
        description="Simulate a single-particle stack: density from a structure (bundled name, "
                    "PDB/mmCIF or MRC map), orientations uniform on SO(3) or in a range, "
                    "sub-pixel shifts, optional CTF, white noise at a stated SNR "
                    "(var(clean)/var(noise) over the box). Writes particles.mrcs, particles.star "
                    "(RELION 3.1), volume.mrc and figures.",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    add_simulation_options(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def add_simulation_options(p) -> None:
    """The structure, particle, orientation and CTF options (shared with ``cryorient run``)."""
    g = p.add_argument_group("structure")
    g.add_argument("--structure", default=DEFAULT_STRUCTURE,
                   help="bundled name (see 'cryorient structures') or PDB/mmCIF/MRC path")
    g.add_argument("--box-size", type=int, default=_D.box, help="box size in pixels (even)")
    g.add_argument("--pixel-size", type=parse_positive, default=None,
                   help=f"pixel size in Å (default {_D.pixel_size}); with --particles, only for RELION 3.0 "
                        "STAR files that lack one")
    g.add_argument("--resolution", type=parse_positive, default=_D.resolution,
                   help="band limit of the density in Å (default 2.5 x pixel size)")
    g.add_argument("--keep-ligands", action="store_true", help="keep ligands (waters are dropped)")
    g.add_argument("--chains", type=parse_chains, default=_D.chains,
                   help="keep only these chains of an atomic model, e.g. A,B,C,D,E")
    g = p.add_argument_group("particles")
    g.add_argument("--n-particles", type=int, default=_S.n_particles, help="number of particles")
    g.add_argument("--snr", type=parse_snr, default=_S.snr,
                   help="signal-to-noise ratio (e.g. 0.0625, 1/16; inf = no noise)")
    g.add_argument("--noise-variance", type=float, default=_S.noise_variance,
                   help="absolute noise variance sigma^2 instead of --snr (the seed's levels)")
    g.add_argument("--max-shift-px", type=float, default=_S.max_shift_px,
                   help="maximum shift in pixels (0 = none)")
    g.add_argument("--shift-distribution", choices=("uniform", "gaussian"), default=_S.shift_distribution,
                   help="uniform in the disc of radius max, or Gaussian (sigma = max/2) clipped")
    g = p.add_argument_group("orientations (RELION angles, degrees)")
    g.add_argument("--orientation-sampling", choices=("so3", "euler"), default=_S.orientation_mode,
                   help="so3: uniform on SO(3) (restricted to the ranges); euler: each angle uniform")
    g.add_argument("--tilt-max-deg", type=float, default=_S.tilt_range_deg[1], help="maximum tilt (seed: 72)")
    g.add_argument("--tilt-min-deg", type=float, default=_S.tilt_range_deg[0], help="minimum tilt")
    g.add_argument("--rot-range-deg", type=parse_range, default=_S.rot_range_deg, help="rot range lo,hi")
    g.add_argument("--psi-range-deg", type=parse_range, default=_S.psi_range_deg, help="psi range lo,hi")
    g = p.add_argument_group("CTF (off unless --ctf)")
    g.add_argument("--ctf", action="store_true", help="apply a CTF")
    g.add_argument("--defocus-range-um", type=parse_range,
                   default=(_C.defocus_min_angstrom / 1e4, _C.defocus_max_angstrom / 1e4),
                   help="defocus range in µm (underfocus positive)")
    g.add_argument("--astigmatism-um", type=float, default=_C.astigmatism_angstrom / 1e4,
                   help="maximum astigmatism |dU - dV| / 2 in µm")
    g.add_argument("--voltage", type=float, default=_C.voltage_kv, help="voltage in kV")
    g.add_argument("--cs", type=float, default=_C.cs_mm, help="spherical aberration in mm")
    g.add_argument("--amplitude-contrast", type=float, default=_C.amplitude_contrast,
                   help="amplitude contrast")
    g.add_argument("--phase-flip", action="store_true", help="apply sign(CTF) instead of the CTF")
    g.add_argument("--batch-size", type=int, default=_S.batch_size, help="images per batch")


def config_from_args(args: argparse.Namespace) -> tuple[DensityConfig, SimulationConfig]:
    density = DensityConfig(box=args.box_size,
                            pixel_size=args.pixel_size if args.pixel_size is not None else _D.pixel_size,
                            resolution=args.resolution, keep_ligands=args.keep_ligands,
                            chains=args.chains)
    ctf = CTFSampling(defocus_min_angstrom=args.defocus_range_um[0] * 1e4,
                      defocus_max_angstrom=args.defocus_range_um[1] * 1e4,
                      astigmatism_angstrom=args.astigmatism_um * 1e4, voltage_kv=args.voltage,
                      cs_mm=args.cs, amplitude_contrast=args.amplitude_contrast)
    cfg = SimulationConfig(
        n_particles=args.n_particles, snr=args.snr, noise_variance=args.noise_variance,
        max_shift_px=args.max_shift_px, shift_distribution=args.shift_distribution,
        ctf=args.ctf, ctf_sampling=ctf, phase_flip=args.phase_flip,
        rot_range_deg=args.rot_range_deg, tilt_range_deg=(args.tilt_min_deg, args.tilt_max_deg),
        psi_range_deg=args.psi_range_deg, orientation_mode=args.orientation_sampling,
        batch_size=args.batch_size)
    return density, cfg


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    density, cfg = config_from_args(args)  # validated before the run directory exists
    from ..imaging.noise import snr_to_db
    from ..rundir import run_directory, write_json
    from ..simulate.run import run_simulation

    config = {"structure": args.structure, "density": density, "simulation": cfg}
    outdir = Path(args.outdir)
    with run_directory(outdir, "simulate", config, overwrite=args.overwrite, seed=args.seed) as stage:
        with progress(cfg.n_particles, "simulate", args.quiet) as bar:
            result = run_simulation(args.structure, density, cfg, stage, generator, bar.update)
        write_json(stage / "metrics.json", result.metrics)
    m = result.metrics
    snr = m["measured_snr"]
    snr_txt = "no noise" if math.isinf(snr) else f"SNR {snr:.4g} ({snr_to_db(snr):.1f} dB) measured"
    print(f"simulated {m['n_particles']} particles of {args.structure}: box {m['box']} px, "
          f"{m['pixel_size']} Å/px, {snr_txt}, shifts <= {m['max_shift_px']} px, "
          f"CTF {'on' if m['ctf'] else 'off'} ({m['wall_time_s']:.1f} s, {m['images_per_s']:.0f} images/s)")
    print(f"wrote {outdir / 'particles.star'} + particles.mrcs, volume.mrc and figures/ in {outdir}")
    return 0
