"""File I/O: MRC volumes and MRCS stacks (mrcfile), RELION STAR (starfile), npz side files,
checkpoints. Every writer goes through :func:`atomic_output`: data lands under a temporary
name and is renamed into place only when complete, so a failure never leaves a partial file.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from pathlib import Path

import mrcfile
import numpy as np
import pandas as pd
import starfile
import torch

from .errors import CryorientError, require_file

NPZ_FORMAT_VERSION = 1
CHECKPOINT_FORMAT = "cryorient-checkpoint-v1"


@contextlib.contextmanager
def atomic_output(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it to ``path`` on success."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- MRC ------------------------------------------------------------------------------------


def read_mrc(path: str | Path, what: str = "MRC file") -> tuple[np.ndarray, float]:
    """Read an MRC/MRCS file: the data array (``[z, y, x]`` or ``[n, y, x]``) and voxel size (Å)."""
    p = require_file(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with mrcfile.open(p, permissive=False, mode="r") as mrc:
                data = np.asarray(mrc.data, dtype=np.float32).copy()
                voxel = float(mrc.voxel_size.x)
    except Exception as exc:
        raise CryorientError(f"cannot read {what} {p.name}: {_first_line(exc)}") from None
    if data.ndim == 2:
        data = data[None]
    if not np.isfinite(data).all():
        raise CryorientError(f"{what} {p.name} contains NaN or infinite values")
    return data, voxel


def write_mrc(path: str | Path, data: np.ndarray | torch.Tensor, voxel_size: float) -> None:
    """Write a float32 volume ``[z, y, x]`` (or a stack ``[n, y, x]`` to a .mrcs) atomically."""
    arr = data.detach().cpu().numpy() if isinstance(data, torch.Tensor) else np.asarray(data)
    arr = np.ascontiguousarray(arr, dtype=np.float32)
    with atomic_output(path) as tmp:
        with mrcfile.new(tmp, overwrite=True) as mrc:
            mrc.set_data(arr)
            if Path(path).suffix == ".mrcs":
                mrc.set_image_stack()
            mrc.voxel_size = voxel_size


def open_mrc_stack(path: str | Path) -> tuple[np.ndarray, float]:
    """Memory-map an MRCS stack read-only: ``(n, D, D)`` array and pixel size (Å)."""
    p = require_file(path, "particle stack")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mrc = mrcfile.mmap(p, mode="r", permissive=False)
    except Exception as exc:
        raise CryorientError(f"cannot read particle stack {p.name}: {_first_line(exc)}") from None
    data = mrc.data
    if data is None:
        raise CryorientError(f"particle stack {p.name} holds no data")
    if data.ndim == 2:
        data = data[None]
    if data.ndim != 3 or data.shape[-1] != data.shape[-2]:
        raise CryorientError(f"particle stack {p.name} must hold square images, got {data.shape}")
    return data, float(mrc.voxel_size.x)


class StackWriter:
    """Stream images into an MRCS file batch by batch (bounded memory).

    Use as a context manager; the file appears under its final name only when all ``n``
    images were written and the context exits without error.
    """

    def __init__(self, path: str | Path, n: int, box: int, pixel_size: float):
        self.path = Path(path)
        self.n, self.box, self.pixel_size = n, box, pixel_size
        self._ctx = atomic_output(self.path)
        self.written = 0
        self._stats = [np.inf, -np.inf, 0.0, 0.0]  # min, max, sum, sum of squares

    def __enter__(self) -> StackWriter:
        self._tmp = self._ctx.__enter__()
        with mrcfile.new_mmap(self._tmp, shape=(self.n, self.box, self.box), mrc_mode=2,
                              overwrite=True) as mrc:
            mrc.set_image_stack()
            mrc.voxel_size = self.pixel_size
            self._offset = mrc.header.nbytes + mrc.extended_header.nbytes
        self._fh = open(self._tmp, "r+b")
        self._fh.seek(self._offset)
        return self

    def write(self, images: torch.Tensor | np.ndarray) -> None:
        t = torch.as_tensor(images).detach().to("cpu", torch.float32).contiguous()
        if t.shape[1:] != (self.box, self.box) or self.written + len(t) > self.n:
            raise ValueError(f"unexpected batch shape {tuple(t.shape)} at image {self.written}")
        t.numpy().tofile(self._fh)
        lo, hi = torch.aminmax(t)
        s = self._stats
        s[0] = min(s[0], float(lo))
        s[1] = max(s[1], float(hi))
        s[2] += float(t.sum())
        s[3] += float(t.square().sum())
        self.written += len(t)

    def __exit__(self, exc_type, exc, tb):
        self._fh.close()
        if exc_type is None:
            if self.written != self.n:
                exc = ValueError(f"wrote {self.written} of {self.n} images")
                self._ctx.__exit__(type(exc), exc, None)
                raise exc
            count = self.n * self.box * self.box
            mean = self._stats[2] / count
            rms = np.sqrt(max(self._stats[3] / count - mean**2, 0.0))
            with mrcfile.mmap(self._tmp, mode="r+") as mrc:
                mrc.header.dmin, mrc.header.dmax = self._stats[0], self._stats[1]
                mrc.header.dmean, mrc.header.rms = mean, rms
        return self._ctx.__exit__(exc_type, exc, tb)


# --- STAR -----------------------------------------------------------------------------------


def read_star(path: str | Path) -> dict[str, pd.DataFrame]:
    """Read a STAR file into a dict of its data blocks (name -> table)."""
    p = require_file(path, "STAR file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            blocks = starfile.read(p, always_dict=True)
    except Exception as exc:
        raise CryorientError(f"cannot read STAR file {p.name}: {_first_line(exc)}") from None
    tables = {k: v for k, v in blocks.items() if isinstance(v, pd.DataFrame)}
    if not tables:
        raise CryorientError(f"STAR file {p.name} has no data table (loop_)")
    return tables


def write_star(path: str | Path, blocks: dict[str, pd.DataFrame]) -> None:
    """Write data blocks to a STAR file atomically."""
    with atomic_output(path) as tmp:
        starfile.write(blocks, tmp, float_format="%.6f", overwrite=True)


# --- npz side files and checkpoints ---------------------------------------------------------


def save_npz(path: str | Path, **arrays) -> None:
    """Save named arrays with a format version (no pickle)."""
    data = {k: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v))
            for k, v in arrays.items()}
    data["format_version"] = np.array(NPZ_FORMAT_VERSION)
    with atomic_output(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, **data)


def load_npz(path: str | Path, required: tuple[str, ...] = ()) -> dict[str, np.ndarray]:
    """Load a cryorient npz side file, checking the format version and required arrays."""
    p = require_file(path, "npz file")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CryorientError(f"cannot read {p.name}: {_first_line(exc)}") from None
    if int(data.get("format_version", -1)) != NPZ_FORMAT_VERSION:
        raise CryorientError(f"{p.name} is not a cryorient npz file of format {NPZ_FORMAT_VERSION}")
    missing = [k for k in required if k not in data]
    if missing:
        raise CryorientError(f"{p.name} lacks array(s) {', '.join(missing)}")
    return data


def save_checkpoint(path: str | Path, payload: dict) -> None:
    """Save a checkpoint (tensors, numbers, strings only) loadable with ``weights_only=True``."""
    with atomic_output(path) as tmp:
        torch.save({"format": CHECKPOINT_FORMAT, **payload}, tmp)


def load_checkpoint(path: str | Path, kind: str | None = None) -> dict:
    """Load a cryorient checkpoint safely (``weights_only=True``); check its kind."""
    p = require_file(path, "checkpoint")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            payload = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CryorientError(
            f"cannot load checkpoint {p.name} (corrupt or not a cryorient checkpoint): "
            f"{_first_line(exc)[:120]}"
        ) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CryorientError(f"{p.name} is not a cryorient checkpoint")
    if kind is not None and payload.get("kind") != kind:
        raise CryorientError(f"{p.name} is a {payload.get('kind')!r} checkpoint, expected {kind!r}")
    return payload
