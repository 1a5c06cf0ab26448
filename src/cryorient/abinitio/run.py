"""The initial map's files and figures: ``initial_map.mrc`` (the chosen seed's map on the
particles' grid), ``seeds.csv`` (each seed's score and their pairwise agreement) and figures:
the mean best correlation by iteration for every seed, and central slices and projections of
every seed's map (a user sees at a glance whether the random starts found the same object)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .. import plots
from ..io import atomic_output, write_mrc
from ..rundir import write_json
from .em import AGREEMENT_RESOLUTION, AbInitioResult


def write_initial_map(result: AbInitioResult, outdir: Path) -> dict:
    write_mrc(outdir / "initial_map.mrc", result.map, result.pixel_size)
    with atomic_output(outdir / "seeds.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["seed", "mean_best_correlation", "chosen"])
        for k, s in enumerate(result.seeds):
            w.writerow([s.seed, f"{s.mean_score:.5f}", k == result.chosen])
    figs = outdir / "figures"
    series = []
    for k, s in enumerate(result.seeds):
        it = np.array([h[0] for h in s.per_iteration]) + 1
        series.append((f"seed {k}" + (" (kept)" if k == result.chosen else ""), it,
                       np.array([h[2] for h in s.per_iteration])))
    plots.curves(series, figs / "correlation_by_iteration.png", "iteration", "mean best correlation",
                 title="Ab initio: how well each map explains its batch (the resolution rises over 70% of the run)")
    vols = [(f"seed {k}", s.map) for k, s in enumerate(result.seeds)]
    plots.volume_slices(vols, figs / "seed_projections.png", projections=True,
                        title="Each random start's map (own frame and hand: they may differ by a rotation)")
    plots.volume_slices([("initial map", result.map)], figs / "central_slices.png", title="Initial map")
    metrics = {
        "seeds": len(result.seeds),
        "chosen": result.chosen,
        "working_size_px": result.working_size,
        "final_resolution_angstrom": result.final_resolution,
        "agreement_angstrom": [list(a) for a in result.agreement_angstrom],
        "agreement_needed_angstrom": AGREEMENT_RESOLUTION,
        "seeds_agree": result.agree,
        "seconds": round(result.seconds, 1),
        "warnings": result.warnings(),
    }
    write_json(outdir / "metrics.json", metrics)
    return metrics
