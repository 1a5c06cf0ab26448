"""``cryorient reconstruct``: the volume from images and orientations, with FSC."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from ..config import ReconstructConfig
from .common import (
    HelpFormatter,
    add_device_option,
    add_run_options,
    add_star_pixel_size,
    parse_positive,
    progress,
    resolve_device,
    setup,
)

_C = ReconstructConfig()

EXAMPLES = """examples:
  cryorient reconstruct --particles runs/sim/particles.star --reference runs/sim/volume.mrc \\
      --outdir runs/rec
  cryorient reconstruct --particles runs/recover/orientations.star --outdir runs/rec_recovered
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="reconstruct a volume from a particle STAR (direct Fourier inversion, FSC)",
        description="Reconstruct the density from the images, orientations, origins (and CTF) of a "
                    "RELION particle STAR by direct Fourier inversion with Wiener-style CTF weighting. "
                    "Writes reconstruction.mrc, half maps, fsc.csv and figures; with --reference, "
                    "also the FSC against it (0.5 threshold). The reference must be in the frame of "
                    "the orientations (see docs/conventions.md).",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--particles", required=True, help="particle STAR with angles (and origins, CTF)")
    p.add_argument("--orientations", default=None,
                   help="take the orientations and origins from this STAR (angles, origins) or npz "
                        "(quaternions and origins, from cryorient recover) instead of --particles; one "
                        "per particle, same order")
    p.add_argument("--reference", default=None, help="reference map (MRC) for the FSC at 0.5")
    p.add_argument("--halves", action=argparse.BooleanOptionalAction, default=True,
                   help="reconstruct two random halves and report their FSC at 0.143")
    p.add_argument("--wiener", type=parse_positive, default=_C.wiener,
                   help="Wiener constant, relative to the mean sum of CTF^2")
    p.add_argument("--no-ctf", action="store_true", help="ignore the STAR's CTF parameters")
    p.add_argument("--mask", choices=("sphere", "none"), default="sphere",
                   help="mask used for FSC curves (soft sphere of the box)")
    p.add_argument("--symmetry", default=_C.symmetry, type=str.upper,
                   help="insert each image along its symmetry mates (RELION's point-group names)")
    p.add_argument("--lowpass", action="store_true",
                   help="low-pass the final map at the half-map FSC resolution")
    add_star_pixel_size(p)
    p.add_argument("--batch-size", type=int, default=_C.batch_size, help="images per batch")
    add_device_option(p)
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    generator = setup(args)
    device = resolve_device(args.device)
    opts = ReconstructConfig(halves=args.halves, wiener=args.wiener, batch_size=args.batch_size,
                             use_ctf=not args.no_ctf, mask=args.mask, lowpass=args.lowpass, symmetry=args.symmetry)
    from ..density import load_reference
    from ..particles import load_poses, read_particles
    from ..reconstruct.run import reconstruct, write_reconstruction
    from ..rundir import run_directory, write_json

    stack = read_particles(args.particles, args.pixel_size)
    if args.orientations:
        rotations, origins = load_poses(args.orientations, stack.n)
        stack = stack.with_orientations(rotations, origins)
    rotations = stack.rotations()
    reference = load_reference(args.reference, stack.box, stack.pixel_size) if args.reference else None
    config = {"particles": args.particles, "orientations": args.orientations,
              "reference": args.reference, "options": opts}
    outdir = Path(args.outdir)
    with run_directory(outdir, "reconstruct", config, overwrite=args.overwrite, seed=args.seed) as stage:
        t0 = time.perf_counter()
        with progress(stack.n, "reconstruct", args.quiet) as bar:
            result = reconstruct(stack, rotations, opts, reference, bar.update, generator, device)
        elapsed = time.perf_counter() - t0
        write_reconstruction(result, stage, reference)
        metrics = {"n_particles": stack.n, **result.metrics(), "wall_time_s": round(elapsed, 3)}
        write_json(stage / "metrics.json", metrics)
    parts = [f"reconstructed {stack.n} particles (box {stack.box}, {stack.pixel_size} Å/px) "
             f"in {elapsed:.1f} s"]
    if result.resolution_halves is not None:
        r = result.resolution_halves
        parts.append(f"half maps {'<=' if r.reached_nyquist else ''}{r.angstrom:.2f} Å @ FSC 0.143")
    if result.resolution_reference is not None:
        r = result.resolution_reference
        parts.append(f"vs reference {'<=' if r.reached_nyquist else ''}{r.angstrom:.2f} Å @ FSC 0.5")
    print("; ".join(parts))
    print(f"wrote reconstruction.mrc, fsc.csv and figures/ in {outdir}")
    return 0
