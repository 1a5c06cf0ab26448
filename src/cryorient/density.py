"""Density volumes: atoms -> electron-scattering density on a cubic grid (gemmi), or an MRC
map resampled to the requested box and pixel size. Either way the result is centred on its
centre of mass at index ``D // 2`` and band-limited at the stated resolution.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

import gemmi
import numpy as np
import torch

from .config import DensityConfig
from .errors import CryorientError, require_positive
from .fourier import lowpass_volume
from .io import read_mrc
from .structure import atom_positions, read_atoms, resolve_structure, structure_kind

log = logging.getLogger(__name__)

# Content must stay inside the sphere inscribed in the box (the Fourier projector wraps
# anything outside it); keep this margin in pixels free as well.
EDGE_MARGIN_PX = 2


def _smallest_box(radius_angstrom: float, pixel_size: float) -> int:
    need = 2 * (radius_angstrom / pixel_size + EDGE_MARGIN_PX)
    return int(2 * math.ceil(need / 2))


def _check_fits(radius_angstrom: float, opts: DensityConfig, what: str) -> None:
    limit = (opts.box / 2 - EDGE_MARGIN_PX) * opts.pixel_size
    if radius_angstrom > limit:
        raise CryorientError(
            f"{what} is too large for a {opts.box}-px box at {opts.pixel_size} Å/px (radius "
            f"{radius_angstrom:.1f} Å > {limit:.1f} Å); use --box-size "
            f"{_smallest_box(radius_angstrom, opts.pixel_size)} or a larger pixel size"
        )


def atoms_to_volume(st: gemmi.Structure, opts: DensityConfig, name: str = "structure"
                    ) -> torch.Tensor:
    """Electron-scattering density of a cleaned structure, ``(D, D, D)`` float32 ``[z, y, x]``.

    gemmi's ``DensityCalculatorE`` (Peng's electron scattering factors, the atoms' B-factors)
    puts the density on the grid, centred on the centre of mass; it is then low-passed so
    that nothing above ``1 / resolution`` remains.
    """
    st = st.clone()
    model = st[0]
    com = model.calculate_center_of_mass()
    pos = atom_positions(st)
    radius = float(np.linalg.norm(pos - np.asarray(com.tolist()), axis=1).max())
    _check_fits(radius, opts, name)
    box, px = opts.box, opts.pixel_size
    c = (box // 2) * px
    model.transform_pos_and_adp(gemmi.Transform(gemmi.Mat33(), gemmi.Vec3(c - com.x, c - com.y,
                                                                          c - com.z)))
    length = box * px
    calc = gemmi.DensityCalculatorE()
    calc.d_min = 2 * px
    calc.grid.set_unit_cell(gemmi.UnitCell(length, length, length, 90, 90, 90))
    calc.grid.spacegroup = gemmi.SpaceGroup("P 1")
    calc.grid.set_size(box, box, box)
    calc.add_model_density_to_grid(model)
    calc.grid.symmetrize_sum()
    arr = np.array(calc.grid, copy=True)  # [x, y, z]
    vol = torch.from_numpy(np.ascontiguousarray(arr.transpose(2, 1, 0))).float()
    return lowpass_volume(vol, px / opts.resolved_resolution())


def map_to_volume(data: np.ndarray, voxel_size: float, opts: DensityConfig, name: str = "map"
                  ) -> torch.Tensor:
    """Resample an MRC map ``[z, y, x]`` to the requested box and pixel size.

    The map is low-passed to the target resolution (and the target Nyquist) on its own grid,
    then interpolated with cubic splines so that its centre of mass (of the density above 2%
    of the maximum) lands on ``D // 2``; the size check uses the radius holding 99% of it.
    Negative values are kept; empty space outside the input is zero.
    """
    from scipy import ndimage

    require_positive(voxel_size, f"voxel size of {name}")
    vol = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
    res = max(opts.resolved_resolution(), 2 * voxel_size)
    padded = lowpass_volume(vol, voxel_size / res).numpy()
    # Mass: density above 2% of the maximum (ignores ripples and weak noise far out).
    mass = np.where(padded > 0.02 * padded.max(), padded, 0.0)
    if padded.max() <= 0:
        raise CryorientError(f"{name} has no positive density")
    idx = np.indices(mass.shape).reshape(3, -1)
    w = mass.reshape(-1) / mass.sum()
    com = idx @ w  # (z, y, x) in input voxels
    dist = np.linalg.norm((idx - com[:, None]).T, axis=1) * voxel_size
    order = np.argsort(dist)
    radius = float(dist[order][np.searchsorted(np.cumsum(w[order]), 0.99)])
    _check_fits(radius, opts, name)
    box, px = opts.box, opts.pixel_size
    g = (np.arange(box) - box // 2) * (px / voxel_size)
    zz, yy, xx = np.meshgrid(g + com[0], g + com[1], g + com[2], indexing="ij")
    out = ndimage.map_coordinates(padded, [zz, yy, xx], order=3, mode="constant", cval=0.0)
    # keep the density in "per voxel" units so that projections sum the same mass
    out *= (px / voxel_size) ** 3
    return torch.from_numpy(out.astype(np.float32))


def load_volume(structure: str | Path, opts: DensityConfig) -> torch.Tensor:
    """A named bundled structure, a PDB/mmCIF file or an MRC map -> density volume."""
    path = resolve_structure(structure)
    if structure_kind(path) == "atoms":
        st = read_atoms(path, keep_ligands=opts.keep_ligands, chains=opts.chains)
        return atoms_to_volume(st, opts, path.name)
    if opts.chains:
        raise CryorientError(f"--chains applies to atomic models, not to the map {path.name}")
    data, voxel = read_mrc(path, "map")
    if data.ndim != 3 or min(data.shape) < 2:
        raise CryorientError(f"map {path.name} must be a 3D volume, got shape {data.shape}")
    return map_to_volume(data, voxel, opts, path.name)


def match_grid(data: np.ndarray, voxel_size: float, box: int, pixel_size: float) -> torch.Tensor:
    """Put a map on another grid *in the same frame* (no re-centring): resample about the
    centre ``n // 2`` when the voxel size differs, then pad or crop centrally to ``box``.

    Used for reference maps, whose frame must be preserved for FSC comparisons.
    """
    from scipy import ndimage

    vol = np.asarray(data, dtype=np.float64)
    if abs(voxel_size - pixel_size) > 1e-4 * pixel_size:
        shape_out = [max(2, round(n * voxel_size / pixel_size)) for n in vol.shape]
        coords = [(np.arange(m) - m // 2) * (pixel_size / voxel_size) + n // 2
                  for m, n in zip(shape_out, vol.shape)]
        if pixel_size > voxel_size:  # downsampling: remove what the new grid cannot hold
            vol = lowpass_volume(torch.from_numpy(vol), voxel_size / (2 * pixel_size)).numpy()
        grid = np.meshgrid(*coords, indexing="ij")
        vol = ndimage.map_coordinates(vol, grid, order=3, mode="constant", cval=0.0)
        vol *= (pixel_size / voxel_size) ** 3
    out = np.zeros((box, box, box))
    src, dst = [], []
    for n in vol.shape:
        lo_in, lo_out = n // 2 - box // 2, 0
        if lo_in < 0:
            lo_out, lo_in = -lo_in, 0
        length = min(n - lo_in, box - lo_out)
        src.append(slice(lo_in, lo_in + length))
        dst.append(slice(lo_out, lo_out + length))
    out[tuple(dst)] = vol[tuple(src)]
    return torch.from_numpy(out.astype(np.float32))


def load_reference(path: str | Path, box: int, pixel_size: float, chains: tuple[str, ...] | None = None
                   ) -> torch.Tensor:
    """A reference on a stack's grid. A map keeps its own frame (resampled about its centre
    and padded or cropped: the result overlays the input map); an atomic model becomes its
    density centred on its centre of mass (the model's frame, translated)."""
    resolved = resolve_structure(path)
    if structure_kind(resolved) == "atoms":
        return load_volume(resolved, DensityConfig(box=box, pixel_size=pixel_size, chains=chains))
    if chains:
        raise CryorientError(f"chains apply to atomic models, not to the map {resolved.name}")
    data, voxel = read_mrc(resolved, "reference map")
    if data.ndim != 3 or data.shape[0] < 2:
        raise CryorientError(f"reference map {resolved.name} must be a 3D volume, got {data.shape}")
    if data.shape != (box, box, box) or abs(voxel - pixel_size) > 1e-3 * pixel_size:
        log.warning("reference %s (%s at %.4g Å) resampled to box %d at %.4g Å in its own frame",
                    resolved.name, "x".join(map(str, data.shape[::-1])), voxel, box, pixel_size)
    return match_grid(data, voxel, box, pixel_size)
