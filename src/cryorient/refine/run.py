"""The refinement's files and figures: what a user of RELION looks for after auto-refine.

``particles.star`` (angles, origins, ``rlnRandomSubset``, ``rlnMaxValueProbDistribution`` = the
per-particle confidence), ``half1.mrc`` / ``half2.mrc``, ``map.mrc`` (both halves, low-passed
at the FSC 0.143 resolution), ``fsc.csv``, ``rounds.csv`` and figures: the FSC, resolution and
pose change by round, the confidence histogram, central slices and projections of the map.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np

from .. import plots
from ..io import atomic_output, write_mrc
from ..particles import ParticleStack, write_particles
from ..rundir import write_json
from ..volumes import shell_frequencies
from .loop import RefineResult

CONFIDENCE_COLUMN = "rlnMaxValueProbDistribution"


def write_refinement(result: RefineResult, stack: ParticleStack, outdir: Path) -> dict:
    px, box = stack.pixel_size, stack.box
    out = stack.with_orientations(result.rotations, result.origins_angstrom)
    table = out.particles.copy()
    table[CONFIDENCE_COLUMN] = result.confidence.double().numpy()
    write_particles(replace(out, particles=table), outdir / "particles.star")
    write_mrc(outdir / "half1.mrc", result.half_maps[0], px)
    write_mrc(outdir / "half2.mrc", result.half_maps[1], px)
    write_mrc(outdir / "map.mrc", result.map, px)
    freqs = shell_frequencies(box, px)
    with atomic_output(outdir / "fsc.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["shell", "frequency_per_angstrom", "resolution_angstrom", "fsc_halves"])
        for k, f in enumerate(freqs):
            w.writerow([k, f"{f:.6f}", f"{1 / f:.3f}" if f > 0 else "inf", f"{result.fsc_halves[k]:.5f}"])
    rows = [asdict(r) for r in result.rounds]
    with atomic_output(outdir / "rounds.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    figs = outdir / "figures"
    res = result.resolution
    label = (f"{res.angstrom:.1f} Å @0.143" if result.reportable
             else "no signal beyond the start" if not result.signal
             else "poses chosen by noise" if not result.poses_agree else "not the reference's object")
    plots.curves([("half maps", freqs, result.fsc_halves), ("map vs reference", freqs, result.fsc_reference)],
                 figs / "fsc.png", "spatial frequency (1/Å)", "FSC",
                 title="Gold-standard FSC (independent half sets)", hlines=[(0.143, "0.143"), (0.5, "0.5")],
                 vlines=[(res.frequency, label), (1 / result.start_resolution, "start resolution")])
    rounds = np.array([r.round for r in result.rounds])
    aligned = np.array([r.resolution_angstrom for r in result.rounds])
    measured = np.array([r.fsc_resolution_angstrom for r in result.rounds])
    plots.curves([("aligned at", rounds, aligned), ("half maps (FSC 0.143)", rounds, measured)],
                 figs / "resolution_by_round.png", "round", "resolution (Å)", title="Resolution by round")
    changes = np.array([r.angular_change_deg for r in result.rounds])
    plots.curves([("median pose change", rounds, changes)], figs / "angular_change.png", "round",
                 "degrees", title="How much the poses moved in each round")
    conf = result.confidence.numpy()
    plots.histogram([("particles", conf)], figs / "confidence.png", f"confidence ({CONFIDENCE_COLUMN})",
                    title="Per-particle confidence", markers=[(float(np.median(conf)), "median")])
    vols = [("map", result.map)]
    plots.volume_slices(vols, figs / "central_slices.png", title="Central slices")
    plots.volume_slices(vols, figs / "projections.png", projections=True, title="Orthogonal projections")
    metrics = {
        "rounds": len(result.rounds),
        "resolution_angstrom": round(res.angstrom, 3) if result.reportable else None,
        "half_map_fsc_resolution_angstrom": round(res.angstrom, 3),
        "start_resolution_angstrom": result.start_resolution,
        "signal_beyond_start": result.signal,
        "fsc_vs_reference_at_start": round(result.reference_agreement, 3),
        "started_from_particles": result.independent_start,
        "matches_reference": result.matches_reference,
        "half_maps_poses_apart_deg": None if np.isnan(result.cross_half_deg) else round(result.cross_half_deg, 2),
        "half_maps_poses_far_share": None if np.isnan(result.cross_half_far_share)
        else round(result.cross_half_far_share, 3),
        "half_maps_poses_agree": result.poses_agree,
        "confidence_median": float(np.median(conf)),
        "warnings": result.warnings(),
        "per_round": rows,
    }
    write_json(outdir / "metrics.json", metrics)
    return metrics
