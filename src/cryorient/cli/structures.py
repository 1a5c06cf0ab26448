"""``cryorient structures``: list the bundled structures."""

from __future__ import annotations

import argparse

from ..config import DEFAULT_STRUCTURE
from .common import HelpFormatter


def add_parser(sub, name: str) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help="list the bundled structures (name, residues, size)",
                       description="List the structures shipped with cryorient. Use a name with "
                                   "--structure (or --reference); any PDB/mmCIF/MRC path works too.",
                       formatter_class=HelpFormatter)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from ..structure import bundled_structures, structure_info

    print(f"{'name':<18} {'chains':>6} {'residues':>8} {'atoms':>6} {'diameter/Å':>10} {'extent/Å':>9}")
    for name, path in bundled_structures().items():
        info = structure_info(name, path)
        mark = "  (default)" if name == DEFAULT_STRUCTURE else ""
        print(f"{name:<18} {info.n_chains:>6} {info.n_residues:>8} {info.n_atoms:>6} "
              f"{info.diameter_angstrom:>10.1f} {info.max_extent_angstrom:>9.1f}{mark}")
    return 0
