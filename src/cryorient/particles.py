"""The particle stack: images plus RELION metadata, read from and written to STAR files.

A :class:`ParticleStack` holds the images lazily (memory-mapped MRCS files, read in
batches) and the RELION tables, so that any RELION 3.0 or 3.1 particle STAR can be loaded
and written back with only the columns cryorient changes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import so3
from .ctf import CTFParams
from .errors import CryorientError, require_columns
from .io import open_mrc_stack, read_star, write_star

ANGLE_COLUMNS = ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi")
ORIGIN_COLUMNS = ("rlnOriginXAngst", "rlnOriginYAngst")
DEFOCUS_COLUMNS = ("rlnDefocusU", "rlnDefocusV", "rlnDefocusAngle")
OPTICS_CTF_COLUMNS = ("rlnVoltage", "rlnSphericalAberration", "rlnAmplitudeContrast")
POSE_COLUMNS = (*ANGLE_COLUMNS, *ORIGIN_COLUMNS, "rlnAngleRotPrior", "rlnAngleTiltPrior",
                "rlnAnglePsiPrior", "rlnOriginXPriorAngst", "rlnOriginYPriorAngst")
HALF_SET_COLUMN = "rlnRandomSubset"  # 1 or 2, as RELION's --split_random_halves writes it


@dataclass(frozen=True)
class ImageStack:
    """N square images read lazily from one or more ``(n, D, D)`` arrays (memmaps or not)."""

    arrays: tuple[np.ndarray, ...]
    paths: tuple[Path | None, ...]  # absolute path of each array's file (None: in memory)
    file_index: np.ndarray  # (N,) which array
    local_index: np.ndarray  # (N,) 0-based slice within it

    @classmethod
    def from_array(cls, images: np.ndarray | torch.Tensor, path: Path | None = None) -> ImageStack:
        arr = images.detach().cpu().numpy() if isinstance(images, torch.Tensor) else images
        n = arr.shape[0]
        return cls((arr,), (path,), np.zeros(n, dtype=np.int64), np.arange(n, dtype=np.int64))

    def __len__(self) -> int:
        return int(self.file_index.shape[0])

    @property
    def box(self) -> int:
        return int(self.arrays[0].shape[-1])

    def read(self, indices: np.ndarray | slice | None = None) -> torch.Tensor:
        """Images at ``indices`` as a float32 tensor ``(n, D, D)``; errors on NaN/inf."""
        if indices is None:
            idx = np.arange(len(self))
        elif isinstance(indices, slice):
            idx = np.arange(len(self))[indices]
        else:
            idx = np.asarray(indices, dtype=np.int64)
        out = np.empty((len(idx), self.box, self.box), dtype=np.float32)
        files = self.file_index[idx]
        for k in np.unique(files):
            sel = np.nonzero(files == k)[0]
            local = self.local_index[idx[sel]]
            order = np.argsort(local)
            out[sel[order]] = self.arrays[k][local[order]]
        bad = ~np.isfinite(out).reshape(len(idx), -1).all(axis=1)
        if bad.any():
            raise CryorientError(
                f"particle image {int(idx[np.argmax(bad)]) + 1} contains NaN or infinite values; "
                "remove it from the STAR file"
            )
        return torch.from_numpy(out)

    def batches(self, batch_size: int, indices: np.ndarray | None = None
                ) -> Iterator[tuple[np.ndarray, torch.Tensor]]:
        """Yield ``(indices, images)`` in batches of at most ``batch_size``."""
        idx = np.arange(len(self)) if indices is None else np.asarray(indices)
        for start in range(0, len(idx), batch_size):
            chunk = idx[start:start + batch_size]
            yield chunk, self.read(chunk)

    def subset(self, indices: np.ndarray) -> ImageStack:
        return replace(self, file_index=self.file_index[indices], local_index=self.local_index[indices])

    def image_names(self, relative_to: Path) -> list[str]:
        """RELION ``rlnImageName`` values (``k@path``, 1-based) with paths relative to a dir."""
        rel = []
        for p in self.paths:
            if p is None:
                raise ValueError("in-memory images have no file name")
            rel.append(os.path.relpath(p, relative_to))
        return [f"{loc + 1:06d}@{rel[f]}" for f, loc in zip(self.file_index, self.local_index)]


@dataclass(frozen=True)
class ParticleStack:
    """Images, pixel size and the RELION particle/optics tables (3.1 layout)."""

    images: ImageStack
    pixel_size: float
    particles: pd.DataFrame
    optics: pd.DataFrame
    source: Path | None = field(default=None)

    @property
    def n(self) -> int:
        return len(self.images)

    @property
    def box(self) -> int:
        return self.images.box

    def has_orientations(self) -> bool:
        return all(c in self.particles.columns for c in ANGLE_COLUMNS)

    def rotations(self) -> torch.Tensor:
        """Rotation matrices ``(N, 3, 3)`` from the STAR angles (our convention)."""
        require_columns(self.particles.columns, ANGLE_COLUMNS, self._where(),
                        "it carries no orientations to evaluate against")
        ang = torch.from_numpy(self.particles[list(ANGLE_COLUMNS)].to_numpy(np.float64, copy=True))
        return so3.euler_to_rotmat(ang[:, 0], ang[:, 1], ang[:, 2]).float()

    def shifts_angstrom(self) -> torch.Tensor:
        """``(N, 2)`` rlnOriginXAngst/YAngst (zeros where the STAR has no origins)."""
        if all(c in self.particles.columns for c in ORIGIN_COLUMNS):
            return torch.from_numpy(self.particles[list(ORIGIN_COLUMNS)].to_numpy(np.float32, copy=True))
        return torch.zeros(self.n, 2)

    def ctf(self) -> CTFParams | None:
        """Per-particle CTF parameters, or None if the STAR has no defocus columns."""
        if not all(c in self.particles.columns for c in DEFOCUS_COLUMNS):
            return None
        optics = self.optics.set_index("rlnOpticsGroup")
        group = self.particles["rlnOpticsGroup"].to_numpy()

        def col(name: str, table=self.particles) -> torch.Tensor:
            return torch.from_numpy(np.asarray(table[name], dtype=np.float32).copy())

        def per_group(name: str) -> torch.Tensor:
            return torch.from_numpy(optics.loc[group, name].to_numpy(np.float32).copy())

        return CTFParams(col("rlnDefocusU"), col("rlnDefocusV"), col("rlnDefocusAngle"),
                         per_group("rlnVoltage"), per_group("rlnSphericalAberration"),
                         per_group("rlnAmplitudeContrast"))

    def with_orientations(self, rotmats: torch.Tensor, shifts_angstrom: torch.Tensor | None = None
                          ) -> ParticleStack:
        """A copy whose angle (and optionally origin) columns hold the given values."""
        table = self.particles.copy()
        ang = so3.rotmat_to_euler(rotmats.double()).numpy()
        for k, c in enumerate(ANGLE_COLUMNS):
            table[c] = ang[:, k]
        if shifts_angstrom is not None:
            for k, c in enumerate(ORIGIN_COLUMNS):
                table[c] = shifts_angstrom[:, k].double().numpy()
        return replace(self, particles=table)

    def without_columns(self, columns) -> ParticleStack:
        """A copy whose particle table lacks ``columns`` (those present)."""
        return replace(self, particles=self.particles.drop(
            columns=[c for c in columns if c in self.particles.columns]))

    def blind(self) -> ParticleStack:
        """A copy without pose columns (angles, origins and their priors): what every estimation
        step sees, so that the truth can shape nothing but the evaluation."""
        return self.without_columns(POSE_COLUMNS)

    def with_half_sets(self, generator: torch.Generator) -> ParticleStack:
        """A copy with ``rlnRandomSubset`` (1/2): kept when the STAR has it, else drawn once at
        random (half of the particles, rounded down, in subset 1)."""
        if HALF_SET_COLUMN in self.particles.columns:
            values = set(np.unique(self.particles[HALF_SET_COLUMN].to_numpy()))
            if not values <= {1, 2} or (len(values) < 2 and self.n > 1):
                raise CryorientError(f"{self._where()}: {HALF_SET_COLUMN} must be 1 or 2 with both present, "
                                     f"got {sorted(values)}")
            return self
        perm = torch.randperm(self.n, generator=generator).numpy()
        subset = np.full(self.n, 2, dtype=np.int64)
        subset[perm[: self.n // 2]] = 1
        table = self.particles.copy()
        table[HALF_SET_COLUMN] = subset
        return replace(self, particles=table)

    def half_sets(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted particle indices of half sets 1 and 2 (see :meth:`with_half_sets`)."""
        require_columns(self.particles.columns, [HALF_SET_COLUMN], self._where(),
                        "draw the half sets first")
        subset = self.particles[HALF_SET_COLUMN].to_numpy()
        return np.nonzero(subset == 1)[0], np.nonzero(subset == 2)[0]

    def without_ctf(self) -> ParticleStack:
        """A copy without defocus columns (its images are then treated as CTF-free)."""
        return self.without_columns(DEFOCUS_COLUMNS)

    def subset(self, indices: np.ndarray) -> ParticleStack:
        idx = np.asarray(indices)
        return replace(self, images=self.images.subset(idx),
                       particles=self.particles.iloc[idx].reset_index(drop=True))

    def _where(self) -> str:
        return f"STAR file {self.source.name}" if self.source else "particle table"


def write_particles(stack: ParticleStack, star_path: str | Path) -> None:
    """Write the stack's tables as a RELION 3.1 particle STAR (image paths made relative)."""
    star_path = Path(star_path)
    table = stack.particles.copy()
    table["rlnImageName"] = stack.images.image_names(star_path.parent.resolve())
    first = ["rlnImageName", *ANGLE_COLUMNS, *ORIGIN_COLUMNS, *DEFOCUS_COLUMNS, "rlnOpticsGroup"]
    ordered = [c for c in first if c in table.columns] + [c for c in table.columns if c not in first]
    write_star(star_path, {"optics": stack.optics, "particles": table[ordered]})


def make_optics(pixel_size: float, box: int, voltage_kv: float = 300.0, cs_mm: float = 2.7,
                amplitude_contrast: float = 0.1) -> pd.DataFrame:
    """A one-group RELION 3.1 ``data_optics`` table."""
    return pd.DataFrame({
        "rlnOpticsGroupName": ["opticsGroup1"],
        "rlnOpticsGroup": [1],
        "rlnMicrographOriginalPixelSize": [pixel_size],
        "rlnVoltage": [voltage_kv],
        "rlnSphericalAberration": [cs_mm],
        "rlnAmplitudeContrast": [amplitude_contrast],
        "rlnImagePixelSize": [pixel_size],
        "rlnImageSize": [box],
        "rlnImageDimensionality": [2],
    })


def load_poses(path: str | Path, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation matrices ``(n, 3, 3)`` and origins ``(n, 2)`` (Å) from a STAR file's angles and
    origins (zeros without origin columns) or from a recovery's npz (quaternions, origins)."""
    from .io import load_npz

    p = Path(path)
    if p.suffix == ".npz":
        data = load_npz(p, required=("quaternions",))
        q = torch.from_numpy(data["quaternions"]).float()
        if q.ndim != 2 or q.shape[1] != 4:
            raise CryorientError(f"{p.name}: quaternions must be (N, 4), got {tuple(q.shape)}")
        if not torch.isfinite(q).all():
            raise CryorientError(f"{p.name}: quaternions contain NaN or infinite values")
        rot = so3.quat_to_rotmat(q)
        origins = (torch.from_numpy(data["origins_angstrom"]).float() if "origins_angstrom" in data
                   else torch.zeros(q.shape[0], 2))
    else:
        table, _ = _split_blocks(read_star(p), p.name)
        require_columns(table.columns, ANGLE_COLUMNS, f"STAR file {p.name}", "it gives no orientations")
        ang = torch.from_numpy(table[list(ANGLE_COLUMNS)].to_numpy(np.float64, copy=True))
        rot = so3.euler_to_rotmat(ang[:, 0], ang[:, 1], ang[:, 2]).float()
        origins = (torch.from_numpy(table[list(ORIGIN_COLUMNS)].to_numpy(np.float32, copy=True))
                   if all(c in table.columns for c in ORIGIN_COLUMNS) else torch.zeros(len(table), 2))
    if rot.shape[0] != n:
        raise CryorientError(f"{p.name} gives {rot.shape[0]} orientations for {n} images; they must match")
    if not torch.isfinite(origins).all():
        raise CryorientError(f"{p.name}: origins contain NaN or infinite values")
    return rot, origins


# --- reading --------------------------------------------------------------------------------


def _split_blocks(blocks: dict[str, pd.DataFrame], name: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    if "particles" in blocks:
        return blocks["particles"].copy(), (blocks["optics"].copy() if "optics" in blocks else None)
    for _key, table in blocks.items():
        if "rlnImageName" in table.columns:
            return table.copy(), None
    raise CryorientError(
        f"STAR file {name} has no particle table (data_particles with rlnImageName); "
        "give a RELION particle STAR"
    )


def _optics_from_30(table: pd.DataFrame, name: str, pixel_size: float | None) -> pd.DataFrame:
    """Build a 3.1 optics table from a RELION 3.0 particle table (per-particle optics)."""
    if pixel_size is None:
        if "rlnImagePixelSize" in table.columns:
            pixel_size = float(table["rlnImagePixelSize"].iloc[0])
        elif {"rlnDetectorPixelSize", "rlnMagnification"} <= set(table.columns):
            pixel_size = float(table["rlnDetectorPixelSize"].iloc[0] * 1e4
                               / table["rlnMagnification"].iloc[0])
        else:
            raise CryorientError(
                f"STAR file {name} (RELION 3.0 style) gives no pixel size (rlnImagePixelSize or "
                "rlnDetectorPixelSize + rlnMagnification); pass --pixel-size"
            )
    defaults = {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7, "rlnAmplitudeContrast": 0.1}
    keys = {c: (table[c] if c in table.columns else pd.Series(v, index=table.index))
            for c, v in defaults.items()}
    combos = pd.DataFrame(keys).astype(float)
    uniq = combos.drop_duplicates().reset_index(drop=True)
    optics = uniq.copy()
    optics.insert(0, "rlnOpticsGroup", np.arange(1, len(uniq) + 1))
    optics.insert(0, "rlnOpticsGroupName", [f"opticsGroup{i}" for i in range(1, len(uniq) + 1)])
    optics["rlnImagePixelSize"] = pixel_size
    optics["rlnImageDimensionality"] = 2
    merged = combos.merge(optics[["rlnOpticsGroup", *defaults]], on=list(defaults), how="left")
    table["rlnOpticsGroup"] = merged["rlnOpticsGroup"].to_numpy()
    return optics


def read_particles(star_path: str | Path, pixel_size: float | None = None) -> ParticleStack:
    """Load a RELION 3.0 or 3.1 particle STAR file and memory-map its image stacks.

    Image paths in ``rlnImageName`` are resolved relative to the STAR file's directory,
    then to the current directory (RELION's project directory).
    """
    star_path = Path(star_path)
    blocks = read_star(star_path)
    name = star_path.name
    table, optics = _split_blocks(blocks, name)
    require_columns(table.columns, ["rlnImageName"], f"STAR file {name}",
                    "each particle needs rlnImageName (index@stack.mrcs)")
    if len(table) == 0:
        raise CryorientError(f"STAR file {name} lists no particles")
    optics_given = optics is not None
    if optics is None:
        optics = _optics_from_30(table, name, pixel_size)
        if all(c in table.columns for c in ("rlnOriginX", "rlnOriginY")):
            px = float(optics["rlnImagePixelSize"].iloc[0])
            table["rlnOriginXAngst"] = table["rlnOriginX"].astype(float) * px
            table["rlnOriginYAngst"] = table["rlnOriginY"].astype(float) * px
            table = table.drop(columns=["rlnOriginX", "rlnOriginY"])
    else:
        require_columns(optics.columns, ["rlnOpticsGroup", "rlnImagePixelSize"],
                        f"data_optics of {name}", "it must give each optics group's pixel size")
        if "rlnOpticsGroup" not in table.columns:
            if len(optics) != 1:
                raise CryorientError(f"STAR file {name}: particles lack rlnOpticsGroup but there "
                                     "are several optics groups")
            table["rlnOpticsGroup"] = int(optics["rlnOpticsGroup"].iloc[0])
        for c, v in {"rlnVoltage": 300.0, "rlnSphericalAberration": 2.7,
                     "rlnAmplitudeContrast": 0.1}.items():
            if c not in optics.columns:
                optics[c] = v
        unknown = set(table["rlnOpticsGroup"]) - set(optics["rlnOpticsGroup"])
        if unknown:
            raise CryorientError(f"STAR file {name}: particles refer to optics group(s) "
                                 f"{sorted(unknown)} missing from data_optics")
    used = optics[optics["rlnOpticsGroup"].isin(set(table["rlnOpticsGroup"]))]
    sizes = {round(float(v), 4) for v in used["rlnImagePixelSize"]}
    if pixel_size is None and len(sizes) > 1:
        raise CryorientError(
            f"STAR file {name} mixes optics groups with pixel sizes {sorted(sizes)} Å; "
            "split it by optics group (e.g. relion_star_handler --split_by_optics) and run each"
        )
    if pixel_size is not None and optics_given and any(abs(v - pixel_size) > 1e-3 * v for v in sizes):
        raise CryorientError(f"STAR file {name} gives the pixel size ({sorted(sizes)[0]} Å) in its optics "
                             f"table; the pixel size {pixel_size} Å given besides it is only for RELION 3.0 "
                             "files that lack one")
    px = float(pixel_size) if pixel_size is not None else sizes.pop()
    if "rlnImageSize" in used.columns and len(set(used["rlnImageSize"])) > 1:
        raise CryorientError(
            f"STAR file {name} mixes optics groups with image sizes "
            f"{sorted(set(int(s) for s in used['rlnImageSize']))}; split it by optics group first"
        )
    images = _open_images(table["rlnImageName"], star_path)
    return ParticleStack(images=images, pixel_size=px, particles=table.reset_index(drop=True),
                         optics=optics.reset_index(drop=True), source=star_path)


def _open_images(names: pd.Series, star_path: Path) -> ImageStack:
    parsed = names.astype(str).str.split("@", n=1, expand=True)
    if parsed.shape[1] != 2 or parsed[1].isna().any():
        raise CryorientError(f"rlnImageName in {star_path.name} must look like 000001@stack.mrcs")
    try:
        local = parsed[0].astype(np.int64).to_numpy() - 1
    except ValueError:
        raise CryorientError(f"rlnImageName in {star_path.name} has a non-numeric image index") from None
    files = parsed[1].to_numpy()
    uniq, file_index = np.unique(files, return_inverse=True)
    arrays, paths, box = [], [], None
    for k, rel in enumerate(uniq):
        # next to the STAR file, in the RELION project directory (a job's STAR sits two levels
        # below it: Refine3D/job012/run_data.star), in the current directory
        parents = [star_path.parent, *list(star_path.resolve().parents)[1:3]]
        candidates = [*(d / rel for d in parents), Path(rel)]
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            raise CryorientError(
                f"image stack {rel} named in {star_path.name} was not found (looked next to the STAR "
                "file, up to two directories above it (a RELION project) and in the current directory)"
            )
        data, _ = open_mrc_stack(path)
        n_in = np.bincount(file_index, minlength=len(uniq))[k]
        hi = local[file_index == k].max() if n_in else -1
        if local[file_index == k].min() < 0 or hi >= data.shape[0]:
            raise CryorientError(f"{star_path.name} refers to image {hi + 1} of {rel}, which holds "
                                 f"only {data.shape[0]} images")
        if box is not None and data.shape[-1] != box:
            raise CryorientError(f"image stacks in {star_path.name} have different box sizes "
                                 f"({box} and {data.shape[-1]} px); they must all be the same")
        box = data.shape[-1]
        arrays.append(data)
        paths.append(path.resolve())
    return ImageStack(tuple(arrays), tuple(paths), file_index.astype(np.int64), local)
