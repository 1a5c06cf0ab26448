"""Shared CLI plumbing: one-line argument errors, option parsers, logging, progress bars."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from fractions import Fraction

import torch
from tqdm import tqdm

from ..errors import CryorientError


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (and exit code 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keep the epilog's examples as written and show defaults."""


def parse_ratio(text: str) -> float:
    """A number that may be written as a fraction (``1/16``) or ``inf``."""
    t = text.strip().lower()
    if t in ("inf", "infinity", "none", "clean"):
        return math.inf
    try:
        return float(Fraction(t)) if "/" in t else float(t)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number: {text!r} (e.g. 0.0625, 1/16 or inf)") from None


def parse_range(text: str) -> tuple[float, float]:
    """``lo,hi`` -> a tuple of two floats."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'lo,hi', got {text!r}") from None
    return lo, hi


def add_run_options(parser: argparse.ArgumentParser, outdir_required: bool = True) -> None:
    """``--outdir``, ``--overwrite``, ``--seed``, ``--quiet``, ``--threads``."""
    g = parser.add_argument_group("run")
    g.add_argument("--outdir", required=outdir_required, help="run directory to write")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --outdir")
    g.add_argument("--seed", type=int, default=0, help="random seed (recorded in run.json)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or info messages")


def setup(args: argparse.Namespace) -> torch.Generator:
    """Logging, threads and the seeded generator for a command."""
    logger = logging.getLogger("cryorient")
    logger.setLevel(logging.INFO)
    for h in list(logger.handlers):
        if not isinstance(h, logging.FileHandler):
            logger.removeHandler(h)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.setLevel(logging.WARNING if getattr(args, "quiet", False) else logging.INFO)
    logger.addHandler(handler)
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise CryorientError(f"--threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    return torch.Generator().manual_seed(int(getattr(args, "seed", 0)))


def add_star_pixel_size(p: argparse.ArgumentParser) -> None:
    """``--pixel-size``, for RELION 3.0 particle STAR files that do not carry one."""
    p.add_argument("--pixel-size", type=float, default=None,
                   help="pixel size in Å (only for RELION 3.0 STAR files that lack it)")


def progress(total: int, desc: str, quiet: bool, unit: str = "img") -> tqdm:
    """A progress bar on stderr (hidden with --quiet)."""
    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr,
                dynamic_ncols=True, leave=False)


def parse_chains(text: str) -> tuple[str, ...]:
    """``A,B,C`` -> ``("A", "B", "C")``."""
    chains = tuple(c.strip() for c in text.split(",") if c.strip())
    if not chains:
        raise argparse.ArgumentTypeError(f"expected chain names like A,B,C, got {text!r}")
    return chains
