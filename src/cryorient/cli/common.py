"""Shared CLI plumbing: one-line argument errors, option parsers, logging, progress bars, the
device. Nothing heavy is imported at module level (``cryorient --help`` must start fast)."""

from __future__ import annotations

import argparse
import logging
import math
import sys
from fractions import Fraction

from ..config import check_snr
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


def parse_snr(text: str) -> float:
    """An SNR: a ratio (``1/16``, ``0.0625``) or ``inf``, within the range the simulator takes."""
    value = parse_ratio(text)
    try:
        return check_snr(value)
    except CryorientError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_positive(text: str) -> float:
    """A finite number > 0."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (v > 0 and math.isfinite(v)):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return v


def parse_range(text: str) -> tuple[float, float]:
    """``lo,hi`` -> a tuple of two floats."""
    try:
        lo, hi = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers 'lo,hi', got {text!r}") from None
    return lo, hi


def parse_chains(text: str) -> tuple[str, ...]:
    """``A,B,C`` -> ``("A", "B", "C")``."""
    chains = tuple(c.strip() for c in text.split(",") if c.strip())
    if not chains:
        raise argparse.ArgumentTypeError(f"expected chain names like A,B,C, got {text!r}")
    return chains


def add_run_options(parser: argparse.ArgumentParser, outdir_required: bool = True) -> None:
    """``--outdir``, ``--overwrite``, ``--seed``, ``--quiet``, ``--threads``."""
    g = parser.add_argument_group("run")
    g.add_argument("--outdir", required=outdir_required, help="run directory to write")
    g.add_argument("--overwrite", action="store_true", help="replace an existing --outdir")
    g.add_argument("--seed", type=int, default=0, help="random seed (recorded in run.json)")
    g.add_argument("--threads", type=int, default=None, help="CPU threads for torch (default: all)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or info messages")


def add_device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="where the numerics run: auto = a CUDA GPU when one is present, else the CPU")


def add_star_pixel_size(p: argparse.ArgumentParser) -> None:
    """``--pixel-size``, for RELION 3.0 particle STAR files that do not carry one."""
    p.add_argument("--pixel-size", type=parse_positive, default=None,
                   help="pixel size in Å (only for RELION 3.0 STAR files that lack it)")


def setup(args: argparse.Namespace):
    """Logging, threads and the seeded generator (a ``torch.Generator``) for a command."""
    import torch

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


def resolve_device(name: str):
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise CryorientError("--device cuda: no CUDA GPU is available here; use --device cpu or auto")
    return torch.device(name)


def progress(total: int | None, desc: str, quiet: bool, unit: str = "img"):
    """A progress bar on stderr (hidden with --quiet)."""
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=quiet, file=sys.stderr,
                dynamic_ncols=True, leave=False)
