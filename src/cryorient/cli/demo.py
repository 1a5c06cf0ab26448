"""``cryorient demo``: ``run`` on the bundled default structure, reference-trained, at a
realistic noise level (SNR 1/16, CTF, shifts up to 4 px). The model trained for exactly this
setting ships with the package, so the demo finds it in the cache and does not retrain
(without it, training takes about 40 minutes on two cores)."""

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
                    "SNR 1/16, CTF, shifts up to 4 px), train the distance on the same structure (found "
                    "in the cache: a model for exactly this setting ships with cryorient), recover the "
                    "orientations, reconstruct, evaluate and write report.html. Any 'run' option "
                    "changes the setting.",
        formatter_class=HelpFormatter)
    add_pipeline_options(p)
    add_run_options(p, outdir_required=False)
    p.set_defaults(func=run, **DEMO_DEFAULTS)
    return p


def run(args: argparse.Namespace) -> int:
    return execute(args, "demo")
