"""Figures (matplotlib PNG) for every stage. Uses the object-oriented API (no pyplot, no
global backend switch); each function writes one file and returns its path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from .so3 import viewing_direction

DPI = 110


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    fig.savefig(path, dpi=DPI, bbox_inches="tight")
    return path


def _np(x) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def montage(rows: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "") -> Path:
    """Rows of images ``(n, D, D)`` with a label each (e.g. clean vs corrupted)."""
    n = min(len(imgs) for _, imgs in rows)
    fig = Figure(figsize=(1.6 * n, 1.7 * len(rows) + 0.3))
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, imgs) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(_np(imgs[c]), cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def _direction_angles(rotmats: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    v = _np(viewing_direction(rotmats.double()))
    lon = np.arctan2(v[:, 1], v[:, 0])
    lat = np.arcsin(np.clip(v[:, 2], -1, 1))
    return lon, lat


def viewing_directions(sets: list[tuple[str, torch.Tensor]], path: str | Path,
                       title: str = "Viewing directions") -> Path:
    """Viewing directions (``R e_z``) of one or more orientation sets, Mollweide projection."""
    fig = Figure(figsize=(7.5, 4.2))
    ax = fig.add_subplot(projection="mollweide")
    markers = ["o", "x", "+", "^"]
    for k, (label, rot) in enumerate(sets):
        lon, lat = _direction_angles(rot)
        size = 4 if len(lon) > 2000 else 8
        ax.scatter(lon, lat, s=size, marker=markers[k % 4], alpha=0.6, label=f"{label} (n={len(lon)})")
    ax.grid(True, alpha=0.3)
    ax.set_title(title)
    ax.legend(loc="lower right", fontsize=8, markerscale=2)
    return _save(fig, path)


def curves(series: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, xlabel: str,
           ylabel: str, title: str = "", logy: bool = False,
           hlines: list[tuple[float, str]] = (), vlines: list[tuple[float, str]] = ()) -> Path:
    """Line plots ``(label, x, y)`` with optional horizontal/vertical reference lines."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for label, x, y in series:
        ax.plot(_np(x), _np(y), label=label)
    for y, label in hlines:
        ax.axhline(y, color="gray", linestyle="--", linewidth=0.8)
        ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right", va="bottom",
                    fontsize=8, color="gray")
    for k, (x, label) in enumerate(vlines):
        ax.axvline(x, color=f"C{k}", linestyle=":", linewidth=1.0, label=label)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    if len(series) > 1 or vlines:
        ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    return _save(fig, path)


def histogram(values: list[tuple[str, np.ndarray]], path: str | Path, xlabel: str, title: str = "",
              bins: int | np.ndarray = 60, markers: list[tuple[float, str]] = (), medians: str | None = None) -> Path:
    """Overlaid histograms (``bins``: a count, or shared edges) with optional vertical markers;
    with ``medians`` (the values' unit) each series' median as a dashed line of its colour, its
    value in the legend."""
    fig = Figure(figsize=(6.4, 4.0))
    ax = fig.add_subplot()
    for label, v in values:
        v = _np(v)
        med = float(np.median(v))
        if medians is not None:
            label = f"{label}: median {med:.1f}{medians}"
        _, _, patches = ax.hist(v, bins=bins, alpha=0.6, label=label)
        if medians is not None:
            ax.axvline(med, color=patches[0].get_facecolor(), alpha=1.0, linestyle="--", linewidth=1.2)
    for x, label in markers:
        ax.axvline(x, color="k", linestyle="--", linewidth=0.8)
        ax.annotate(label, (x, 1.0), xycoords=("data", "axes fraction"), ha="left", va="top", fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("count")
    if title:
        ax.set_title(title)
    if len(values) > 1:
        ax.legend(fontsize=8, loc="upper right" if medians is not None else "best")
    return _save(fig, path)


def hist2d(x: np.ndarray, y: np.ndarray, path: str | Path, xlabel: str, ylabel: str,
           title: str = "", bins: int = 60, diagonal: bool = True) -> Path:
    """2D histogram (e.g. predicted vs true distance) with the identity line."""
    fig = Figure(figsize=(5.2, 4.6))
    ax = fig.add_subplot()
    x, y = _np(x), _np(y)
    _, _, _, im = ax.hist2d(x, y, bins=bins, cmin=1, cmap="viridis")
    fig.colorbar(im, ax=ax, label="pairs")
    if diagonal:
        lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
        ax.plot([lo, hi], [lo, hi], "r--", linewidth=0.8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    return _save(fig, path)


def volume_slices(volumes: list[tuple[str, torch.Tensor]], path: str | Path, title: str = "",
                  projections: bool = False) -> Path:
    """Central slices (or, with ``projections``, sums) along z, y, x of each volume (rows)."""
    fig = Figure(figsize=(7.2, 2.4 * len(volumes) + 0.3))
    axes = fig.subplots(len(volumes), 3, squeeze=False)
    for r, (label, vol) in enumerate(volumes):
        v = _np(vol)
        c = v.shape[0] // 2
        views = ([v.sum(0), v.sum(1), v.sum(2)] if projections
                 else [v[c], v[:, c], v[:, :, c]])
        for k, (img, axis) in enumerate(zip(views, ("z", "y", "x"))):
            ax = axes[r, k]
            ax.imshow(img, cmap="gray", origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(("projection along " if projections else "central slice normal to ") + axis,
                             fontsize=9)
            if k == 0:
                ax.set_ylabel(label)
    if title:
        fig.suptitle(title)
    return _save(fig, path)
