"""Protein structures: reading PDB/mmCIF atoms with gemmi, and the bundled library.

A structure can be named (one of the bundled PDB entries, see ``cryorient structures``) or
given as a path to a PDB/mmCIF file (plain or .gz) or an MRC map.
"""

from __future__ import annotations

import importlib.resources
from dataclasses import dataclass
from pathlib import Path

import gemmi
import numpy as np
from scipy.spatial.transform import Rotation

from .errors import CryorientError, require_file

DEFAULT_STRUCTURE = "3kpr_single"
ATOM_SUFFIXES = (".pdb", ".ent", ".cif", ".mmcif")
MAP_SUFFIXES = (".mrc", ".map", ".ccp4")


@dataclass(frozen=True)
class StructureInfo:
    """Summary of a structure: name, residue and atom counts, size."""

    name: str
    path: Path
    n_chains: int
    n_residues: int
    n_atoms: int
    diameter_angstrom: float  # twice the largest atom distance from the centre of mass
    max_extent_angstrom: float  # largest side of the bounding box


def _bundled_dir() -> Path:
    return Path(str(importlib.resources.files("cryorient") / "data" / "structures"))


def _strip_suffixes(name: str) -> str:
    for suffix in (".gz", *ATOM_SUFFIXES):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def bundled_structures() -> dict[str, Path]:
    """Names and paths of the structures shipped with the package."""
    files = sorted(_bundled_dir().glob("*.gz"))
    return {_strip_suffixes(p.name): p for p in files}


def resolve_structure(name_or_path: str | Path) -> Path:
    """A bundled structure's path, or the given path if it is a file."""
    bundled = bundled_structures()
    key = str(name_or_path)
    if key in bundled:
        return bundled[key]
    p = Path(key)
    if p.exists():
        return require_file(p, "structure file")
    if p.suffix or "/" in key:
        raise CryorientError(f"structure file not found: {p} (check the path)")
    close = [n for n in bundled if key.lower() in n.lower()][:5]
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise CryorientError(
        f"unknown structure {key!r}{hint}; run 'cryorient structures' for the bundled names "
        "or give a PDB/mmCIF/MRC path"
    )


def structure_kind(path: Path) -> str:
    """``"atoms"`` for PDB/mmCIF (plain or .gz), ``"map"`` for MRC/CCP4 maps."""
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(ATOM_SUFFIXES):
        return "atoms"
    if name.endswith(MAP_SUFFIXES):
        return "map"
    raise CryorientError(
        f"cannot tell the format of {path.name}: use a .pdb/.cif(.gz) atomic model or a .mrc map"
    )


def read_atoms(path: str | Path, keep_ligands: bool = False, chains: tuple[str, ...] | None = None
               ) -> gemmi.Structure:
    """Read a PDB/mmCIF file into a cleaned gemmi Structure (first model only).

    Hydrogens and waters are removed; ligands too unless ``keep_ligands``; with ``chains``,
    only those chains are kept (e.g. one copy of a complex from a crystal's asymmetric unit).
    """
    p = require_file(path, "structure file")
    try:
        st = gemmi.read_structure(str(p))
    except Exception as exc:  # gemmi raises RuntimeError/ValueError with long messages
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CryorientError(f"cannot read structure {p.name}: {first}") from None
    if len(st) == 0:
        raise CryorientError(f"no atoms found in {p.name}: is it a PDB/mmCIF file?")
    while len(st) > 1:
        del st[1]
    st.setup_entities()
    st.remove_hydrogens()
    if keep_ligands:
        st.remove_waters()
    else:
        st.remove_ligands_and_waters()
    st.remove_empty_chains()
    if chains:
        present = [ch.name for ch in st[0]]
        missing = [c for c in chains if c not in present]
        if missing:
            raise CryorientError(f"chain(s) {', '.join(missing)} not in {p.name} (it has "
                                 f"{', '.join(present)})")
        for name in present:
            if name not in chains:
                st[0].remove_chain(name)
    if st[0].count_atom_sites() == 0:
        raise CryorientError(f"no protein atoms found in {p.name}")
    return st


def atom_positions(st: gemmi.Structure) -> np.ndarray:
    """``(n, 3)`` atom positions in Å (first model)."""
    return np.array([a.pos.tolist() for ch in st[0] for res in ch for a in res], dtype=np.float64)


def structure_info(name: str, path: Path) -> StructureInfo:
    """Summary of a PDB/mmCIF structure (after cleaning)."""
    st = read_atoms(path)
    pos = atom_positions(st)
    com = np.asarray(st[0].calculate_center_of_mass().tolist())
    radius = float(np.linalg.norm(pos - com, axis=1).max())
    extent = float((pos.max(0) - pos.min(0)).max())
    n_res = sum(len(ch) for ch in st[0])
    return StructureInfo(name, path, len(st[0]), n_res, len(pos), 2 * radius, extent)


def move_domain(st: gemmi.Structure, chains: tuple[str, ...], angle_deg: float) -> gemmi.Structure:
    """A copy of ``st`` with ``chains`` rotated rigidly by ``angle_deg`` about a hinge: the axis
    through the chains' centroid perpendicular to the line from the whole structure's centre
    of mass to that centroid (a conformational change, for testing reference error)."""
    out = st.clone()
    model = out[0]
    com = np.asarray(model.calculate_center_of_mass().tolist())
    moving = np.array([a.pos.tolist() for ch in model if ch.name in chains for r in ch for a in r])
    if len(moving) == 0:
        raise CryorientError(f"no atoms in chain(s) {', '.join(chains)}")
    centre = moving.mean(0)
    arm = centre - com
    axis = np.cross(arm, [0.0, 0.0, 1.0])
    if np.linalg.norm(axis) < 1e-6:
        axis = np.cross(arm, [1.0, 0.0, 0.0])
    axis /= np.linalg.norm(axis)
    t = np.deg2rad(angle_deg)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rot = np.eye(3) + np.sin(t) * k + (1 - np.cos(t)) * k @ k
    for ch in model:
        if ch.name in chains:
            for r in ch:
                for a in r:
                    p = rot @ (np.asarray(a.pos.tolist()) - centre) + centre
                    a.pos = gemmi.Position(*p)
    return out


def write_structure(st: gemmi.Structure, path: str | Path) -> None:
    """Write a structure as mmCIF (``.cif``) or PDB."""
    path = Path(path)
    if path.suffix == ".cif":
        st.make_mmcif_document().write_file(str(path))
    else:
        st.write_pdb(str(path))


def make_oligomer(st: gemmi.Structure, operators: np.ndarray, distance_angstrom: float | None = None
                  ) -> gemmi.Structure:
    """An exactly symmetric oligomer of the first model: one copy of it per point-group operator
    ``(G, 3, 3)``, each copy the operator applied about the origin to the model moved so that its
    centre of mass sits at ``distance`` (default: its radius) from the origin along a generic
    direction (on no symmetry axis). The result is in the group's frame (RELION's axes); its
    chains are renamed A, B, C, ..."""
    base = st.clone()
    model = base[0]
    com = np.asarray(model.calculate_center_of_mass().tolist())
    pos = atom_positions(base)
    radius = float(np.linalg.norm(pos - com, axis=1).max())
    d = radius if distance_angstrom is None else distance_angstrom
    direction = np.array([0.62, 0.47, 0.31])
    target = d * direction / np.linalg.norm(direction)
    out = gemmi.Structure()
    out.cell = base.cell
    out_model = gemmi.Model("1")
    names = iter("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")
    for op in np.asarray(operators, dtype=np.float64):
        for ch in model:
            copy = gemmi.Chain(next(names))
            for res in ch:
                new = res.clone()
                for a in new:
                    p = op @ (np.asarray(a.pos.tolist()) - com + target)
                    a.pos = gemmi.Position(*p)
                copy.add_residue(new)
            out_model.add_chain(copy)
    out.add_model(out_model)
    out.setup_entities()
    return out


def pseudo_twofold_frame(st: gemmi.Structure, chains: tuple[str, str]) -> tuple[gemmi.Structure, float]:
    """A homodimer turned into RELION's C2 frame: the 2-fold relating its two chains (from their
    common CA atoms, Kabsch) along z through the centre of mass at the origin. Returns the
    structure and the residual RMSD (Å) of the pseudo-symmetry."""
    out = st.clone()
    model = out[0]

    def cas(name: str) -> dict:
        return {(r.seqid.num, r.seqid.icode): np.asarray(r["CA"][0].pos.tolist())
                for ch in model if ch.name == name for r in ch if r.find_atom("CA", "*")}

    a, b = cas(chains[0]), cas(chains[1])
    keys = sorted(set(a) & set(b))
    if len(keys) < 10:
        raise CryorientError(f"chains {chains} share too few residues to define a pseudo-2-fold")
    pa, pb = np.array([a[k] for k in keys]), np.array([b[k] for k in keys])
    ca, cb = pa.mean(0), pb.mean(0)
    rot, _ = Rotation.align_vectors(pb - cb, pa - ca)  # Kabsch: pb ~ rot (pa - ca) + cb
    axis = rot.as_rotvec()
    to_z, _ = Rotation.align_vectors([[0.0, 0.0, 1.0]], [axis / np.linalg.norm(axis)])
    to_z = to_z.as_matrix()
    com = 0.5 * (ca + cb)
    for ch in model:
        for r in ch:
            for at in r:
                at.pos = gemmi.Position(*(to_z @ (np.asarray(at.pos.tolist()) - com)))
    rmsd = float(np.sqrt(((rot.apply(pa - ca) + cb - pb) ** 2).sum(1).mean()))
    return out, rmsd
