"""``cryorient export-relion``: hand a cryorient run to RELION's 3D auto-refine."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import CryorientError
from .common import HelpFormatter, add_run_options, parse_positive, setup

EXAMPLES = """examples:
  cryorient export-relion --run runs/demo --outdir runs/demo_relion --lowpass 30
  cd runs/demo_relion && sh relion_refine.sh
  cryorient export-relion --sphere --particles runs/demo/simulate/particles.star --diameter 140 --outdir s
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="write what relion_refine --auto_refine needs to start from a cryorient run",
        description="From a finished 'cryorient run' directory, write particles.star (cryorient's "
                    "angles and origins, image paths relative to the new directory), initial_model.mrc "
                    "(the map low-passed to --lowpass Å, same pixel size, the hand of the angles) and "
                    "relion_refine.sh (local searches around cryorient's angles). With --sphere, a "
                    "featureless sphere and the particles without angles instead (the usual baseline).",
        epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--run", default=None, help="a cryorient run directory")
    p.add_argument("--lowpass", type=parse_positive, default=30.0, help="low-pass of the initial model in Å")
    p.add_argument("--sphere", action="store_true", help="export a featureless sphere instead")
    p.add_argument("--particles", default=None, help="particle STAR (with --sphere)")
    p.add_argument("--diameter", type=parse_positive, default=None,
                   help="sphere diameter in Å (with --sphere)")
    add_run_options(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    setup(args)
    if args.sphere:
        if not args.particles or not args.diameter:
            raise CryorientError("--sphere needs --particles and --diameter")
    elif not args.run:
        raise CryorientError("give --run RUN_DIR (or --sphere --particles STAR --diameter D)")
    from ..export import export_run, export_sphere
    from ..rundir import run_directory, write_json

    outdir = Path(args.outdir)
    config = {k: v for k, v in vars(args).items() if k != "func"}
    with run_directory(outdir, "export-relion", config, overwrite=args.overwrite, seed=args.seed) as stage:
        info = (export_sphere(Path(args.particles), stage, args.diameter) if args.sphere
                else export_run(Path(args.run), stage, args.lowpass))
        write_json(stage / "metrics.json", info)
    print(f"wrote particles.star and initial_model.mrc for {info['particles']} particles in {outdir}")
    if not args.sphere:
        print(f"next: cd {outdir} && sh relion_refine.sh")
    return 0
