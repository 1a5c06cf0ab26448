"""``cryorient demo``: ``run`` on the bundled default structure at a realistic noise level (SNR
1/16, CTF, shifts up to 4 px): an initial map from the particles, put in the structure's frame
and hand, then gold-standard refinement, judged against the truth, with a report."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_STRUCTURE
from .common import HelpFormatter, add_run_options
from .run import add_pipeline_options, execute

DEMO_DEFAULTS = {"reference": DEFAULT_STRUCTURE, "ctf": True, "outdir": "runs/demo"}


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(
        name, help="the pipeline on the bundled default structure (the README's main command)",
        description="Simulate 5000 particles of the default structure (3kpr_single, 64 px, 2.5 Å/px, "
                    "SNR 1/16, CTF, shifts up to 4 px), make an initial map from the particles alone, put "
                    "it in the structure's frame and hand, refine with independent half sets, evaluate "
                    "against the truth and write report.html (about 11 minutes on two cores; "
                    "--start reference refines from the structure low-passed to 40 Å instead). Any "
                    "'run' option changes the setting, e.g. --method distances for the original method.",
        formatter_class=HelpFormatter)
    add_pipeline_options(p)
    add_run_options(p, outdir_required=False)
    p.set_defaults(func=run, **DEMO_DEFAULTS)
    return p


def run(args: argparse.Namespace) -> int:
    return execute(args, "demo")
