"""``cryorient inspect``: load any RELION particle STAR and summarise it."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import HelpFormatter, add_star_pixel_size, setup

EXAMPLES = """examples:
  cryorient inspect --particles runs/sim/particles.star
  cryorient inspect --particles relion/Refine3D/job010/run_data.star --outdir runs/inspect
"""


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="load a RELION particle STAR (3.0 or 3.1) and summarise it",
                       description="Load a RELION 3.0 or 3.1 particle STAR file and its image "
                                   "stacks, print a summary, and optionally write figures.",
                       epilog=EXAMPLES, formatter_class=HelpFormatter)
    p.add_argument("--particles", required=True, help="particle STAR file")
    add_star_pixel_size(p)
    p.add_argument("--outdir", default=None, help="write summary.json and figures here")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --outdir")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)
    return p


def summarise(stack) -> dict:
    return {
        "particles": stack.n,
        "box": stack.box,
        "pixel_size": stack.pixel_size,
        "optics_groups": int(stack.optics["rlnOpticsGroup"].nunique()),
        "stacks": len(stack.images.arrays),
        "has_orientations": stack.has_orientations(),
        "has_origins": bool("rlnOriginXAngst" in stack.particles.columns),
        "has_ctf": stack.ctf() is not None,
    }


def run(args: argparse.Namespace) -> int:
    setup(args)
    from .. import plots
    from ..particles import read_particles
    from ..rundir import run_directory, write_json

    stack = read_particles(args.particles, args.pixel_size)
    summary = summarise(stack)
    for k, v in summary.items():
        print(f"{k:>16}: {v}")
    if args.outdir:
        with run_directory(Path(args.outdir), "inspect", vars(args) | {"func": None},
                           overwrite=args.overwrite) as stage:
            write_json(stage / "summary.json", summary)
            plots.montage([("particles", stack.images.read(slice(0, 8)))],
                          stage / "figures" / "montage.png", title=Path(args.particles).name)
            if stack.has_orientations():
                plots.viewing_directions([("STAR", stack.rotations())],
                                         stage / "figures" / "viewing_directions.png")
    return 0
