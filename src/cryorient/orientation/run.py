"""``cryorient recover`` as library functions: distances -> orientations -> ambiguity ->
shifts, then files, figures and (when the STAR carries true angles) the evaluation."""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..config import RecoverConfig
from ..ctf import subset as ctf_subset
from ..evaluation import Truth, evaluate, evaluate_poses, write_evaluation_figures
from ..imaging.align import local_refine
from ..imaging.translation import estimate_shifts
from ..io import atomic_output, save_npz
from ..particles import ParticleStack, write_particles
from ..rundir import write_json
from ..so3 import quat_to_rotmat, rotmat_angle, rotmat_to_quat
from ..symmetry import point_group
from .ambiguity import AmbiguityResult, apply, refine_right_factor, resolve
from .pairs import PairSet, check_distances, choose_pairs
from .recover import RecoveryResult, recover
from .sources import DistanceSource, TrueDistances

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RecoverOutcome:
    """What recovery made of a (blind) stack: final poses, and what led to them."""

    rotations: torch.Tensor  # (N, 3, 3) final (ambiguity resolved), in the recovery's frame
    origins_angstrom: torch.Tensor  # (N, 2)
    recovery: RecoveryResult
    ambiguity: AmbiguityResult
    pairs: PairSet
    timings: dict
    rotations_before_refinement: torch.Tensor | None = None  # None: no local refinement ran

    def metrics(self, n_particles: int) -> dict:
        return {
            "n_particles": n_particles,
            "n_pairs": len(self.pairs),
            "final_loss": self.recovery.loss,
            "init_loss": self.recovery.init_loss,
            "restart_losses": self.recovery.restart_losses,
            "ambiguity": self.ambiguity.metrics(),
            "timings_s": {k: round(v, 3) for k, v in self.timings.items()},
        }


def pair_distances(source: DistanceSource, pairs: PairSet) -> PairSet:
    d = torch.cat([source.distances(pairs.i[k:k + 262144], pairs.j[k:k + 262144])
                   for k in range(0, len(pairs), 262144)]).float()
    if source.checked:
        check_distances(d, f"{source.name} distances")
    return pairs.with_distances(d)


def run_recovery(stack: ParticleStack, source: DistanceSource, cfg: RecoverConfig,
                 generator: torch.Generator, neighbours: torch.Tensor | None = None,
                 progress: Callable[[int], None] | None = None, device=None) -> RecoverOutcome:
    """Recover the orientations of ``stack`` from ``source``'s distances.

    ``stack`` carries half sets (``rlnRandomSubset``; the local refinement compares each
    particle with the other half's map) and is read for images, CTF and half sets only:
    callers pass :meth:`ParticleStack.blind` copies, so no true pose can shape the result
    (the ``true``/``perturbed`` distance sources, benchmark baselines, read it by design)."""
    timings = {}
    t0 = time.perf_counter()
    pairs = choose_pairs(stack.n, generator, cfg.pairs_per_particle, cfg.n_anchors, neighbours)
    pairs = pair_distances(source, pairs)
    timings["distances_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    result = recover(pairs, cfg.recovery, generator, progress, point_group(cfg.symmetry))
    timings["recovery_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    raw = quat_to_rotmat(result.quaternions)
    m = min(stack.n, cfg.ambiguity.n_images)
    subset = np.sort(torch.randperm(stack.n, generator=generator)[:m].numpy())
    sub_ctf = ctf_subset(stack.ctf(), subset)
    images = stack.images.read(subset)
    amb = resolve(raw[subset], images, cfg.ambiguity, generator, sub_ctf, stack.pixel_size)
    if cfg.ambiguity.polish_images > 0:
        k = min(len(subset), cfg.ambiguity.polish_images)
        delta = refine_right_factor(amb.rotations[:k], images[:k], generator,
                                    ctf_subset(sub_ctf, slice(0, k)), stack.pixel_size)
        amb = replace(amb, right_factor=amb.right_factor @ delta, rotations=amb.rotations @ delta,
                      polish_deg=math.degrees(float(rotmat_angle(delta))))
    rotations = apply(raw, amb.transposed, amb.right_factor)
    timings["ambiguity_s"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    if cfg.shifts == "estimate":
        origins = estimate_shifts(stack, rotations, cfg.shift_iterations, device=device)
    else:
        origins = torch.zeros(stack.n, 2)
    timings["shifts_s"] = time.perf_counter() - t0
    unrefined = None
    if cfg.refine.rounds > 0:
        t0 = time.perf_counter()
        unrefined = rotations
        rotations, refined_origins = local_refine(stack, rotations, origins, stack.half_sets(), cfg.refine,
                                                  device=device)
        if cfg.shifts == "estimate":
            origins = refined_origins
        timings["refine_s"] = time.perf_counter() - t0
    return RecoverOutcome(rotations, origins, result, amb, pairs, timings, unrefined)


def write_recovery(outcome: RecoverOutcome, stack: ParticleStack, outdir: Path,
                   truth: Truth | None = None, symmetry: str = "C1") -> dict:
    """orientations.star/.npz, loss.csv, ambiguity.json, metrics.json and figures; with the
    truth, also the evaluation (errors, orientations_aligned.star, figures), modulo the point
    group ``symmetry``."""
    figs = outdir / "figures"
    write_particles(stack.with_orientations(outcome.rotations, outcome.origins_angstrom),
                    outdir / "orientations.star")
    save_npz(outdir / "orientations.npz", quaternions=rotmat_to_quat(outcome.rotations),
             raw_quaternions=outcome.recovery.quaternions, origins_angstrom=outcome.origins_angstrom,
             transposed=np.array(outcome.ambiguity.transposed),
             right_factor=outcome.ambiguity.right_factor, pair_i=outcome.pairs.i,
             pair_j=outcome.pairs.j, pair_distance=outcome.pairs.d)
    history = outcome.recovery.history
    with atomic_output(outdir / "loss.csv") as tmp, open(tmp, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["step", "loss"])
        w.writerows([k, f"{v:.8g}"] for k, v in enumerate(history))
    write_json(outdir / "ambiguity.json", outcome.ambiguity.metrics())
    plots.curves([("L_OR (mean squared distance error, rad^2)", np.arange(len(history)), history)],
                 figs / "loss.png", "refinement step", "loss", title="Orientation recovery",
                 logy=bool(len(history) and min(history) > 0))
    metrics = outcome.metrics(stack.n)
    if truth is not None:
        group = point_group(symmetry)
        ops = group.ops(torch.float64) if group.order > 1 else None
        ev = evaluate_poses(outcome.rotations, outcome.origins_angstrom, truth, stack.pixel_size, ops)
        metrics["evaluation"] = ev.metrics()
        if outcome.rotations_before_refinement is not None:
            metrics["evaluation_before_refinement"] = evaluate(outcome.rotations_before_refinement,
                                                               truth.rotations, ops).metrics()
        true_d = TrueDistances(rotmat_to_quat(truth.rotations), group).distances(outcome.pairs.i,
                                                                                 outcome.pairs.j)
        metrics["distance_error"] = {"mae_rad": float((outcome.pairs.d - true_d).abs().mean()),
                                     "rmse_rad": float(((outcome.pairs.d - true_d) ** 2).mean().sqrt())}
        write_particles(ev.in_truth_frame(stack, outcome.origins_angstrom),
                        outdir / "orientations_aligned.star")
        write_evaluation_figures(ev.evaluation, truth, figs)
        sample = torch.randperm(len(outcome.pairs), generator=torch.Generator().manual_seed(0))[:200000]
        plots.hist2d(true_d[sample].numpy(), outcome.pairs.d[sample].numpy(), figs / "distances.png",
                     "true distance (rad)", "target distance (rad)",
                     title=f"{outcome.pairs.d.shape[0]} pair distances")
    write_json(outdir / "metrics.json", metrics)
    return metrics
